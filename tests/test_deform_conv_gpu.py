"""deform_conv2d on CuPy arrays (needs a CUDA device): the kernels against the NumPy path.

Every test here is skipped without CuPy or without a usable CUDA device. The story:
float32 and float64 forward and all five gradients equal the NumPy path's on cases
built to catch index bugs; 16-bit types stay within their rounding of the float64
result; chunking, 64-bit indices, streams, memoisation and dispatch errors behave;
and compute-sanitizer sees no illegal memory access.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import numpy
import pytest

import cudeform
from cudeform import _workspace
from tests.helpers import CONV_CASES as CASES, TOLERANCES, conv_case, split_case

try:
    import cupy
except Exception:  # not installed, or its CUDA libraries fail to load
    cupy = None


def _why_no_gpu():
    """Why the GPU tests cannot run here, or None when they can."""
    if cupy is None:
        return "CuPy is not installed (or fails to import)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # any CUDA error: no driver, no device, broken runtime
        return f"no usable CUDA device: {type(error).__name__}: {error}"
    return None if count > 0 else "no CUDA device"


NO_GPU = _why_no_gpu()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NO_GPU is not None, reason=str(NO_GPU))]

ROOT = pathlib.Path(__file__).resolve().parent.parent
DTYPES = (numpy.float32, numpy.float64)
GRAD_NAMES = ("input", "offset", "weight", "bias", "mask")
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)

# Unit roundoff of the 16-bit storage types (half their machine epsilon).
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}



# --- helpers -------------------------------------------------------------------------------


def to_device(arrays):
    return {k: None if v is None else cupy.asarray(v) for k, v in arrays.items()}


def to_host(array):
    return None if array is None else cupy.asnumpy(array)


def noncontiguous_device(array):
    """A CuPy array with the values of ``array`` in a non-C-contiguous layout."""
    if array is None:
        return None
    device = cupy.asarray(array)
    if device.ndim >= 2:
        return cupy.swapaxes(cupy.ascontiguousarray(cupy.swapaxes(device, -1, -2)), -1, -2)
    spread = cupy.zeros(2 * device.size, dtype=device.dtype)
    spread[::2] = device
    return spread[::2]


def grad_output_for(rng, arrays, options):
    shape = cudeform.deform_conv2d(**arrays, **options).shape  # NumPy: the output shape
    return rng.standard_normal(shape).astype(arrays["input"].dtype)


def run_gpu(device_arrays, options, grad_output):
    """Forward and backward on CuPy arrays, checked for kind, device and dtype."""
    dtype = device_arrays["input"].dtype
    output = cudeform.deform_conv2d(**device_arrays, **options)
    grads = cudeform.deform_conv2d_backward(grad_output, **device_arrays, **options)
    expected_present = {"output": True, **{n: device_arrays[n] is not None for n in GRAD_NAMES}}
    for name, result in (("output", output), *zip(GRAD_NAMES, grads)):
        if not expected_present[name]:
            assert result is None, name
            continue
        assert isinstance(result, cupy.ndarray), name
        assert result.dtype == dtype, name
        assert result.device.id == device_arrays["input"].device.id, name
    return output, grads


def assert_same_results(actual, expected, dtype):
    """``(output, grads)`` pairs agree to the tolerances of ``dtype``; both finite.

    float32 keeps TOLERANCES' (1e-4, 1e-4). The largest sums here have ~700 terms
    (the weight gradient of batch 33) and most have under 100; a different summation
    order (cuBLAS blocking, atomicAdd arrival) moves such a sum by about
    sqrt(n) * 6e-8 relative to its terms, i.e. 1e-6 or less for these O(1-10) values,
    two orders below the tolerance. TF32 GEMMs would not fit, and CuPy leaves them
    off by default (CUPY_TF32=0). float64 is never loosened.
    """
    rtol, atol = TOLERANCES[numpy.dtype(dtype)]
    for name, got, want in zip(("output", *GRAD_NAMES), (actual[0], *actual[1]),
                               (expected[0], *expected[1])):
        if want is None:
            assert got is None, name
            continue
        got = to_host(got) if cupy is not None and isinstance(got, cupy.ndarray) else got
        assert got.shape == want.shape, name
        assert numpy.isfinite(got).all(), name
        numpy.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


def assert_matches_numpy(arrays, options, grad_output, device_arrays=None,
                         device_grad_output=None):
    """The CuPy forward and all five gradients equal the NumPy path's."""
    expected = (cudeform.deform_conv2d(**arrays, **options),
                cudeform.deform_conv2d_backward(grad_output, **arrays, **options))
    device_arrays = to_device(arrays) if device_arrays is None else device_arrays
    if device_grad_output is None:
        device_grad_output = cupy.asarray(grad_output)
    actual = run_gpu(device_arrays, options, device_grad_output)
    assert_same_results(actual, expected, arrays["input"].dtype)
    return actual


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


@pytest.fixture
def launches(monkeypatch):
    """Record ``(kernel name, index bits)`` of every CUDA launch."""
    from cudeform._gpu import launch

    calls, real = [], launch.cuda_launch

    def recording(kernel, dtype_name, bits, count, **args):
        calls.append((kernel.name, bits))
        return real(kernel, dtype_name, bits, count, **args)

    monkeypatch.setattr(launch, "cuda_launch", recording)
    return calls


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
    assert_matches_numpy(arrays, options, grad_output_for(rng, arrays, options))


@dtypes
def test_integer_offsets_on_borders_and_kinks(dtype):
    # Whole-pixel offsets put samples exactly on corners, on -1 and on H / W, where
    # the border test and the one-sided derivative must agree with the NumPy path.
    rng = numpy.random.default_rng(2100)
    arrays, options = split_case(conv_case(rng, dtype=dtype, size=(5, 4), offset_groups=2))
    arrays["offset"] = rng.integers(-6, 7, size=arrays["offset"].shape).astype(dtype)
    assert_matches_numpy(arrays, options, grad_output_for(rng, arrays, options))


@dtypes
def test_non_finite_and_huge_offsets(dtype):
    rng = numpy.random.default_rng(2200)
    arrays, options = split_case(conv_case(rng, dtype=dtype, offset_groups=2))
    flat = arrays["offset"].reshape(-1)
    bad = rng.choice(flat.size, size=flat.size // 3, replace=False)
    flat[bad] = rng.choice(numpy.array([numpy.nan, numpy.inf, -numpy.inf, 1e30, -1e30],
                                       dtype=dtype), size=bad.size)
    _, grads = assert_matches_numpy(arrays, options, grad_output_for(rng, arrays, options))

    # A tap whose dy or dx is bad samples outside the map: zero offset and mask gradients.
    n, channels, out_h, out_w = arrays["offset"].shape
    pairs = arrays["offset"].reshape(n, channels // 2, 2, out_h, out_w)
    outside = ~(numpy.abs(pairs) < 1e29).all(axis=2)
    assert outside.any()
    grad_pairs = to_host(grads.offset).reshape(pairs.shape).transpose(0, 1, 3, 4, 2)
    assert (grad_pairs[outside] == 0).all()
    assert (to_host(grads.mask)[outside] == 0).all()


@dtypes
def test_noncontiguous_inputs(dtype):
    rng = numpy.random.default_rng(2300)
    arrays, options = split_case(conv_case(rng, dtype=dtype, **CASES["groups2-offset-groups4"]))
    grad_output = grad_output_for(rng, arrays, options)
    device = {k: noncontiguous_device(v) for k, v in arrays.items()}
    device_grad_output = noncontiguous_device(grad_output)
    assert not any(a.flags.c_contiguous for a in (*device.values(), device_grad_output))
    assert_matches_numpy(arrays, options, grad_output, device, device_grad_output)


# --- 16-bit types against float64 ----------------------------------------------------------


def low_precision_dtype(name):
    """The numpy dtype of ``name``; bfloat16 skips unless CuPy takes ml_dtypes arrays."""
    if name == "float16":
        return numpy.dtype(numpy.float16)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtype = numpy.dtype(ml_dtypes.bfloat16)
    try:
        cupy.asarray(numpy.zeros(4, dtype))
    except Exception as error:
        pytest.skip(f"cupy.asarray does not accept an ml_dtypes.bfloat16 array: "
                    f"{type(error).__name__}: {error}")
    return dtype


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
    low = {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}
    grad_low = grad_output_for(rng, arrays, options).astype(dtype)
    exact = {k: None if v is None else v.astype(numpy.float64) for k, v in low.items()}
    expected_output = cudeform.deform_conv2d(**exact, **options)
    expected_grads = cudeform.deform_conv2d_backward(grad_low.astype(numpy.float64), **exact,
                                                     **options)
    output, grads = run_gpu(to_device(low), options, cupy.asarray(grad_low))

    for what, got, want in zip(("output", *GRAD_NAMES), (output, *grads),
                               (expected_output, *expected_grads)):
        if want is None:
            continue
        got = to_host(got).astype(numpy.float64)
        assert numpy.isfinite(got).all(), what
        atol = 16 * UNIT_ROUNDOFF[dtype_name] * numpy.abs(want).max(initial=0.0)
        numpy.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=what)


# --- host logic: chunking, index width -----------------------------------------------------


@dtypes
def test_workspace_limit_chunks_the_batch(dtype, launches):
    rng = numpy.random.default_rng(2500)
    arrays, options = split_case(conv_case(rng, dtype=dtype, batch=5, in_channels=4,
                                           out_channels=4, groups=2, offset_groups=2))
    grad_output = grad_output_for(rng, arrays, options)
    device, device_grad_output = to_device(arrays), cupy.asarray(grad_output)
    whole = run_gpu(device, options, device_grad_output)
    previous = _workspace._limit
    try:
        cudeform.set_workspace_limit(1)  # one image per chunk
        launches.clear()
        chunked = run_gpu(device, options, device_grad_output)
    finally:
        cudeform.set_workspace_limit(previous)
    assert sum(name == "deform_im2col" for name, _ in launches) == 2 * 5  # forward, backward
    host = (to_host(whole[0]), [to_host(g) for g in whole[1]])
    assert_same_results(chunked, host, dtype)
    assert_matches_numpy(arrays, options, grad_output, device, device_grad_output)


@dtypes
def test_64_bit_index_instantiation_matches_32_bit(monkeypatch, dtype, launches):
    from cudeform._gpu import deform_conv as gpu

    rng = numpy.random.default_rng(2600)
    arrays, options = split_case(conv_case(
        rng, dtype=dtype, batch=3, groups=2, offset_groups=2, kernel=(3, 2), stride=(2, 1),
        padding=(1, 0), dilation=(2, 1), size=(7, 5), offset_scale=4.0))
    grad_output = grad_output_for(rng, arrays, options)
    device, device_grad_output = to_device(arrays), cupy.asarray(grad_output)
    narrow = run_gpu(device, options, device_grad_output)
    assert launches and all(bits == 32 for _, bits in launches)

    launches.clear()
    monkeypatch.setattr(gpu, "index_bits", lambda *sizes: 64)
    wide = run_gpu(device, options, device_grad_output)
    assert {name for name, _ in launches} == {
        "deform_im2col", "deform_col2im", "deform_col2im_coord"}
    assert all(bits == 64 for _, bits in launches)
    assert_same_results(wide, (to_host(narrow[0]), [to_host(g) for g in narrow[1]]), dtype)


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
    grad_output = grad_output_for(rng, arrays, options)
    device, device_grad_output = to_device(arrays), cupy.asarray(grad_output)
    expected = run_gpu(device, options, device_grad_output)  # default stream; compiles
    expected = (to_host(expected[0]), [to_host(g) for g in expected[1]])

    delayed_copy = cupy.RawKernel(DELAYED_COPY, "delayed_copy")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        run_gpu(device, options, device_grad_output)  # warm the pool and cuBLAS on it
        stream.synchronize()
        late_input = cupy.zeros_like(device["input"])
        delayed_copy((1,), (256,), (device["input"], late_input,
                                    numpy.uint64(late_input.nbytes), numpy.uint64(DELAY_NS)))
        copied = stream.record()
        late = {**device, "input": late_input}
        actual = run_gpu(late, options, device_grad_output)
        issued_before_copy = not copied.done
    stream.synchronize()
    assert issued_before_copy, "the delay ended before cudeform's work was issued"
    assert_same_results(actual, expected, numpy.float64)


def test_kernel_modules_are_compiled_once_per_device(monkeypatch):
    from cudeform._gpu import compile as kernel_compile

    rng = numpy.random.default_rng(2800)
    arrays, options = split_case(conv_case(rng, dtype=numpy.float32))
    grad_output = grad_output_for(rng, arrays, options)
    device, device_grad_output = to_device(arrays), cupy.asarray(grad_output)
    first = run_gpu(device, options, device_grad_output)
    module = kernel_compile._module("deform_conv", "float", "int")
    assert kernel_compile._module("deform_conv", "float", "int") is module
    assert kernel_compile._module("deform_conv", "double", "int") is not module

    def no_compile(*args, **kwargs):
        raise AssertionError("cupy.RawModule built again: kernel modules are not memoised")

    monkeypatch.setattr(cupy, "RawModule", no_compile)
    second = run_gpu(device, options, device_grad_output)
    assert kernel_compile._module("deform_conv", "float", "int") is module
    assert_same_results(second, (to_host(first[0]), [to_host(g) for g in first[1]]),
                        numpy.float32)


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
    grad_output = grad_output_for(rng, arrays, options)
    with cupy.cuda.Device(1):
        device, device_grad_output = to_device(arrays), cupy.asarray(grad_output)
    with cupy.cuda.Device(0):  # the arrays, not the current device, choose the GPU
        assert_matches_numpy(arrays, options, grad_output, device, device_grad_output)
        with pytest.raises(ValueError, match=r"offset is on GPU 0 but input is on GPU 1"):
            cudeform.deform_conv2d(**{**device, "offset": cupy.asarray(arrays["offset"])},
                                   **options)
        module_0 = kernel_compile._module("deform_conv", "double", "int")
    with cupy.cuda.Device(1):
        assert kernel_compile._module("deform_conv", "double", "int") is not module_0


# --- compute-sanitizer ---------------------------------------------------------------------

SANITIZER_SCRIPT = """
import numpy, cupy
import cudeform
from cudeform._gpu import deform_conv as gpu
from tests.helpers import conv_case, split_case

cupy.cuda.set_allocator(None)  # one cudaMalloc per array, so memcheck knows its bounds

def run(dtype, seed, mask):
    rng = numpy.random.default_rng(seed)
    arrays, options = split_case(conv_case(
        rng, dtype=dtype, batch=2, in_channels=4, out_channels=4, groups=2, offset_groups=2,
        kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), size=(6, 5),
        offset_scale=8.0, mask=mask))
    flat = arrays["offset"].reshape(-1)
    bad = rng.choice(flat.size, size=flat.size // 4, replace=False)
    flat[bad] = rng.choice(numpy.array([numpy.nan, numpy.inf, -numpy.inf, 1e30, -1e30, 1e6],
                                       dtype=dtype), size=bad.size)
    device = {k: None if v is None else cupy.asarray(v) for k, v in arrays.items()}
    output = cudeform.deform_conv2d(**device, **options)
    grad_output = cupy.asarray(rng.standard_normal(output.shape).astype(dtype))
    grads = cudeform.deform_conv2d_backward(grad_output, **device, **options)
    cupy.cuda.runtime.deviceSynchronize()
    for result in (output, *grads):
        assert result is None or bool(cupy.isfinite(result).all())

for bits in (32, 64):
    if bits == 64:
        gpu.index_bits = lambda *sizes: 64
    for dtype in (numpy.float32, numpy.float64):
        for mask in (True, False):
            run(dtype, bits + mask, mask)
print("sanitizer script finished")
"""


def compute_sanitizer():
    """Path of compute-sanitizer, or None."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        candidate = pathlib.Path(root or "/nonexistent") / "bin" / "compute-sanitizer"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def test_compute_sanitizer_memcheck(tmp_path):
    tool = compute_sanitizer()
    if tool is None:
        pytest.skip("compute-sanitizer not found on PATH, $CUDA_HOME, $CUDA_PATH or "
                    "/usr/local/cuda")
    script = tmp_path / "sanitized.py"
    script.write_text(SANITIZER_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run(
        [tool, "--tool", "memcheck", "--error-exitcode", "1", sys.executable, str(script)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    log = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, log
    assert "ERROR SUMMARY: 0 errors" in result.stdout + result.stderr, log
    assert "sanitizer script finished" in result.stdout, log
