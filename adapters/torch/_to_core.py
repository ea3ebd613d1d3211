"""Tensors to the core's arrays and back: the one place where the adapter calls the core.

CPU tensors become NumPy arrays (``numpy.from_dlpack``) and the core's NumPy outputs
come back through ``torch.from_numpy``; CUDA tensors become CuPy arrays on the
tensor's GPU, and the kernels run on torch's current CUDA stream, so no
synchronisation is needed. float32 and float64 travel without copies. On CUDA every
CuPy allocation of the call comes from torch's caching allocator (``_allocator.py``),
and the outputs come back as the torch tensors that own their memory.

Two dtypes need a detour:

- float16 and bfloat16 CPU tensors are cast to float32, computed on the NumPy path
  (which has no 16-bit types) and cast back, so every result has the input's dtype.
- CuPy has no bfloat16, so bfloat16 CUDA tensors travel as int16 views and the core
  is told their element type (:func:`cudeform._arrays.bfloat16_views`).

Every result is returned C-contiguous, whatever the memory format of the inputs:
this is the rule the fake kernels state too.

Each call follows torch's numerical flags: ``torch.use_deterministic_algorithms(True)``
makes it deterministic (with the flag off, :func:`cudeform.set_deterministic` decides),
and float32 GEMMs use TF32 exactly when torch's cuBLAS matmuls may
(``torch.backends.cuda.matmul.fp32_precision``, or the older ``allow_tf32``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping, Optional, Union

import numpy
import torch
from torch import Tensor

from cudeform import _arrays, _modes
from cudeform.adapters.torch._allocator import owning_tensor, torch_allocations
from cudeform.adapters.torch._checks import check_tensors

__all__ = ["run_core"]

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def _cuda_stream(device_index: int):
    """torch's current stream on ``device_index`` as a CuPy stream (a context manager)."""
    import cupy

    stream = torch.cuda.current_stream(device_index)
    from_external = getattr(cupy.cuda.Stream, "from_external", None)  # CuPy >= 14
    if from_external is not None and hasattr(stream, "__cuda_stream__"):
        return from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, device_index)


def to_array(tensor: Optional[Tensor], dtype: torch.dtype):
    """A NumPy (CPU) or CuPy (CUDA) view of ``tensor`` in ``dtype`` (a copy only when
    the dtype changes); bfloat16 CUDA tensors as int16 views."""
    if tensor is None:
        return None
    tensor = tensor.detach().to(dtype)
    if tensor.device.type == "cpu":
        return numpy.from_dlpack(tensor)
    import cupy

    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return cupy.from_dlpack(tensor)


def to_tensor(array, dtype: torch.dtype) -> Optional[Tensor]:
    """The C-contiguous tensor of ``array`` (a core output) in ``dtype``."""
    if array is None:
        return None
    if isinstance(array, numpy.ndarray):
        tensor = torch.from_numpy(array)
    else:
        tensor = owning_tensor(array)
        if tensor is None:
            tensor = torch.from_dlpack(array)
        if dtype == torch.bfloat16 and tensor.dtype == torch.int16:
            tensor = tensor.view(torch.bfloat16)
    return tensor.to(dtype).contiguous()


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if device.type == "cpu" and dtype in _SIXTEEN_BIT else dtype


def torch_allows_tf32() -> bool:
    """Whether torch lets its float32 cuBLAS matmuls use TF32 now."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)  # torch >= 2.9
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    # "none" (or an older torch): the legacy flag, which may only be read while the
    # new API is unused, as here.
    return bool(matmul.allow_tf32)


def _torch_modes():
    """The core's modes for one call, from torch's flags."""
    deterministic = True if torch.are_deterministic_algorithms_enabled() else None
    return _modes.override(deterministic=deterministic, allow_tf32=torch_allows_tf32())


@contextlib.contextmanager
def _on_device(device: torch.device, dtype: torch.dtype):
    """The GPU, stream, allocator and bfloat16 context of a call on ``device``; nothing
    on the CPU. CuPy allocates from torch's caching allocator there (one memory pool)."""
    if device.type != "cuda":
        yield
        return
    import cupy

    with cupy.cuda.Device(device.index), _cuda_stream(device.index), \
            torch_allocations(device.index), \
            (_arrays.bfloat16_views() if dtype == torch.bfloat16 else contextlib.nullcontext()):
        yield


def run_core(function: Callable, tensors: Mapping[str, Optional[Tensor]],
             **options) -> Union[Tensor, tuple]:
    """``function(**arrays, **options)`` on views of ``tensors``, as tensors.

    Args:
        function: a public core function, e.g. :func:`cudeform.deform_conv2d`.
        tensors: its array arguments by name (None for an absent optional one); the
            first entry sets the device and dtype, the others must match it.
        options: its other (keyword) arguments.

    Returns:
        The core's result (an array, or a tuple of arrays and Nones) as C-contiguous
        tensors of the inputs' dtype on their device.
    """
    check_tensors(tensors)
    reference = next(t for t in tensors.values() if t is not None)
    dtype = reference.dtype
    compute = _compute_dtype(reference.device, dtype)
    with _on_device(reference.device, compute), _torch_modes():
        result = function(**{k: to_array(t, compute) for k, t in tensors.items()}, **options)
        if isinstance(result, tuple):
            return tuple(to_tensor(a, dtype) for a in result)
        return to_tensor(result, dtype)
