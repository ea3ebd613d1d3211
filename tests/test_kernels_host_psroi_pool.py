"""Host run of kernels/deform_psroi_pool.cu against the NumPy path.

``tests/host`` compiles the kernel source as C++ (one thread runs each grid-stride
loop) and ``cudeform._gpu.deform_psroi_pool`` drives it with ``xp=numpy``. Both
paths compute sample positions with the same operations in the same order, so
they skip the same samples even on the borders; what differs is the summation
order. Concurrency (atomicAdd) and the 16-bit types are left to the GPU tests.
"""

from __future__ import annotations

import numpy
import pytest

from cudeform._cpu import deform_psroi_pool as cpu
from cudeform._gpu import deform_psroi_pool as gpu
from cudeform._shapes import deform_psroi_pool_geometry
from tests.helpers import dtypes, force_64_bit_indices, plant_bad_values
from tests.host.compare import HostOp, recording_launch, scatter_modes
from tests.host.loader import compiler
from tests.psroi_cases import PSROI_CASES as CASES, bad_rois, huge_rois, psroi_case, smooth_case

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")

PSROI_POOL = HostOp(gpu, cpu, deform_psroi_pool_geometry,
                    operand_names=("input", "rois", "offset"), grad_names=("input", "offset"))


@scatter_modes
@dtypes
@pytest.mark.parametrize("name", CASES)
def test_matches_numpy(name, dtype, deterministic):
    rng = numpy.random.default_rng(1100 + list(CASES).index(name))
    arrays, options = psroi_case(rng, dtype=dtype, **CASES[name])
    grad_output = PSROI_POOL.grad_output(rng, arrays, options)
    PSROI_POOL.assert_matches_numpy(arrays, options, grad_output,
                                    deterministic=deterministic)


@scatter_modes
@dtypes
def test_smooth_case_matches_numpy(dtype, deterministic):
    # Every sample inside, none on an integer: the offset gradient has no zero slopes.
    rng = numpy.random.default_rng(1200)
    arrays, options = smooth_case(rng, output_dim=4, num_classes=2, pooled_size=4,
                                  part_size=3, dtype=dtype)
    grad_output = PSROI_POOL.grad_output(rng, arrays, options)
    _, grads = PSROI_POOL.assert_matches_numpy(arrays, options, grad_output,
                                               deterministic=deterministic)
    assert (grads[1] != 0).mean() > 0.5


@scatter_modes
@dtypes
def test_bad_rois(dtype, deterministic):
    rng = numpy.random.default_rng(1300)
    arrays, options = psroi_case(rng, num_classes=2, output_dim=2, pooled_size=2, dtype=dtype)
    good = arrays["rois"].shape[0]
    bad = bad_rois(rng, batch=2, height=7, width=8).astype(dtype)
    arrays["rois"] = numpy.concatenate([arrays["rois"], bad])
    arrays["offset"] = rng.uniform(-1, 1, (good + len(bad), 4, 2, 2)).astype(dtype)
    grad_output = PSROI_POOL.grad_output(rng, arrays, options)
    output, grads = PSROI_POOL.assert_matches_numpy(arrays, options, grad_output,
                                                    deterministic=deterministic)
    assert (output[good:] == 0).all() and (grads[1][good:] == 0).all()


@scatter_modes
@dtypes
def test_huge_rois(dtype, deterministic):
    # Without offsets: the offset gradient of a RoI 2e30 wide is rounding noise times 2e29.
    rng = numpy.random.default_rng(1350)
    arrays, options = psroi_case(rng, num_classes=None, pooled_size=2, dtype=dtype)
    arrays["rois"] = numpy.concatenate([arrays["rois"], huge_rois(batch=2).astype(dtype)])
    grad_output = PSROI_POOL.grad_output(rng, arrays, options)
    output, _ = PSROI_POOL.assert_matches_numpy(arrays, options, grad_output,
                                                deterministic=deterministic)
    assert (output[-4:-2] == 0).all() and (output[-2:] != 0).any()


@scatter_modes
@dtypes
def test_non_finite_and_huge_offsets(dtype, deterministic):
    # A NaN, infinite or far offset moves its bins' samples outside: skipped.
    rng = numpy.random.default_rng(1400)
    arrays, options = psroi_case(rng, num_classes=2, output_dim=4, dtype=dtype)
    plant_bad_values(rng, arrays["offset"], arrays["offset"].size // 4)
    grad_output = PSROI_POOL.grad_output(rng, arrays, options)
    _, grads = PSROI_POOL.assert_matches_numpy(arrays, options, grad_output,
                                               deterministic=deterministic)
    pairs = arrays["offset"].reshape(10, 2, 2, 3, 3)
    moved_out = ~(numpy.abs(pairs) < 1e29).all(axis=2)
    grad_pairs = grads[1].reshape(pairs.shape).transpose(0, 1, 3, 4, 2)
    assert moved_out.any() and (grad_pairs[moved_out] == 0).all()


@scatter_modes
@dtypes
@pytest.mark.parametrize("name", ["basic", "classes4-part3-pooled4-group2", "no-offset"])
def test_64_bit_index_instantiation(monkeypatch, dtype, name, deterministic):
    rng = numpy.random.default_rng(1500 + list(CASES).index(name))
    arrays, options = psroi_case(rng, dtype=dtype, **CASES[name])
    arrays["rois"] = numpy.concatenate(
        [arrays["rois"], bad_rois(rng, batch=2, height=7, width=8).astype(dtype)])
    if arrays["offset"] is not None:
        arrays["offset"] = numpy.concatenate([arrays["offset"]] * 3)[:len(arrays["rois"])]
    force_64_bit_indices(monkeypatch, gpu)
    calls = []
    PSROI_POOL.assert_matches_numpy(arrays, options, PSROI_POOL.grad_output(rng, arrays, options),
                                    launch=recording_launch(calls), deterministic=deterministic)
    assert len(calls) == (2 if arrays["offset"] is None else 3) + (2 if deterministic else 0)
    assert all(bits == 64 for _, bits, _ in calls)


def test_small_cases_use_32_bit_indices():
    rng = numpy.random.default_rng(1600)
    arrays, options = psroi_case(rng)
    calls = []
    PSROI_POOL.forward(arrays, options, launch=recording_launch(calls))
    PSROI_POOL.backward(PSROI_POOL.grad_output(rng, arrays, options), arrays, options,
                        launch=recording_launch(calls))
    assert [(kernel.name, bits) for kernel, bits, _ in calls] == [
        ("deform_psroi_pool_forward", 32),
        ("deform_psroi_pool_backward_input", 32),
        ("deform_psroi_pool_backward_offset", 32)]
