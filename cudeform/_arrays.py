"""Dispatch checks: which array module runs an op, dtype checks, and the GPU context.

NumPy arrays run on the CPU, CuPy arrays on their GPU; a mix is a TypeError. The
public functions name both implementations of their op, ``cudeform._cpu.<op>`` and
``cudeform._gpu.<op>``, and :func:`call` runs the one that fits the arrays.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys

import numpy

CPU_DTYPES = ("float32", "float64")
GPU_DTYPES = ("float16", "bfloat16", "float32", "float64")
# Storage dtypes of bfloat16 arrays handed over as 16-bit integer views.
BFLOAT16_VIEW_DTYPES = ("int16", "uint16")

_bfloat16_views = contextvars.ContextVar("cudeform_bfloat16_views", default=False)


@contextlib.contextmanager
def bfloat16_views():
    """Within this context, CuPy int16/uint16 arrays are bfloat16 bit patterns.

    CuPy has no bfloat16 dtype, so a framework adapter (the PyTorch one) hands
    bfloat16 tensors over as 16-bit integer views and runs the public ops inside
    this context; they then compute in bfloat16 (accumulating in float32) and
    return bfloat16 results as views of the same integer dtype. NumPy arrays are
    not affected (the CPU path has no 16-bit types).
    """
    token = _bfloat16_views.set(True)
    try:
        yield
    finally:
        _bfloat16_views.reset(token)


def element_type(dtype, xp):
    """The element type name of arrays of ``dtype``: ``"bfloat16"`` for 16-bit integer
    views inside :func:`bfloat16_views` on CuPy, else ``dtype.name``."""
    if xp is not numpy and dtype.name in BFLOAT16_VIEW_DTYPES and _bfloat16_views.get():
        return "bfloat16"
    return dtype.name


def _is_cupy(array):
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(array, cupy.ndarray)


def array_module(arrays):
    """The module (numpy or cupy) of ``arrays``, a dict ``{name: array or None}``.

    Raises:
        TypeError: an argument is not an array, or NumPy and CuPy arrays are mixed.
        ValueError: CuPy arrays live on different devices.
    """
    kinds = {}
    for name, array in arrays.items():
        if array is None:
            continue
        if isinstance(array, numpy.ndarray):
            kinds[name] = "numpy"
        elif _is_cupy(array):
            kinds[name] = "cupy"
        else:
            raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray, "
                            f"got {type(array).__name__}")
    if len(set(kinds.values())) > 1:
        numpy_name = next(n for n, k in kinds.items() if k == "numpy")
        cupy_name = next(n for n, k in kinds.items() if k == "cupy")
        raise TypeError(f"{numpy_name} is a numpy.ndarray but {cupy_name} is a cupy.ndarray; "
                        "pass arrays of one kind")
    if "cupy" not in kinds.values():
        return numpy
    import cupy

    devices = {name: arrays[name].device.id for name in kinds}
    first = next(iter(devices))
    for name, device in devices.items():
        if device != devices[first]:
            raise ValueError(f"{name} is on GPU {device} but {first} is on GPU "
                             f"{devices[first]}; pass arrays on one device")
    return cupy


def common_dtype(arrays, xp):
    """The dtype shared by ``arrays`` (a dict ``{name: array or None}``).

    Raises:
        TypeError: the dtypes differ, or the dtype is not supported on this device.
    """
    present = {name: a for name, a in arrays.items() if a is not None}
    first = next(iter(present))
    dtype = present[first].dtype
    for name, array in present.items():
        if array.dtype != dtype:
            raise TypeError(f"{name} has dtype {array.dtype} but {first} has dtype {dtype}; "
                            "all arrays must have one dtype")
    supported = CPU_DTYPES if xp is numpy else GPU_DTYPES
    if element_type(dtype, xp) not in supported:
        where = "NumPy (CPU)" if xp is numpy else "CuPy (GPU)"
        raise TypeError(f"{first} has dtype {dtype}, which {where} arrays do not support; "
                        f"expected one of {', '.join(supported)}")
    return dtype


def contiguous(xp, array):
    """``array`` as C-contiguous (copied only when needed); ``None`` stays ``None``."""
    return None if array is None else xp.ascontiguousarray(array)


def device_of(xp, arrays):
    """A context manager that makes the GPU of ``arrays`` (CuPy arrays of one device,
    a dict ``{name: array or None}``) current; a no-op for NumPy arrays."""
    if xp is numpy:
        return contextlib.nullcontext()
    return next(a for a in arrays.values() if a is not None).device


def contiguous_arrays(xp, arrays):
    """``arrays`` with every array C-contiguous; the copies are made on the arrays' GPU,
    whatever device is current."""
    with device_of(xp, arrays):
        return {name: contiguous(xp, a) for name, a in arrays.items()}


def prepare(arrays):
    """Dispatch and dtype checks for one op call.

    Args:
        arrays: dict ``{name: array or None}``; the first entry names the dtype reference.

    Returns:
        ``(xp, dtype, arrays)`` with every array C-contiguous, on the arrays' device.
    """
    xp = array_module(arrays)
    dtype = common_dtype(arrays, xp)
    return xp, dtype, contiguous_arrays(xp, arrays)


def call(xp, dtype, cpu_function, gpu_function, args):
    """``cpu_function(*args)`` for NumPy arrays; for CuPy arrays
    ``gpu_function(*args, **engine)`` inside :func:`on_gpu`, on the GPU of ``args[0]``."""
    if xp is numpy:
        return cpu_function(*args)
    with on_gpu(args[0], dtype) as engine:
        return gpu_function(*args, **engine)


@contextlib.contextmanager
def on_gpu(array, dtype):
    """Run CUDA host logic on the GPU of ``array`` (a CuPy array) for arrays of ``dtype``.

    Yields the keyword arguments that every ``cudeform._gpu.<op>`` function takes
    besides its arrays: the element type name, the array module, the launcher, the
    GEMM runner (cuBLAS, with TF32 as :func:`cudeform.allow_tf32` says now) and
    whether to run deterministically (:func:`cudeform.is_deterministic`). This is the
    one place where the public functions reach CuPy's launcher and cuBLAS, and where
    the modes are read, once per call. The host tests pass the NumPy twins instead.
    """
    import cupy

    from cudeform import _modes
    from cudeform._gpu.gemm import default_gemm, reproducible_workspace
    from cudeform._gpu.launch import cuda_launch

    deterministic = _modes.is_deterministic()
    if deterministic:
        reproducible_workspace()  # before CuPy's cuBLAS handle of this thread exists
    with array.device:  # allocate and launch on the arrays' GPU
        yield dict(dtype_name=element_type(dtype, cupy), xp=cupy, launch=cuda_launch,
                   gemm=default_gemm(cupy), deterministic=deterministic)
