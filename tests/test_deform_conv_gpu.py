"""deform_conv2d on CuPy arrays (needs a CUDA device): the kernels against the NumPy path.

Every test here is skipped without CuPy or without a usable CUDA device. The story:
float32 and float64 forward and all five gradients equal the NumPy path's on cases
built to catch index bugs; 16-bit types stay within their rounding of the float64
result; chunking, 64-bit indices, streams, memoisation and dispatch errors behave;
and compute-sanitizer (memcheck, racecheck) sees no illegal access in either scatter
mode. Deterministic mode and the cuBLAS GEMMs have their own GPU test files.
"""

from __future__ import annotations

import numpy
import pytest

import cudeform
from cudeform import _workspace
from tests.gpu import (
    UNIT_ROUNDOFF, DeviceOp, cupy, low_and_exact, low_precision_dtype, noncontiguous_device,
    requires_gpu, results_to_host, run_under_sanitizer, to_device, to_host,
)
from tests.helpers import (
    CONV_CASES as CASES, assert_outside_taps_get_zero_gradients, bad_offset_case, conv_case,
    dtypes, force_64_bit_indices, integer_offset_case, split_case,
)

pytestmark = requires_gpu

GRAD_NAMES = ("input", "offset", "weight", "bias", "mask")
# float32 comparisons keep TOLERANCES' (1e-4, 1e-4). The largest sums here have ~700
# terms (the weight gradient of batch 33) and most have under 100; a different
# summation order (cuBLAS blocking, atomicAdd arrival) moves such a sum by about
# sqrt(n) * 6e-8 relative to its terms, i.e. 1e-6 or less for these O(1-10) values, two
# orders below the tolerance. TF32 GEMMs would not fit, and CuPy leaves them off by
# default (CUPY_TF32=0). float64 is never loosened.
CONV = DeviceOp(cudeform.deform_conv2d, cudeform.deform_conv2d_backward, ("output", *GRAD_NAMES))


def sampling_positions(arrays, options):
    """``(py, px)`` of every tap, each ``(N, dg, kh*kw, H_out, W_out)``."""
    kh, kw = arrays["weight"].shape[2:]
    n, channels, out_h, out_w = arrays["offset"].shape
    pairs = arrays["offset"].reshape(n, channels // (2 * kh * kw), kh * kw, 2, out_h, out_w)
    (sh, sw), (ph, pw), (dh, dw) = options["stride"], options["padding"], options["dilation"]
    i, j = numpy.divmod(numpy.arange(kh * kw), kw)
    base_y = numpy.arange(out_h)[None, :, None] * sh - ph + (i * dh)[:, None, None]
    base_x = numpy.arange(out_w)[None, None, :] * sw - pw + (j * dw)[:, None, None]
    return base_y + pairs[:, :, :, 0], base_x + pairs[:, :, :, 1]


# --- CuPy against NumPy, float32 and float64 ----------------------------------------------


@dtypes
@pytest.mark.parametrize("name", CASES)
def test_matches_numpy(name, dtype):
    rng = numpy.random.default_rng(2000 + list(CASES).index(name))
    arrays, options = split_case(conv_case(rng, dtype=dtype, **CASES[name]))
    if name == "across-borders":  # the case does what its name says
        height, width = arrays["input"].shape[2:]
        for p, size in zip(sampling_positions(arrays, options), (height, width)):
            for band in (p <= -1, (-1 < p) & (p < 0), (size - 1 < p) & (p < size), p >= size):
                assert band.any()
    CONV.assert_matches_numpy(arrays, options, CONV.grad_output(rng, arrays, options))


@dtypes
def test_integer_offsets_on_borders_and_kinks(dtype):
    # Whole-pixel offsets put samples exactly on corners, on -1 and on H / W, where
    # the border test and the one-sided derivative must agree with the NumPy path.
    rng = numpy.random.default_rng(2100)
    arrays, options = integer_offset_case(rng, dtype)
    CONV.assert_matches_numpy(arrays, options, CONV.grad_output(rng, arrays, options))


@dtypes
def test_non_finite_and_huge_offsets(dtype):
    rng = numpy.random.default_rng(2200)
    arrays, options = bad_offset_case(rng, dtype)
    _, grads = CONV.assert_matches_numpy(arrays, options, CONV.grad_output(rng, arrays, options))
    assert_outside_taps_get_zero_gradients(arrays["offset"], to_host(grads.offset),
                                           to_host(grads.mask))


@dtypes
def test_noncontiguous_inputs(dtype):
    rng = numpy.random.default_rng(2300)
    arrays, options = split_case(conv_case(rng, dtype=dtype, **CASES["groups2-offset-groups4"]))
    grad_output = CONV.grad_output(rng, arrays, options)
    device = {k: noncontiguous_device(v) for k, v in arrays.items()}
    device_grad_output = noncontiguous_device(grad_output)
    assert not any(a.flags.c_contiguous for a in (*device.values(), device_grad_output))
    CONV.assert_matches_numpy(arrays, options, grad_output, device_arrays=device,
                              device_grad_output=device_grad_output)


# --- 16-bit types against float64 ----------------------------------------------------------


@pytest.mark.parametrize("dtype_name", UNIT_ROUNDOFF)
@pytest.mark.parametrize("name", CASES)
def test_16_bit_matches_float64(name, dtype_name):
    """float16/bfloat16 results are within their rounding of the float64 result.

    The reference is the float64 NumPy path on the 16-bit values themselves, so input
    rounding cancels out. What is left: the column buffer, the GEMM output and the
    final cast round to the storage type (unit roundoff u each); accumulation is in
    float32. Each rounding moves an entry by at most u * sum|terms|, which for these
    sizes stays under about 2 * max|reference|, so an emulation of this pipeline in
    NumPy gives errors under 2 u * max|reference|. The bound below, 16 u *
    max|reference| per array (0.8 % for float16, 6 % for bfloat16), leaves room for
    cuBLAS's choice of algorithm, yet a wrong index, a dropped tap or a misread
    16-bit pattern gives errors of order max|reference|.
    """
    dtype = low_precision_dtype(dtype_name)
    rng = numpy.random.default_rng(2400 + list(CASES).index(name))
    arrays, options = split_case(conv_case(rng, dtype=numpy.float64, **CASES[name]))
    low, exact = low_and_exact(arrays, dtype)
    grad_low = CONV.grad_output(rng, arrays, options).astype(dtype)
    expected_output = cudeform.deform_conv2d(**exact, **options)
    expected_grads = cudeform.deform_conv2d_backward(grad_low.astype(numpy.float64), **exact,
                                                     **options)
    output, grads = CONV.run(to_device(low), options, cupy.asarray(grad_low))
    CONV.assert_within_roundoff((output, *grads), (expected_output, *expected_grads),
                                dtype_name, units=16)


# --- host logic: chunking, index width -----------------------------------------------------


@dtypes
def test_workspace_limit_chunks_the_batch(monkeypatch, dtype, launches):
    monkeypatch.setenv("CUDEFORM_CONV_FORWARD", "im2col")  # the forward whose chunks count
    rng = numpy.random.default_rng(2500)
    arrays, options = split_case(conv_case(rng, dtype=dtype, batch=5, in_channels=4,
                                           out_channels=4, groups=2, offset_groups=2))
    grad_output = CONV.grad_output(rng, arrays, options)
    device, device_grad_output = to_device(arrays), cupy.asarray(grad_output)
    whole = CONV.run(device, options, device_grad_output)
    previous = _workspace._limit
    try:
        cudeform.set_workspace_limit(1)  # one image per chunk
        launches.clear()
        chunked = CONV.run(device, options, device_grad_output)
    finally:
        cudeform.set_workspace_limit(previous)
    assert sum(name == "deform_im2col" for name, _ in launches) == 2 * 5  # forward, backward
    CONV.assert_same_results(chunked, results_to_host(whole), dtype)
    CONV.assert_matches_numpy(arrays, options, grad_output, device_arrays=device,
                              device_grad_output=device_grad_output)


@dtypes
def test_64_bit_index_instantiation_matches_32_bit(monkeypatch, dtype, launches):
    from cudeform._gpu import deform_conv as gpu

    monkeypatch.setenv("CUDEFORM_CONV_FORWARD", "im2col")  # the kernels listed below
    rng = numpy.random.default_rng(2600)
    arrays, options = split_case(conv_case(
        rng, dtype=dtype, batch=3, groups=2, offset_groups=2, kernel=(3, 2), stride=(2, 1),
        padding=(1, 0), dilation=(2, 1), size=(7, 5), offset_scale=4.0))
    grad_output = CONV.grad_output(rng, arrays, options)
    device, device_grad_output = to_device(arrays), cupy.asarray(grad_output)
    narrow = CONV.run(device, options, device_grad_output)
    assert launches and all(bits == 32 for _, bits in launches)

    launches.clear()
    force_64_bit_indices(monkeypatch, gpu)
    wide = CONV.run(device, options, device_grad_output)
    assert {name for name, _ in launches} == {
        "deform_im2col", "deform_col2im", "deform_col2im_coord", "deform_col2im_coord_reduce"}
    assert all(bits == 64 for _, bits in launches)
    CONV.assert_same_results(wide, results_to_host(narrow), dtype)


# --- streams and compilation ---------------------------------------------------------------

# Waits DELAY_NS on the GPU clock, then copies src to dst (bytes).
DELAYED_COPY = r"""
extern "C" __global__ void delayed_copy(const unsigned char* src, unsigned char* dst,
                                        unsigned long long n, unsigned long long delay_ns) {
  unsigned long long start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < delay_ns);
  for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += blockDim.x * gridDim.x) {
    dst[i] = src[i];
  }
}
"""
DELAY_NS = 500_000_000


def test_kernels_run_on_the_current_stream():
    """Work ordered on a non-blocking stream is seen by every cudeform kernel.

    The input is written by a kernel that first waits half a second on that stream.
    A kernel launched anywhere else (the legacy default stream does not wait for a
    non-blocking stream) would read the input before it is written.
    """
    rng = numpy.random.default_rng(2700)
    arrays, options = split_case(conv_case(rng, dtype=numpy.float64, groups=2,
                                           out_channels=4, offset_groups=2))
    grad_output = CONV.grad_output(rng, arrays, options)
    device, device_grad_output = to_device(arrays), cupy.asarray(grad_output)
    expected = CONV.run(device, options, device_grad_output)  # default stream; compiles
    expected = results_to_host(expected)

    delayed_copy = cupy.RawKernel(DELAYED_COPY, "delayed_copy")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        CONV.run(device, options, device_grad_output)  # warm the pool and cuBLAS on it
        stream.synchronize()
        late_input = cupy.zeros_like(device["input"])
        delayed_copy((1,), (256,), (device["input"], late_input,
                                    numpy.uint64(late_input.nbytes), numpy.uint64(DELAY_NS)))
        copied = stream.record()
        late = {**device, "input": late_input}
        actual = CONV.run(late, options, device_grad_output)
        issued_before_copy = not copied.done
    stream.synchronize()
    assert issued_before_copy, "the delay ended before cudeform's work was issued"
    CONV.assert_same_results(actual, expected, numpy.float64)


def test_kernel_modules_are_compiled_once_per_device(monkeypatch):
    from cudeform._gpu import compile as kernel_compile

    rng = numpy.random.default_rng(2800)
    arrays, options = split_case(conv_case(rng, dtype=numpy.float32))
    grad_output = CONV.grad_output(rng, arrays, options)
    device, device_grad_output = to_device(arrays), cupy.asarray(grad_output)
    first = CONV.run(device, options, device_grad_output)
    module = kernel_compile._module("deform_conv", "float", "int")
    assert kernel_compile._module("deform_conv", "float", "int") is module
    assert kernel_compile._module("deform_conv", "double", "int") is not module

    def no_compile(*args, **kwargs):
        raise AssertionError("cupy.RawModule built again: kernel modules are not memoised")

    monkeypatch.setattr(cupy, "RawModule", no_compile)
    second = CONV.run(device, options, device_grad_output)
    assert kernel_compile._module("deform_conv", "float", "int") is module
    CONV.assert_same_results(second, results_to_host(first), numpy.float32)


# --- dispatch errors and devices -----------------------------------------------------------


def test_mixing_numpy_and_cupy_is_a_type_error():
    arrays, options = split_case(conv_case(numpy.random.default_rng(2900), dtype=numpy.float32))
    device = to_device(arrays)
    with pytest.raises(TypeError, match=r"input is a numpy.ndarray but offset is a cupy.ndarray"):
        cudeform.deform_conv2d(**{**device, "input": arrays["input"]}, **options)
    with pytest.raises(TypeError, match=r"mask is a numpy.ndarray but input is a cupy.ndarray"):
        cudeform.deform_conv2d(**{**device, "mask": arrays["mask"]}, **options)
    grad_output = numpy.zeros(cudeform.deform_conv2d(**arrays, **options).shape, numpy.float32)
    with pytest.raises(TypeError,
                       match=r"grad_output is a numpy.ndarray but input is a cupy.ndarray"):
        cudeform.deform_conv2d_backward(grad_output, **device, **options)


def test_gpu_dtype_errors():
    arrays, options = split_case(conv_case(numpy.random.default_rng(2901), dtype=numpy.float32))
    device = to_device(arrays)
    with pytest.raises(TypeError, match=r"offset has dtype float16 but input has dtype float32"):
        cudeform.deform_conv2d(**{**device, "offset": device["offset"].astype(cupy.float16)},
                               **options)
    integers = {k: v.astype(cupy.int32) for k, v in device.items()}
    with pytest.raises(TypeError, match=r"input has dtype int32, which CuPy \(GPU\) arrays do "
                                        r"not support; expected one of float16, bfloat16"):
        cudeform.deform_conv2d(**integers, **options)


def test_arrays_on_a_second_gpu():
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    from cudeform._gpu import compile as kernel_compile

    rng = numpy.random.default_rng(3000)
    arrays, options = split_case(conv_case(rng, dtype=numpy.float64))
    grad_output = CONV.grad_output(rng, arrays, options)
    with cupy.cuda.Device(1):
        device, device_grad_output = to_device(arrays), cupy.asarray(grad_output)
    with cupy.cuda.Device(0):  # the arrays, not the current device, choose the GPU
        CONV.assert_matches_numpy(arrays, options, grad_output, device_arrays=device,
                                  device_grad_output=device_grad_output)
        with pytest.raises(ValueError, match=r"offset is on GPU 0 but input is on GPU 1"):
            cudeform.deform_conv2d(**{**device, "offset": cupy.asarray(arrays["offset"])},
                                   **options)
        module_0 = kernel_compile._module("deform_conv", "double", "int")
    with cupy.cuda.Device(1):
        assert kernel_compile._module("deform_conv", "double", "int") is not module_0


# --- compute-sanitizer ---------------------------------------------------------------------

SANITIZER_SCRIPT = """
from cudeform._gpu import deform_conv as gpu
from tests.helpers import BAD_VALUES, conv_case, plant_bad_values, split_case

def run(dtype, seed, mask):
    rng = numpy.random.default_rng(seed)
    arrays, options = split_case(conv_case(
        rng, dtype=dtype, batch=2, in_channels=4, out_channels=4, groups=2, offset_groups=2,
        kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), size=(6, 5),
        offset_scale=8.0, mask=mask))
    plant_bad_values(rng, arrays["offset"], arrays["offset"].size // 4, (*BAD_VALUES, 1e6))
    forward_and_backward(cudeform.deform_conv2d, cudeform.deform_conv2d_backward, arrays,
                         options, rng)

for bits in index_widths(gpu):
    for _ in scatter_modes():
        for dtype in (numpy.float32, numpy.float64):
            for mask in (True, False):
                run(dtype, bits + mask, mask)
"""


def test_compute_sanitizer_memcheck(tmp_path):
    """Both scatter modes, both index widths: no illegal access."""
    run_under_sanitizer(SANITIZER_SCRIPT, tmp_path, "memcheck")


def test_compute_sanitizer_racecheck(tmp_path):
    run_under_sanitizer(SANITIZER_SCRIPT, tmp_path, "racecheck")
