"""One memory pool with torch: the core's CuPy allocations taken from torch's caching
allocator while it runs on CUDA tensors.

Inside :func:`torch_allocations`, every CuPy allocation of this thread (the core's
workspaces and outputs) is a ``torch.empty`` byte tensor on the tensors' device, made
on torch's current stream there, which is the stream the core launches on. So torch
reuses those blocks, ``torch.cuda.max_memory_allocated`` counts them, and CuPy's own
pool is not touched. A block goes back to torch when the last CuPy array on it dies
(the :class:`TorchBlock` holds the byte tensor). Outside the context (plain CuPy
calls), CuPy's allocator is unchanged.

:func:`owning_tensor` turns a core output that fills its block exactly into a view of
that torch tensor, so the tensor handed back owns torch-allocated storage
(``record_stream`` and the memory statistics work on it as on any tensor).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch


@functools.lru_cache(maxsize=None)
def block_class():
    """The class of CuPy memory that a torch byte tensor owns (made on first use, so
    that importing this module needs no CuPy)."""
    import cupy

    class TorchBlock(cupy.cuda.UnownedMemory):
        """CuPy memory owned by the torch byte tensor ``tensor``, which it keeps alive."""

    return TorchBlock


def torch_allocator(device_index: int, empty=None):
    """A CuPy allocator (``size -> cupy.cuda.MemoryPointer``) that takes each block
    from torch's caching allocator on GPU ``device_index``.

    Args:
        device_index: the CUDA device of the blocks.
        empty: ``torch.empty`` (tests pass a fake).
    """
    import cupy

    empty = torch.empty if empty is None else empty
    device = torch.device("cuda", device_index)
    block_type = block_class()

    def allocate(size):
        tensor = empty((size,), dtype=torch.uint8, device=device)
        block = block_type(tensor.data_ptr(), size, tensor, device_index)
        block.tensor = tensor
        return cupy.cuda.MemoryPointer(block, 0)

    allocate.device_index = device_index
    return allocate


@contextlib.contextmanager
def torch_allocations(device_index: int):
    """Within this context (this thread), CuPy allocates from torch on ``device_index``."""
    import cupy

    with cupy.cuda.using_allocator(torch_allocator(device_index)):
        yield


def owning_tensor(array) -> Optional[torch.Tensor]:
    """The torch tensor that owns exactly the memory of ``array`` (a C-contiguous CuPy
    array from :func:`torch_allocator`), viewed with its dtype and shape; None for any
    other array (a view of part of a block, CuPy's own memory, an empty array)."""
    block = array.data.mem
    if not isinstance(block, block_class()) or not array.flags.c_contiguous:
        return None
    if array.data.ptr != block.ptr or array.nbytes != block.size or array.size == 0:
        return None
    dtype = getattr(torch, array.dtype.name, None)
    if not isinstance(dtype, torch.dtype):
        return None
    return block.tensor.view(dtype).view(array.shape)
