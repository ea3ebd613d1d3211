"""How the NumPy path splits work over the cores: the parts, BLAS held to one thread,
and the RoI ops' results for any number of workers."""

from __future__ import annotations

import numpy
import pytest

import cudeform
from cudeform._cpu import parallel
from tests.psroi_cases import psroi_case
from tests.roi_pool_cases import roi_pool_case


def blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [info["num_threads"] for info in threadpoolctl.threadpool_info()
            if info["user_api"] == "blas"]


@pytest.mark.parametrize("workers", ["1", "3"])
def test_split_covers_the_range_with_blas_on_one_thread(workers, monkeypatch):
    if not blas_threads():
        pytest.skip("threadpoolctl sees no BLAS")
    monkeypatch.setenv("CUDEFORM_NUM_THREADS", workers)
    with pytest.importorskip("threadpoolctl").threadpool_limits(2, user_api="blas"):
        seen = parallel.split(10, lambda part: (part, blas_threads()))
        assert blas_threads() == [2] * len(blas_threads())  # restored afterwards
    parts = [part for part, _ in seen]
    assert parts == [slice(10 * i // int(workers), 10 * (i + 1) // int(workers))
                     for i in range(int(workers))]
    assert all(threads == [1] * len(threads) for _, threads in seen)
    assert parallel.split(0, lambda part: part) == [slice(0, 0)]


def roi_arrays(op, rng):
    if op == "deform_roi_pool":
        arrays, options = roi_pool_case(rng, channels=5, rois=40)
    else:
        arrays, options = psroi_case(rng, rois=40)
    grad_output = rng.standard_normal(getattr(cudeform, op)(**arrays, **options).shape)
    return arrays, options, grad_output


def run_roi(op, arrays, options, grad_output):
    output = getattr(cudeform, op)(**arrays, **options)
    grads = getattr(cudeform, op + "_backward")(grad_output, **arrays, **options)
    return output, grads.input, grads.offset


@pytest.mark.parametrize("op", ["deform_roi_pool", "deform_psroi_pool"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_roi_ops_are_reproducible_and_agree_with_one_worker(op, dtype, monkeypatch):
    """Every worker count gives the same bits on every run; the forward and the offset
    gradient are the one-worker bits (each bin is summed whole, in one order), the
    input gradient adds the workers' parts, so it matches to rounding."""
    rng = numpy.random.default_rng(31)
    arrays, options, grad_output = roi_arrays(op, rng)
    arrays = {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}
    grad_output = grad_output.astype(dtype)
    monkeypatch.setenv("CUDEFORM_NUM_THREADS", "1")
    single = run_roi(op, arrays, options, grad_output)
    for workers in ("2", "3"):
        monkeypatch.setenv("CUDEFORM_NUM_THREADS", workers)
        first = run_roi(op, arrays, options, grad_output)
        again = run_roi(op, {k: None if v is None else v.copy() for k, v in arrays.items()},
                        options, grad_output.copy())
        for a, b in zip(first, again):
            numpy.testing.assert_array_equal(a, b)
        numpy.testing.assert_array_equal(first[0], single[0])
        numpy.testing.assert_array_equal(first[2], single[2])
        rtol = 1e-12 if dtype == numpy.float64 else 1e-5
        numpy.testing.assert_allclose(first[1], single[1], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("op", ["deform_roi_pool", "deform_psroi_pool"])
def test_roi_ops_under_a_tiny_workspace_limit(op, monkeypatch):
    """Many RoI chunks and sample ranges per worker (a bin may then be cut where one
    worker's share of the limit ends): reproducible, and equal to rounding."""
    from cudeform import _workspace

    rng = numpy.random.default_rng(32)
    arrays, options, grad_output = roi_arrays(op, rng)
    monkeypatch.setenv("CUDEFORM_NUM_THREADS", "1")
    whole = run_roi(op, arrays, options, grad_output)
    monkeypatch.setattr(_workspace, "_limit", 3000)
    for workers in ("1", "3"):
        monkeypatch.setenv("CUDEFORM_NUM_THREADS", workers)
        first = run_roi(op, arrays, options, grad_output)
        for a, b in zip(first, run_roi(op, arrays, options, grad_output)):
            numpy.testing.assert_array_equal(a, b)
        for a, b in zip(first, whole):
            numpy.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
