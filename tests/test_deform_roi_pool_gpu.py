"""deform_roi_pool on CuPy arrays (needs a CUDA device): the kernels against the NumPy path.

Skipped without CuPy or a usable CUDA device (``tests.gpu.requires_gpu``). The
story: on the dyadic RoI sets (sample positions exact in float32, see
tests/roi_pool_cases.py) float32 and float64 forward and both gradients equal the
NumPy path's, bad RoIs and bad offsets included; the random RoI sets agree on the
forward and the input gradient; 16-bit types stay within one rounding of the float64
result; 64-bit indices, non-contiguous arrays, zero and huge RoIs behave; and
compute-sanitizer (memcheck, racecheck) sees no illegal access in either scatter mode.

Why the offset gradient is compared on dyadic sets only: the GPU contracts
``a * b + c`` into FMAs and the NumPy path does not, so an inexact sample position
may differ by an ulp between them; one that sits on a bilinear kink then changes
cells, and the offset gradient jumps there. The forward and the input gradient
are continuous at kinks, so the random sets compare them safely.
"""

from __future__ import annotations

import numpy
import pytest

import cudeform
from tests.gpu import (
    UNIT_ROUNDOFF, DeviceOp, cupy, low_and_exact, low_precision_dtype, noncontiguous_device,
    requires_gpu, results_to_host, run_under_sanitizer, to_device, to_host,
)
from tests.helpers import dtypes, force_64_bit_indices
from tests.roi_pool_cases import DYADIC_CASES, ROI_POOL_CASES, roi_pool_case, with_bad_rois

pytestmark = requires_gpu

RANDOM_CASES = {name: case for name, case in ROI_POOL_CASES.items() if name not in DYADIC_CASES}
# float32 comparisons keep TOLERANCES' (1e-4, 1e-4): a bin averages at most a few
# hundred samples, and a different summation order (atomicAdd arrival, FMA) moves such
# a sum by about 1e-6 of its O(1) terms. float64 is never loosened.
ROI_POOL = DeviceOp(cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward,
                    ("output", "input", "offset"))


@dtypes
@pytest.mark.parametrize("name", DYADIC_CASES)
def test_matches_numpy(name, dtype):
    rng = numpy.random.default_rng(4000 + list(DYADIC_CASES).index(name))
    arrays, options = roi_pool_case(rng, dtype=dtype, **DYADIC_CASES[name])
    arrays, bad = with_bad_rois(rng, arrays, options, huge=False)
    output, grads = ROI_POOL.assert_matches_numpy(arrays, options,
                                                  ROI_POOL.grad_output(rng, arrays, options))
    assert not to_host(output)[bad].any()
    if grads.offset is not None:
        assert not to_host(grads.offset)[bad].any()


@dtypes
@pytest.mark.parametrize("name", RANDOM_CASES)
def test_random_cases_forward_and_input_gradient(name, dtype):
    rng = numpy.random.default_rng(4100 + list(RANDOM_CASES).index(name))
    arrays, options = roi_pool_case(rng, dtype=dtype, **RANDOM_CASES[name])
    arrays, _ = with_bad_rois(rng, arrays, options, huge=False)
    ROI_POOL.assert_matches_numpy(arrays, options, ROI_POOL.grad_output(rng, arrays, options),
                                  compared=("output", "input"))


@pytest.mark.parametrize("dtype_name", UNIT_ROUNDOFF)
@pytest.mark.parametrize("name", DYADIC_CASES)
def test_16_bit_matches_float64(name, dtype_name):
    """float16/bfloat16 results are within one rounding of the float64 result.

    The reference is the float64 NumPy path on the 16-bit values themselves (every
    RoI coordinate and offset of the dyadic sets is exact in both 16-bit types, and
    every sample position is then exact in float32). The kernels sum in float32 and
    round once, when storing: at most u * |reference| per entry. float32 sums of a
    few hundred terms add under 1e-4 of max|reference|. The bound below, 4 u *
    max|reference| per array, is a tenth of a percent for float16; a wrong index, a
    lost sample or a misread 16-bit pattern gives errors of order max|reference|.
    """
    dtype = low_precision_dtype(dtype_name)
    rng = numpy.random.default_rng(4200 + list(DYADIC_CASES).index(name))
    arrays, options = roi_pool_case(rng, **DYADIC_CASES[name])
    arrays, _ = with_bad_rois(rng, arrays, options, huge=False)
    low, exact = low_and_exact(arrays, dtype)
    grad_low = ROI_POOL.grad_output(rng, arrays, options).astype(dtype)
    expected = (cudeform.deform_roi_pool(**exact, **options),
                cudeform.deform_roi_pool_backward(grad_low.astype(numpy.float64), **exact,
                                                  **options))
    output, grads = ROI_POOL.run(to_device(low), options, cupy.asarray(grad_low))
    ROI_POOL.assert_within_roundoff((output, *grads), (expected[0], *expected[1]), dtype_name,
                                    units=4)


@dtypes
def test_64_bit_index_instantiation_matches_32_bit(monkeypatch, dtype, launches):
    from cudeform._gpu import deform_roi_pool as gpu

    rng = numpy.random.default_rng(4300)
    arrays, options = roi_pool_case(rng, dtype=dtype, **DYADIC_CASES["dyadic-adaptive-rect24"])
    arrays, _ = with_bad_rois(rng, arrays, options, huge=False)
    device = to_device(arrays)
    grad_output = cupy.asarray(ROI_POOL.grad_output(rng, arrays, options))
    narrow = ROI_POOL.run(device, options, grad_output)
    assert launches and all(bits == 32 for _, bits in launches)
    launches.clear()
    force_64_bit_indices(monkeypatch, gpu)
    wide = ROI_POOL.run(device, options, grad_output)
    assert [name for name, _ in launches] == [
        "deform_roi_pool_forward", "deform_roi_pool_backward_input",
        "deform_roi_pool_backward_offset"]
    assert all(bits == 64 for _, bits in launches)
    # Same positions, same arithmetic: only the atomicAdd order differs.
    ROI_POOL.assert_same_results(wide, results_to_host(narrow), dtype)


@dtypes
def test_noncontiguous_inputs(dtype):
    rng = numpy.random.default_rng(4400)
    arrays, options = roi_pool_case(rng, dtype=dtype, **DYADIC_CASES["dyadic-sampling4-scale16"])
    grad_output = ROI_POOL.grad_output(rng, arrays, options)
    device = {k: noncontiguous_device(v) for k, v in arrays.items()}
    device_grad_output = noncontiguous_device(grad_output)
    assert not any(a.flags.c_contiguous for a in (*device.values(), device_grad_output))
    ROI_POOL.assert_matches_numpy(arrays, options, grad_output, device_arrays=device,
                                  device_grad_output=device_grad_output)


@dtypes
def test_zero_and_huge_rois(dtype):
    input = cupy.ones((2, 3, 4, 5), dtype)
    options = dict(output_size=(2, 3))
    none = cupy.zeros((0, 5), dtype)
    output = cudeform.deform_roi_pool(input, none, cupy.zeros((0, 2, 2, 3), dtype), **options)
    assert output.shape == (0, 3, 2, 3)
    grads = cudeform.deform_roi_pool_backward(output, input, none, None, **options)
    assert grads.input.shape == input.shape and not grads.input.any() and grads.offset is None

    # RoIs of 1e30 pixels: bounded work (only the samples near the map are visited),
    # finite results, and the same forward as the NumPy path (about zero).
    rng = numpy.random.default_rng(4500)
    arrays, options = roi_pool_case(rng, dtype=dtype, rois=2)
    arrays, _ = with_bad_rois(rng, arrays, options)
    grad_output = ROI_POOL.grad_output(rng, arrays, options)
    actual = ROI_POOL.run(to_device(arrays), options, cupy.asarray(grad_output))
    for result in (actual[0], *actual[1]):
        assert bool(cupy.isfinite(result).all())
    expected = cudeform.deform_roi_pool(**arrays, **options)
    ROI_POOL.assert_same_results((actual[0], ()), (expected, ()), dtype, compared=("output",))


SANITIZER_SCRIPT = """
from cudeform._gpu import deform_roi_pool as gpu
from tests.roi_pool_cases import roi_pool_case, with_bad_rois

def run(dtype, seed, offset):
    rng = numpy.random.default_rng(seed)
    arrays, options = roi_pool_case(rng, dtype=dtype, offset=offset, sampling_ratio=seed % 3)
    arrays, _ = with_bad_rois(rng, arrays, options)
    forward_and_backward(cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward, arrays,
                         options, rng)

for bits in index_widths(gpu):
    for _ in scatter_modes():
        for dtype in (numpy.float32, numpy.float64):
            for offset in (True, False):
                run(dtype, bits + offset, offset)
"""


def test_compute_sanitizer_memcheck(tmp_path):
    """Both scatter modes, both index widths: no illegal access."""
    run_under_sanitizer(SANITIZER_SCRIPT, tmp_path, "memcheck")


def test_compute_sanitizer_racecheck(tmp_path):
    run_under_sanitizer(SANITIZER_SCRIPT, tmp_path, "racecheck")
