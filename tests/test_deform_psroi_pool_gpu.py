"""deform_psroi_pool on CuPy arrays (needs a CUDA device): the kernels against the NumPy path.

Every test here is skipped without CuPy or without a usable CUDA device. The story:
float32 and float64 forward and gradients equal the NumPy path's on the random RoI
sets (borders, degenerate and bad RoIs, bad offsets); the offset gradient is
deterministic; 16-bit types stay within their rounding of the float64 result;
64-bit indices and dispatch errors behave; compute-sanitizer (memcheck, racecheck)
sees no illegal access in either scatter mode.

Sample positions are computed with unfused products in the kernels, so float32
positions are bit-identical to the NumPy path's and both skip the same samples.
"""

from __future__ import annotations

import numpy
import pytest

import cudeform
from tests.gpu import (
    UNIT_ROUNDOFF, DeviceOp, cupy, low_and_exact, low_precision_dtype, requires_gpu,
    run_under_sanitizer, to_device, to_host,
)
from tests.helpers import dtypes, force_64_bit_indices, plant_bad_values
from tests.psroi_cases import PSROI_CASES as CASES, bad_rois, huge_rois, psroi_case, smooth_case

pytestmark = requires_gpu

# float32 comparisons keep TOLERANCES' (1e-4, 1e-4): positions are bit-identical, and
# only the summation order differs (at most a few hundred terms of order 1 per sum).
PSROI_POOL = DeviceOp(cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward,
                      ("output", "input", "offset"))


def run_gpu(device_arrays, options, grad_output):
    """Forward and backward on CuPy arrays, as host arrays, checked for kind and dtype."""
    dtype = device_arrays["input"].dtype
    output = cudeform.deform_psroi_pool(**device_arrays, **options)
    grads = cudeform.deform_psroi_pool_backward(grad_output, **device_arrays, **options)
    if device_arrays["offset"] is None:
        assert grads.offset is None
    results = [output, grads.input, grads.offset]
    for result in results:
        assert result is None or (isinstance(result, cupy.ndarray) and result.dtype == dtype)
    return [to_host(r) for r in results]


def assert_matches_numpy(arrays, options, rng, device_arrays=None):
    """The CuPy results equal the NumPy path's, for an output gradient drawn from ``rng``.

    Returns them as host arrays ``[output, grad input, grad offset]``.
    """
    dtype = arrays["input"].dtype
    output = cudeform.deform_psroi_pool(**arrays, **options)
    grad_output = rng.standard_normal(output.shape).astype(dtype)
    grads = cudeform.deform_psroi_pool_backward(grad_output, **arrays, **options)
    device_arrays = to_device(arrays) if device_arrays is None else device_arrays
    actual = run_gpu(device_arrays, options, cupy.asarray(grad_output))
    PSROI_POOL.assert_same_results((actual[0], actual[1:]), (output, grads), dtype)
    return actual


@dtypes
@pytest.mark.parametrize("name", CASES)
def test_matches_numpy(name, dtype):
    rng = numpy.random.default_rng(3100 + list(CASES).index(name))
    arrays, options = psroi_case(rng, dtype=dtype, **CASES[name])
    assert_matches_numpy(arrays, options, rng)


@dtypes
def test_smooth_case_and_crowded_rois(dtype):
    # 64 copies of three RoIs: many threads add into the same input pixels.
    rng = numpy.random.default_rng(3200)
    arrays, options = smooth_case(rng, output_dim=4, num_classes=2, pooled_size=4,
                                  part_size=3, dtype=dtype)
    arrays["rois"] = numpy.concatenate([arrays["rois"]] * 64)
    arrays["offset"] = numpy.concatenate([arrays["offset"]] * 64)
    assert_matches_numpy(arrays, options, rng)


@dtypes
def test_bad_rois_and_offsets(dtype):
    rng = numpy.random.default_rng(3300)
    arrays, options = psroi_case(rng, num_classes=2, output_dim=2, dtype=dtype)
    bad = bad_rois(rng, batch=2, height=7, width=8).astype(dtype)
    arrays["rois"] = numpy.concatenate([arrays["rois"], bad])
    arrays["offset"] = rng.uniform(-1, 1, (len(arrays["rois"]), 4, 3, 3)).astype(dtype)
    plant_bad_values(rng, arrays["offset"], arrays["offset"].size // 4,
                     (numpy.nan, numpy.inf, -numpy.inf, 1e30))
    output, _, grad_offset = assert_matches_numpy(arrays, options, rng)
    assert (output[-len(bad):] == 0).all() and (grad_offset[-len(bad):] == 0).all()

    no_offset = dict(arrays, rois=numpy.concatenate([arrays["rois"], huge_rois(2).astype(dtype)]),
                     offset=None)
    assert_matches_numpy(no_offset, options, rng)


def test_offset_gradient_is_deterministic():
    rng = numpy.random.default_rng(3400)
    arrays, options = smooth_case(rng, output_dim=8, num_classes=1, pooled_size=4,
                                  part_size=2, rois=8, dtype=numpy.float32)
    device = to_device(arrays)
    grad_output = cupy.asarray(rng.standard_normal((8, 8, 4, 4)).astype(numpy.float32))
    first = cudeform.deform_psroi_pool_backward(grad_output, **device, **options).offset
    for _ in range(3):
        again = cudeform.deform_psroi_pool_backward(grad_output, **device, **options).offset
        assert bool((again == first).all())


# --- 16-bit types against float64 ----------------------------------------------------------

# Pooled sizes and sample counts are powers of two, trans_std is 1/8 and offsets are
# multiples of 1/64, so sample positions are exact in float32 and float64: both skip
# the same samples and read the same corners, and only value rounding differs. (Not
# in RoIs under 0.1 wide, whose size clamps to 0.1; there a position rounded
# differently matters only within 1e-7 of an integer or a border.)
LOW_PRECISION_CASES = {
    "basic": dict(pooled_size=2, part_size=3, trans_std=0.125),
    "no-offset": dict(pooled_size=4, num_classes=None, sample_per_part=1),
    "classes2-scale1/16": dict(output_dim=4, num_classes=2, pooled_size=4, part_size=2,
                               group_size=3, sample_per_part=4, spatial_scale=1 / 16,
                               trans_std=0.125, size=(6, 9)),
    "large-offsets": dict(pooled_size=2, offset_scale=6.0, trans_std=0.125),
}


@pytest.mark.parametrize("dtype_name", UNIT_ROUNDOFF)
@pytest.mark.parametrize("name", LOW_PRECISION_CASES)
def test_16_bit_matches_float64(name, dtype_name):
    """float16/bfloat16 results are within their rounding of the float64 result.

    The reference is the float64 NumPy path on the 16-bit values themselves, so input
    rounding cancels out. What is left: the final cast to the storage type (at most
    u * max|reference|, u the unit roundoff) and float32 arithmetic on sums of at most
    a few hundred terms (under 1e-4 * u * sum|terms| for float16). The bound
    4 u * max|reference| leaves a factor of two over their sum; a wrong index, a
    dropped sample or a misread 16-bit pattern gives errors of order max|reference|.
    """
    dtype = low_precision_dtype(dtype_name)
    rng = numpy.random.default_rng(3500 + list(LOW_PRECISION_CASES).index(name))
    arrays, options = psroi_case(rng, **LOW_PRECISION_CASES[name])
    if arrays["offset"] is not None:
        arrays["offset"] = numpy.round(arrays["offset"] * 64) / 64
    low, exact = low_and_exact(arrays, dtype)
    output = cudeform.deform_psroi_pool(**exact, **options)
    grad_low = rng.standard_normal(output.shape).astype(dtype)
    grads = cudeform.deform_psroi_pool_backward(grad_low.astype(numpy.float64), **exact,
                                                **options)
    actual = run_gpu(to_device(low), options, cupy.asarray(grad_low))
    PSROI_POOL.assert_within_roundoff(actual, (output, *grads), dtype_name, units=4)


# --- index width, dispatch -----------------------------------------------------------------


@dtypes
def test_64_bit_index_instantiation(monkeypatch, dtype, launches):
    from cudeform._gpu import deform_psroi_pool as gpu

    force_64_bit_indices(monkeypatch, gpu)
    rng = numpy.random.default_rng(3600)
    arrays, options = psroi_case(rng, dtype=dtype, **CASES["classes4-part3-pooled4-group2"])
    assert_matches_numpy(arrays, options, rng)
    assert len(launches) == 3 and all(bits == 64 for _, bits in launches)


def test_noncontiguous_inputs():
    rng = numpy.random.default_rng(3700)
    arrays, options = psroi_case(rng, num_classes=2, output_dim=2)
    device = {k: cupy.asfortranarray(cupy.asarray(v)) for k, v in arrays.items()}
    assert not any(a.flags.c_contiguous for a in device.values())
    assert_matches_numpy(arrays, options, rng, device_arrays=device)


def test_mixing_numpy_and_cupy_is_a_type_error():
    arrays, options = psroi_case(numpy.random.default_rng(3800), dtype=numpy.float32)
    device = to_device(arrays)
    with pytest.raises(TypeError, match=r"rois is a numpy.ndarray but input is a cupy.ndarray"):
        cudeform.deform_psroi_pool(**{**device, "rois": arrays["rois"]}, **options)


# --- compute-sanitizer ---------------------------------------------------------------------

SANITIZER_SCRIPT = """
from cudeform._gpu import deform_psroi_pool as gpu
from tests.helpers import plant_bad_values
from tests.psroi_cases import bad_rois, huge_rois, psroi_case

def run(dtype, seed):
    rng = numpy.random.default_rng(seed)
    arrays, options = psroi_case(rng, dtype=dtype, num_classes=2, output_dim=4, part_size=2,
                                 spatial_scale=1 / 16, sample_per_part=3)
    extra = numpy.concatenate([bad_rois(rng, batch=2, height=7, width=8), huge_rois(2)])
    arrays["rois"] = numpy.concatenate([arrays["rois"], extra.astype(dtype)])
    arrays["offset"] = rng.uniform(-9, 9, (len(arrays["rois"]), 4, 2, 2)).astype(dtype)
    plant_bad_values(rng, arrays["offset"], arrays["offset"].size // 4,
                     (numpy.nan, numpy.inf, -numpy.inf, 1e30))
    device = {k: cupy.asarray(v) for k, v in arrays.items()}
    output = cudeform.deform_psroi_pool(**device, **options)
    grads = cudeform.deform_psroi_pool_backward(cupy.ones_like(output), **device, **options)
    cupy.cuda.runtime.deviceSynchronize()
    assert bool(cupy.isfinite(output).all()) and bool(cupy.isfinite(grads.input).all())

for bits in index_widths(gpu):
    for _ in scatter_modes():
        for dtype in (numpy.float32, numpy.float64):
            run(dtype, bits)
"""


def test_compute_sanitizer_memcheck(tmp_path):
    """Both scatter modes, both index widths: no illegal access."""
    run_under_sanitizer(SANITIZER_SCRIPT, tmp_path, "memcheck")


def test_compute_sanitizer_racecheck(tmp_path):
    run_under_sanitizer(SANITIZER_SCRIPT, tmp_path, "racecheck")
