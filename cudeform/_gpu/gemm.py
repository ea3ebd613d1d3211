"""Every GEMM of the GPU path: one description, run by cuBLAS or by its NumPy twin.

:func:`describe_gemm` takes row-major arrays and describes
``C[b] = op(A[b]) @ op(B[b]) + beta * C[b]`` for every batch entry ``b`` (the weight
groups) once, as the column-major arguments of ``cublasGemmStridedBatchedEx``: a
:class:`Gemm`. :func:`cublas_gemm` passes those arguments to cuBLAS on CuPy arrays, in
the arrays' own storage types (bfloat16 views as their bits). :func:`numpy_gemm`
carries out the very same arguments on NumPy arrays, reading and writing through the
leading dimensions and batch strides cuBLAS would use, so that the host tests check the
translation to column-major order and not a second copy of it.

Row-major to column-major: a row-major ``r x c`` matrix is, read column-major, its
transpose (``c x r``, leading dimension ``c``). So ``C = op(A) op(B)`` is computed as
``C^T = op(B)^T op(A)^T``: cuBLAS's first operand is our B, its second our A, and its
``m, n`` are the columns and rows of our C.

16-bit storage types multiply in float32 (``CUBLAS_COMPUTE_32F``, tensor cores) and may
write a float32 C; float32 is exact FP32 unless TF32 is allowed; float64 is float64.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import numpy

from cudeform._gpu.signatures import ACCUMULATE_DTYPES
from cudeform._gpu.storage import is_view, narrow, values

# cudaDataType_t of each storage type (CUDA_R_32F, CUDA_R_64F, CUDA_R_16F, CUDA_R_16BF).
CUDA_DATA_TYPES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 14}
# cublasComputeType_t values.
CUBLAS_COMPUTE_32F = 68
CUBLAS_COMPUTE_32F_FAST_TF32 = 77
CUBLAS_COMPUTE_64F = 70
CUBLAS_GEMM_DEFAULT = -1
_INT_MAX = 2**31 - 1  # cuBLAS takes m, n, k, leading dimensions and the batch as int


@dataclasses.dataclass(frozen=True)
class Operand:
    """One matrix argument of cuBLAS: ``batch`` matrices of ``rows x cols``, stored
    column-major in ``array`` with leading dimension ``ld``, ``stride`` elements apart
    (0: one matrix shared by the whole batch)."""

    array: object
    data_type: str  # a key of CUDA_DATA_TYPES
    rows: int
    cols: int
    ld: int
    stride: int


@dataclasses.dataclass(frozen=True)
class Gemm:
    """The arguments of one ``cublasGemmStridedBatchedEx`` call, in cuBLAS's terms:
    ``C[b] = op(A[b]) @ op(B[b]) + beta * C[b]`` with ``op(A[b])`` of ``m x k`` and
    ``op(B[b])`` of ``k x n``, column-major, for ``b < batch``; alpha is 1."""

    transa: bool
    transb: bool
    m: int
    n: int
    k: int
    a: Operand
    b: Operand
    c: Operand
    batch: int
    beta: float
    compute: str  # "float32" or "float64": the type of the products and sums


def _data_type(array, dtype_name):
    return "bfloat16" if is_view(array.dtype, dtype_name) else array.dtype.name


def _row_major(array, name, batch, dtype_names):
    """``array`` (a C-contiguous ``(1 or batch, rows, cols)`` array) as a cuBLAS operand."""
    if array.ndim != 3 or array.shape[0] not in (1, batch):
        raise ValueError(f"{name} must have shape (1 or {batch}, rows, cols), got {array.shape}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    rows, cols = array.shape[1:]
    stride = rows * cols if array.shape[0] > 1 else 0
    data_type = _data_type(array, dtype_names[0])
    if data_type not in dtype_names:
        raise TypeError(f"{name} has dtype {array.dtype}, expected {' or '.join(dtype_names)}")
    # Read column-major, the row-major rows x cols matrix is its cols x rows transpose.
    return Operand(array, data_type, rows=cols, cols=rows, ld=max(1, cols), stride=stride)


def describe_gemm(a, b, c, *, dtype_name, transpose_a=False, transpose_b=False, beta=0.0):
    """Describe ``c[i] = op(a[i]) @ op(b[i]) + beta * c[i]`` on row-major 3-D arrays.

    Args:
        a (array[1 or G, M, K], or [.., K, M] with transpose_a): storage type
            ``dtype_name``; a leading 1 shares one matrix across the batch.
        b (array[1 or G, K, N], or [.., N, K] with transpose_b): storage type.
        c (array[G, M, N]): the storage type or its accumulation type (float32 for
            16-bit types); read only when ``beta`` is not 0.
        dtype_name: the storage type's name; 16-bit integer arrays are bfloat16 views.
        beta: 0 (overwrite c) or 1 (add to c, e.g. across batch chunks).

    Returns:
        Gemm: the cuBLAS arguments, for :func:`cublas_gemm` or :func:`numpy_gemm`.
    """
    batch = c.shape[0] if c.ndim == 3 else 0
    storage = (dtype_name,)
    op_a = _row_major(a, "a", batch, storage)
    op_b = _row_major(b, "b", batch, storage)
    op_c = _row_major(c, "c", batch, (dtype_name, ACCUMULATE_DTYPES[dtype_name]))
    rows_a, inner_a = a.shape[1:][::-1] if transpose_a else a.shape[1:]
    inner_b, cols_b = b.shape[1:][::-1] if transpose_b else b.shape[1:]
    if c.shape[0] != batch or inner_a != inner_b or c.shape[1:] != (rows_a, cols_b):
        raise ValueError(f"shapes do not multiply: a {a.shape}{' transposed' * transpose_a}, "
                         f"b {b.shape}{' transposed' * transpose_b}, c {c.shape}")
    if beta not in (0.0, 1.0):
        raise ValueError(f"beta must be 0 or 1, got {beta}")
    gemm = Gemm(transa=transpose_b, transb=transpose_a, m=cols_b, n=rows_a, k=inner_a,
                a=op_b, b=op_a, c=op_c, batch=batch, beta=float(beta),
                compute="float64" if dtype_name == "float64" else "float32")
    too_large = [name for name, value in (("m", gemm.m), ("n", gemm.n), ("k", gemm.k),
                                          ("batch", batch), ("lda", op_b.ld),
                                          ("ldb", op_a.ld), ("ldc", op_c.ld))
                 if value > _INT_MAX]
    if too_large:
        raise OverflowError(f"GEMM {', '.join(too_large)} pass cuBLAS's 32-bit int limit")
    return gemm


def compute_type(gemm, allow_tf32):
    """The cublasComputeType_t of ``gemm``: TF32 only for float32 data, when allowed."""
    if gemm.compute == "float64":
        return CUBLAS_COMPUTE_64F
    if allow_tf32 and gemm.a.data_type == "float32":
        return CUBLAS_COMPUTE_32F_FAST_TF32
    return CUBLAS_COMPUTE_32F


def cublas_gemm(gemm, *, allow_tf32=False):
    """Run ``gemm`` on CuPy arrays with ``cublasGemmStridedBatchedEx`` on the current
    stream (CuPy's per-thread handle of the current device)."""
    if gemm.m == 0 or gemm.n == 0 or gemm.batch == 0:
        return
    from cupy.cuda import device
    from cupy_backends.cuda.libs import cublas

    scalar = numpy.float64 if gemm.compute == "float64" else numpy.float32
    alpha = numpy.ones(1, scalar)
    beta = numpy.full(1, gemm.beta, scalar)
    a, b, c = gemm.a, gemm.b, gemm.c
    cublas.gemmStridedBatchedEx(
        device.get_cublas_handle(), int(gemm.transa), int(gemm.transb), gemm.m, gemm.n, gemm.k,
        alpha.ctypes.data,
        a.array.data.ptr, CUDA_DATA_TYPES[a.data_type], a.ld, a.stride,
        b.array.data.ptr, CUDA_DATA_TYPES[b.data_type], b.ld, b.stride,
        beta.ctypes.data,
        c.array.data.ptr, CUDA_DATA_TYPES[c.data_type], c.ld, c.stride,
        gemm.batch, compute_type(gemm, allow_tf32), CUBLAS_GEMM_DEFAULT)


def _column_major(operand, batch, name):
    """The ``(batch, rows, cols)`` NumPy view cuBLAS would read; a ValueError if it
    would reach outside the array or break cuBLAS's rule ``ld >= rows``."""
    flat = operand.array.reshape(-1)
    if operand.ld < max(1, operand.rows):
        raise ValueError(f"{name}: leading dimension {operand.ld} < rows {operand.rows}")
    last = operand.stride * (batch - 1) + (operand.rows - 1) + (operand.cols - 1) * operand.ld
    if operand.rows and operand.cols and batch and last >= flat.size:
        raise ValueError(f"{name}: cuBLAS would read element {last} of {flat.size}")
    step = flat.itemsize
    return numpy.lib.stride_tricks.as_strided(
        flat, shape=(batch, operand.rows, operand.cols),
        strides=(operand.stride * step, step, operand.ld * step))


def _values_in(view, operand, compute):
    return values(view, operand.data_type, numpy).astype(compute)


def checked_views(gemm):
    """``(op(A), op(B), C)``: the NumPy views of what cuBLAS would read and write for
    ``gemm``; a ValueError where cuBLAS would read outside an array, break a rule on
    its arguments or write overlapping batch entries. Computes nothing."""
    if gemm.c.stride < gemm.c.ld * gemm.c.cols and gemm.batch > 1:
        raise ValueError("c: batch entries overlap")
    a = _column_major(gemm.a, gemm.batch, "a")
    b = _column_major(gemm.b, gemm.batch, "b")
    c = _column_major(gemm.c, gemm.batch, "c")
    op_a = a.transpose(0, 2, 1) if gemm.transa else a
    op_b = b.transpose(0, 2, 1) if gemm.transb else b
    if op_a.shape[1:] != (gemm.m, gemm.k) or op_b.shape[1:] != (gemm.k, gemm.n) or (
            c.shape[1:] != (gemm.m, gemm.n)):
        raise ValueError(f"op(A) {op_a.shape[1:]}, op(B) {op_b.shape[1:]} and C "
                         f"{c.shape[1:]} do not fit m={gemm.m}, n={gemm.n}, k={gemm.k}")
    return op_a, op_b, c


def numpy_gemm(gemm):
    """Carry out ``gemm`` on NumPy arrays exactly as described to cuBLAS: the same
    operands, leading dimensions, strides, transposes and beta, with products and sums
    in ``gemm.compute`` and one rounding to C's type."""
    op_a, op_b, c = checked_views(gemm)
    result = numpy.matmul(_values_in(op_a, gemm.a, gemm.compute),
                          _values_in(op_b, gemm.b, gemm.compute))
    if gemm.beta:
        result += gemm.beta * _values_in(c, gemm.c, gemm.compute)
    if is_view(c.dtype, gemm.c.data_type):
        c[...] = narrow(result.astype(numpy.float32), c.dtype, "bfloat16", numpy)
    else:
        c[...] = result.astype(c.dtype)


# cuBLAS is bit-reproducible run to run with one active stream; with several concurrent
# streams on one handle it is only under one of these workspace settings (cuBLAS's
# "Results reproducibility"). ":4096:8" costs about 24 MiB of GPU memory, ":16:8" speed.
CUBLAS_WORKSPACE_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
REPRODUCIBLE_WORKSPACE_CONFIGS = (":4096:8", ":16:8")
_warned_configs = set()


def reproducible_workspace(environ=None):
    """Make cuBLAS reproducible with several streams, for deterministic mode.

    Sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when it is unset (cuBLAS reads it when a
    handle is created, so it reaches the handles made after this call); a value the user
    set is kept, with one RuntimeWarning when it is not one of cuBLAS's reproducible
    settings. Returns the value in force.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(CUBLAS_WORKSPACE_VARIABLE)
    if value is None:
        environ[CUBLAS_WORKSPACE_VARIABLE] = value = REPRODUCIBLE_WORKSPACE_CONFIGS[0]
    elif value not in REPRODUCIBLE_WORKSPACE_CONFIGS and value not in _warned_configs:
        _warned_configs.add(value)
        warnings.warn(
            f"{CUBLAS_WORKSPACE_VARIABLE}={value!r}: cuBLAS documents bit-reproducible GEMMs "
            f"with several streams only for {' or '.join(REPRODUCIBLE_WORKSPACE_CONFIGS)}; "
            "cudeform's deterministic mode keeps your value", RuntimeWarning, stacklevel=3)
    return value


def default_gemm(xp):
    """The GEMM runner of an array module: cuBLAS (with the current TF32 mode) for
    CuPy, the NumPy twin for NumPy."""
    if xp is numpy:
        return numpy_gemm
    from cudeform import _modes

    return functools.partial(cublas_gemm, allow_tf32=_modes.allow_tf32())
