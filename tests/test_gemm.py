"""The GEMM module without a GPU: its description of each GEMM in cuBLAS's column-major
terms, and the NumPy twin that carries that description out, against plain NumPy.

The twin reads and writes through the leading dimensions, strides and transposes that
cuBLAS gets, so these tests check the translation the GPU relies on; the GPU test
(test_gemm_gpu.py) checks that cuBLAS does what the twin does with it.
"""

from __future__ import annotations

import dataclasses

import numpy
import pytest

from cudeform._gpu import gemm as gemm_module
from cudeform._gpu.gemm import compute_type, describe_gemm, numpy_gemm
from cudeform._gpu.storage import narrow, values

ml_dtypes = pytest.importorskip("ml_dtypes")


def random_operands(rng, batch, m, n, k, transpose_a, transpose_b, share_b=False):
    a = rng.standard_normal((batch, k, m) if transpose_a else (batch, m, k))
    b = rng.standard_normal((1 if share_b else batch, n, k) if transpose_b else
                            (1 if share_b else batch, k, n))
    return a, b


def reference(a, b, c, transpose_a, transpose_b, beta):
    """float64 ``op(a) @ op(b) + beta * c`` with plain NumPy."""
    op_a = a.transpose(0, 2, 1) if transpose_a else a
    op_b = b.transpose(0, 2, 1) if transpose_b else b
    return numpy.matmul(op_a.astype(numpy.float64), op_b.astype(numpy.float64)) + (
        beta * c.astype(numpy.float64))


def test_column_major_arguments_of_a_known_product():
    # Row-major C (2, 3, 5) = A (2, 3, 4) @ B (2, 4, 5) is C^T = B^T A^T column-major:
    # cuBLAS's A is our B (5 x 4, ld 5), its B our A (4 x 3, ld 4), C^T is 5 x 3 (ld 5).
    a, b = numpy.zeros((2, 3, 4), numpy.float32), numpy.zeros((2, 4, 5), numpy.float32)
    c = numpy.zeros((2, 3, 5), numpy.float32)
    g = describe_gemm(a, b, c, dtype_name="float32")
    assert (g.transa, g.transb, g.m, g.n, g.k, g.batch) == (False, False, 5, 3, 4, 2)
    assert (g.a.array is b, g.a.ld, g.a.stride) == (True, 5, 20)
    assert (g.b.array is a, g.b.ld, g.b.stride) == (True, 4, 12)
    assert (g.c.array is c, g.c.ld, g.c.stride) == (True, 5, 15)
    # Transposed operands swap cuBLAS's flags; a shared B has batch stride 0.
    at, bt = numpy.zeros((2, 4, 3), numpy.float32), numpy.zeros((1, 5, 4), numpy.float32)
    g = describe_gemm(at, bt, c, dtype_name="float32", transpose_a=True, transpose_b=True,
                      beta=1)
    assert (g.transa, g.transb, g.m, g.n, g.k) == (True, True, 5, 3, 4)
    assert (g.a.ld, g.a.stride, g.b.ld, g.b.stride, g.beta) == (4, 0, 3, 12, 1.0)


@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_twin_equals_numpy(transpose_a, transpose_b, beta, dtype):
    rng = numpy.random.default_rng(int(transpose_a) + 2 * transpose_b + int(4 * beta))
    for batch, m, n, k, share_b in ((1, 1, 1, 1, False), (3, 5, 7, 4, False),
                                    (2, 6, 1, 9, True), (4, 2, 8, 3, True)):
        a, b = random_operands(rng, batch, m, n, k, transpose_a, transpose_b, share_b)
        a, b = a.astype(dtype), b.astype(dtype)
        c = rng.standard_normal((batch, m, n)).astype(dtype)
        expected = reference(a, b, c, transpose_a, transpose_b, beta)
        numpy_gemm(describe_gemm(a, b, c, dtype_name=numpy.dtype(dtype).name, beta=beta,
                                 transpose_a=transpose_a, transpose_b=transpose_b))
        rtol = 1e-5 if dtype == numpy.float32 else 1e-13
        numpy.testing.assert_allclose(c, expected, rtol=rtol, atol=rtol * k)


def sixteen_bit(array, dtype_name, storage):
    """``array`` rounded to ``dtype_name`` in ``storage`` ("dtype" or an int16 "view")."""
    if dtype_name == "float16":
        return array.astype(numpy.float16)
    if storage == "view":
        return narrow(array.astype(numpy.float32), numpy.dtype(numpy.int16), "bfloat16", numpy)
    return array.astype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("dtype_name, storage", [("float16", "dtype"), ("bfloat16", "dtype"),
                                                 ("bfloat16", "view")])
@pytest.mark.parametrize("c_type", ["storage", "float32"])
def test_twin_multiplies_16_bit_types_in_float32(dtype_name, storage, c_type):
    """16-bit inputs, products and sums in float32, one rounding to C's type."""
    rng = numpy.random.default_rng(7)
    a64, b64 = random_operands(rng, 2, 6, 5, 300, True, False)
    a, b = sixteen_bit(a64, dtype_name, storage), sixteen_bit(b64, dtype_name, storage)
    c = (sixteen_bit(numpy.ones((2, 6, 5)), dtype_name, storage) if c_type == "storage"
         else numpy.ones((2, 6, 5), numpy.float32))
    g = describe_gemm(a, b, c, dtype_name=dtype_name, transpose_a=True, beta=1.0)
    assert g.a.data_type == dtype_name and g.compute == "float32"
    numpy_gemm(g)
    exact = reference(values(a, dtype_name, numpy), values(b, dtype_name, numpy),
                      numpy.ones((2, 6, 5)), True, False, 1.0)
    got = values(c, dtype_name, numpy).astype(numpy.float64)
    # float32 sums of 300 terms of size ~1: ~1e-5; C's rounding: its unit roundoff.
    unit = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype_name]
    rounding = unit if c_type == "storage" else 2.0**-24
    numpy.testing.assert_allclose(got, exact, rtol=rounding, atol=1e-4)


def test_twin_follows_the_description_not_the_arrays():
    """A description with a flipped transpose flag computes the other product: the twin
    reads what cuBLAS would be told, so a wrong flag in the host logic would show."""
    rng = numpy.random.default_rng(3)
    a, b = rng.standard_normal((1, 4, 4)), rng.standard_normal((1, 4, 4))
    c = numpy.zeros((1, 4, 4))
    g = describe_gemm(a, b, c, dtype_name="float64")
    numpy_gemm(dataclasses.replace(g, transb=True))
    numpy.testing.assert_allclose(c[0], a[0].T @ b[0])
    assert not numpy.allclose(c[0], a[0] @ b[0])


def test_twin_rejects_what_cubLAS_would_read_wrongly():
    a, b = numpy.zeros((2, 3, 4)), numpy.zeros((2, 4, 5))
    g = describe_gemm(a, b, numpy.zeros((2, 3, 5)), dtype_name="float64")
    with pytest.raises(ValueError, match=r"a: leading dimension 4 < rows 5"):
        numpy_gemm(dataclasses.replace(g, a=dataclasses.replace(g.a, ld=4)))
    with pytest.raises(ValueError, match=r"b: cuBLAS would read element 35 of 24"):
        numpy_gemm(dataclasses.replace(g, b=dataclasses.replace(g.b, stride=24)))
    with pytest.raises(ValueError, match=r"c: batch entries overlap"):
        numpy_gemm(dataclasses.replace(g, c=dataclasses.replace(g.c, stride=5)))


def test_matmul_errors_are_named():
    a, b, c = numpy.zeros((2, 3, 4)), numpy.zeros((2, 4, 5)), numpy.zeros((2, 3, 5))
    with pytest.raises(ValueError, match=r"shapes do not multiply: a \(2, 3, 4\) transposed"):
        describe_gemm(a, b, c, dtype_name="float64", transpose_a=True)
    with pytest.raises(ValueError, match=r"b must have shape \(1 or 2, rows, cols\)"):
        describe_gemm(a, b[0], c, dtype_name="float64")
    with pytest.raises(ValueError, match=r"c must be C-contiguous"):
        describe_gemm(a, b, numpy.zeros((2, 5, 3)).transpose(0, 2, 1),
                      dtype_name="float64")
    with pytest.raises(TypeError, match=r"a has dtype float32, expected float64"):
        describe_gemm(a.astype(numpy.float32), b, c, dtype_name="float64")
    with pytest.raises(TypeError, match=r"c has dtype float64, expected float16 or float32"):
        describe_gemm(a.astype(numpy.float16), b.astype(numpy.float16), c, dtype_name="float16")
    with pytest.raises(ValueError, match=r"beta must be 0 or 1, got 0.5"):
        describe_gemm(a, b, c, dtype_name="float64", beta=0.5)


def test_compute_types():
    def described(dtype_name, dtype):
        zeros = numpy.zeros((1, 2, 2), dtype)
        return describe_gemm(zeros, zeros, zeros, dtype_name=dtype_name)

    float32 = described("float32", numpy.float32)
    assert compute_type(float32, allow_tf32=False) == gemm_module.CUBLAS_COMPUTE_32F
    assert compute_type(float32, allow_tf32=True) == gemm_module.CUBLAS_COMPUTE_32F_FAST_TF32
    half = described("float16", numpy.float16)
    assert compute_type(half, allow_tf32=True) == gemm_module.CUBLAS_COMPUTE_32F
    double = described("float64", numpy.float64)
    assert compute_type(double, allow_tf32=True) == gemm_module.CUBLAS_COMPUTE_64F


def test_default_gemm_of_numpy_is_the_twin():
    assert gemm_module.default_gemm(numpy) is numpy_gemm
