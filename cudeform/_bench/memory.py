"""Peak extra memory of one call: what it allocates on top of what existed before.

- ``"tracemalloc"``: NumPy reports its data buffers to tracemalloc, so this sees
  cudeform's NumPy path and Chainer on NumPy (onnxruntime's and torch's CPU
  allocations are invisible to it).
- ``"cupy"``: a ``cupy.cuda.MemoryHook`` that adds up what is taken from and given
  back to CuPy's memory pool (bytes in use, not bytes the pool reserves).
- ``"torch"``: torch's caching allocator, ``max_memory_allocated`` minus what was
  allocated before the call.
- ``"cupy+torch"``: cudeform's PyTorch adapter on CUDA, whose outputs and
  workspaces come from torch's allocator (as do the gradient of ones and autograd's
  buffers); CuPy's pool is counted too, in case anything still lands there. The two
  peaks are added, an upper bound: they need not happen at the same moment.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
import tracemalloc

MIB = 1024 * 1024


def peak_bytes(kind, function, sync):
    """Peak extra bytes of ``function()`` seen by ``kind``, or None when ``kind`` is None."""
    if kind is None:
        return None
    gc.collect()
    measure = {"tracemalloc": _tracemalloc_peak, "cupy": _cupy_peak, "torch": _torch_peak,
               "cupy+torch": _cupy_and_torch_peak}[kind]
    return measure(function, sync)


def _tracemalloc_peak(function, sync):
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = function()
        sync()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        if started:
            tracemalloc.stop()
    return max(0, peak - base)


@functools.lru_cache(maxsize=None)
def _peak_hook_class():
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        """Bytes taken from CuPy's pool while registered, current and peak. Blocks
        taken before registration do not count when they are given back."""

        def __init__(self):
            self.name = f"cudeform-bench-peak-{id(self)}"
            self.current = 0
            self.peak = 0
            self._sizes = {}
            self._lock = threading.Lock()

        def malloc_postprocess(self, **kwargs):
            if kwargs.get("mem_ptr"):
                with self._lock:
                    self._sizes[kwargs["mem_ptr"]] = kwargs["mem_size"]
                    self.current += kwargs["mem_size"]
                    self.peak = max(self.peak, self.current)

        def free_postprocess(self, **kwargs):
            with self._lock:
                self.current -= self._sizes.pop(kwargs.get("mem_ptr"), 0)

    return PeakHook


def cupy_peak_hook():
    """A new ``cupy.cuda.MemoryHook`` with ``current`` and ``peak`` bytes."""
    return _peak_hook_class()()


def _cupy_peak(function, sync, autograd_thread=False):
    hook = cupy_peak_hook()
    with _registered(hook, autograd_thread):
        sync()
        result = function()
        sync()
        del result
    return hook.peak


def _torch_peak(function, sync):
    import torch

    sync()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = function()
    sync()
    peak = torch.cuda.max_memory_allocated()
    del result
    return max(0, peak - base)


def _cupy_and_torch_peak(function, sync):
    hook = cupy_peak_hook()
    with _registered(hook, autograd_thread=True):
        torch_bytes = _torch_peak(function, sync)
    return hook.peak + torch_bytes


@contextlib.contextmanager
def _registered(hook, autograd_thread):
    """Register ``hook`` in this thread and, if asked, in torch's CUDA autograd thread:
    CuPy's hooks are thread-local, and torch runs the backward of CUDA tensors
    (cudeform's backward among them) on a worker thread of its own."""
    with hook:
        there = autograd_thread and in_autograd_thread(hook.__enter__)
        try:
            yield hook
        finally:
            if there:
                in_autograd_thread(hook.__exit__)


def in_autograd_thread(action, device="cuda"):
    """Call ``action()`` on the thread where torch runs backward nodes of ``device``
    tensors, if that is not this thread. True when it did."""
    import torch

    caller = threading.get_ident()
    ran = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor):
            return tensor.clone()

        @staticmethod
        def backward(ctx, grad):
            if threading.get_ident() != caller:
                action()
                ran.append(True)
            return grad

    leaf = torch.zeros(1, device=device, requires_grad=True)
    Probe.apply(leaf).sum().backward()
    return bool(ran)
