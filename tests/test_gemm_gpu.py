"""cuBLAS through the GEMM module (needs a CUDA device): what cuBLAS does with each
description equals what the NumPy twin does with it, in every storage type; TF32 only
when allowed; and the deformable convolution reaches no ``cupy.matmul``.

Skipped without CuPy or a usable CUDA device.
"""

from __future__ import annotations

import numpy
import pytest

import cudeform
from cudeform import _arrays
from cudeform._gpu import gemm as gemm_module
from cudeform._gpu.gemm import cublas_gemm, describe_gemm, numpy_gemm
from cudeform._gpu.storage import narrow, values
from tests.gpu import UNIT_ROUNDOFF, cupy, requires_gpu
from tests.helpers import conv_case, split_case

pytestmark = requires_gpu

# (dtype name, storage dtype of the arrays, C's dtype): every combination cuBLAS is given.
COMBINATIONS = [
    ("float64", "float64", "float64"),
    ("float32", "float32", "float32"),
    ("float16", "float16", "float16"),
    ("float16", "float16", "float32"),
    ("bfloat16", "int16", "int16"),  # bfloat16 views, as the torch adapter hands them over
    ("bfloat16", "int16", "float32"),
]


def stored(array, dtype_name, storage):
    """``array`` in ``storage`` (int16: bfloat16 bits) as a NumPy array."""
    if storage == "int16":
        return narrow(array.astype(numpy.float32), numpy.dtype(numpy.int16), dtype_name, numpy)
    return array.astype(storage)


def test_constants_are_cublas_constants():
    from cupy_backends.cuda.api import runtime
    from cupy_backends.cuda.libs import cublas

    assert gemm_module.CUDA_DATA_TYPES == {"float32": runtime.CUDA_R_32F,
                                           "float64": runtime.CUDA_R_64F,
                                           "float16": runtime.CUDA_R_16F,
                                           "bfloat16": runtime.CUDA_R_16BF}
    assert gemm_module.CUBLAS_COMPUTE_32F == cublas.CUBLAS_COMPUTE_32F
    assert gemm_module.CUBLAS_COMPUTE_32F_FAST_TF32 == cublas.CUBLAS_COMPUTE_32F_FAST_TF32
    assert gemm_module.CUBLAS_COMPUTE_64F == cublas.CUBLAS_COMPUTE_64F
    assert gemm_module.CUBLAS_GEMM_DEFAULT == cublas.CUBLAS_GEMM_DEFAULT


@pytest.mark.parametrize("dtype_name, storage, c_storage", COMBINATIONS)
@pytest.mark.parametrize("transpose_a, transpose_b, share_b", [(False, False, False),
                                                               (True, False, False),
                                                               (False, True, True)])
def test_cublas_equals_the_twin(dtype_name, storage, c_storage, transpose_a, transpose_b,
                                share_b):
    rng = numpy.random.default_rng(COMBINATIONS.index((dtype_name, storage, c_storage)))
    batch, m, n, k = 3, 37, 70, 129
    a = rng.standard_normal((batch, k, m) if transpose_a else (batch, m, k))
    b = rng.standard_normal(((1 if share_b else batch), *((n, k) if transpose_b else (k, n))))
    a, b = stored(a, dtype_name, storage), stored(b, dtype_name, storage)
    c = stored(rng.standard_normal((batch, m, n)), dtype_name, c_storage)
    # Both sum 129 exact products in float32 (float64) in their own orders; then C's
    # rounding may differ by one unit of C's type.
    summing = 1e-12 if dtype_name == "float64" else 1e-5
    rounding = {"float16": 2.0**-11, "int16": 2.0**-8}.get(c_storage, 0.0)
    for beta in (0.0, 1.0):
        host_c = c.copy()
        numpy_gemm(describe_gemm(a, b, host_c, dtype_name=dtype_name,
                                 transpose_a=transpose_a, transpose_b=transpose_b, beta=beta))
        device_c = cupy.asarray(c)
        cublas_gemm(describe_gemm(cupy.asarray(a), cupy.asarray(b), device_c,
                                  dtype_name=dtype_name, transpose_a=transpose_a,
                                  transpose_b=transpose_b, beta=beta))
        assert device_c.dtype == c.dtype
        got = values(cupy.asnumpy(device_c), dtype_name, numpy).astype(numpy.float64)
        want = values(host_c, dtype_name, numpy).astype(numpy.float64)
        scale = numpy.abs(want).max()
        numpy.testing.assert_allclose(got, want, rtol=0,
                                      atol=(summing + 2 * rounding) * scale)


def test_weight_gradient_accumulates_in_float32_across_calls():
    """beta = 1 into a float32 C sums float16 products over calls without rounding to
    float16: 64 calls of 0.001-sized products keep digits a float16 sum would lose."""
    ones = cupy.ones((1, 4, 256), cupy.float16)
    small = cupy.full((1, 256, 4), 1 / 1024, cupy.float16)
    c = cupy.zeros((1, 4, 4), cupy.float32)
    c[...] = 1000.0
    for _ in range(64):
        cublas_gemm(describe_gemm(ones, small, c, dtype_name="float16", beta=1.0))
    numpy.testing.assert_allclose(cupy.asnumpy(c), 1000.0 + 64 * 0.25, rtol=0, atol=1e-3)
    assert float(cupy.float16(1000.0) + cupy.float16(0.25)) == 1000.0  # float16 would lose it


def test_tf32_only_when_allowed():
    """float32 GEMMs are exact FP32 by default; with TF32 allowed (on a GPU that has it)
    they round the inputs to 10 mantissa bits, a difference of order 1e-3."""
    rng = numpy.random.default_rng(1)
    a = cupy.asarray(rng.standard_normal((1, 256, 512)).astype(numpy.float32))
    b = cupy.asarray(rng.standard_normal((1, 512, 256)).astype(numpy.float32))
    exact = cupy.asnumpy(a).astype(numpy.float64) @ cupy.asnumpy(b).astype(numpy.float64)

    def error(allow_tf32):
        c = cupy.empty((1, 256, 256), cupy.float32)
        cublas_gemm(describe_gemm(a, b, c, dtype_name="float32"), allow_tf32=allow_tf32)
        return numpy.abs(cupy.asnumpy(c) - exact).max() / numpy.abs(exact).max()

    assert error(False) < 1e-5
    major = int(cupy.cuda.Device().compute_capability) // 10
    if major < 8:
        pytest.skip("no TF32 before compute capability 8.0")
    assert 1e-5 < error(True) < 1e-2


def test_public_tf32_switch_reaches_the_gemm(monkeypatch):
    seen = []
    real = gemm_module.cublas_gemm

    def recording(gemm, *, allow_tf32=False):
        seen.append(allow_tf32)
        return real(gemm, allow_tf32=allow_tf32)

    monkeypatch.setattr(gemm_module, "cublas_gemm", recording)
    rng = numpy.random.default_rng(2)
    arrays, options = split_case(conv_case(rng, dtype=numpy.float32))
    device = {k: None if v is None else cupy.asarray(v) for k, v in arrays.items()}
    for allowed in (True, False):
        cudeform.set_allow_tf32(allowed)
        try:
            cudeform.deform_conv2d(**device, **options)
        finally:
            cudeform.set_allow_tf32(False)
        assert seen and set(seen) == {allowed}
        seen.clear()


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_16_bit_convolution_reaches_no_cupy_matmul(monkeypatch, dtype_name):
    """Every GEMM of the GPU path goes through cuBLAS in the storage type."""
    def refuse(*args, **kwargs):
        raise AssertionError("cupy.matmul was called")

    monkeypatch.setattr(cupy, "matmul", refuse)
    rng = numpy.random.default_rng(3)
    arrays, options = split_case(conv_case(rng, dtype=numpy.float32, groups=2, out_channels=4,
                                           offset_groups=2))
    if dtype_name == "float16":
        device = {k: None if v is None else cupy.asarray(v.astype(numpy.float16))
                  for k, v in arrays.items()}
        output = cudeform.deform_conv2d(**device, **options)
        grads = cudeform.deform_conv2d_backward(cupy.ones_like(output), **device, **options)
    else:
        device = {k: None if v is None else cupy.asarray(stored(v, "bfloat16", "int16"))
                  for k, v in arrays.items()}
        with _arrays.bfloat16_views():
            output = cudeform.deform_conv2d(**device, **options)
            ones = cupy.asarray(stored(numpy.ones(output.shape), "bfloat16", "int16"))
            grads = cudeform.deform_conv2d_backward(ones, **device, **options)
    assert output.dtype == device["input"].dtype
    assert all(g is None or g.dtype == device["input"].dtype for g in grads)
