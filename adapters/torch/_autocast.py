"""Autocast rules of the custom ops: run in the autocast dtype, on the CPU as on CUDA.

Under ``torch.autocast(device_type)`` every floating input of an op on that device is
cast to ``torch.get_autocast_dtype(device_type)`` (float16 or bfloat16), as autocast
does for ``conv2d``, so a layer's output stays in the autocast dtype. CUDA kernels
accumulate in float32; on the CPU the 16-bit tensors are computed in float32 by the
NumPy path (see ``_to_core.py``). ``rois`` is floating too and is cast with the rest.

``torch.library.register_autocast`` takes one fixed dtype, so these rules, which
read the autocast dtype at call time, are registered the same way by hand: a kernel
on the ``Autocast<Device>`` dispatch key that casts and redispatches below it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["register_autocast"]

_LIBRARY = torch.library.Library("cudeform", "FRAGMENT")


def _register(op, device_type: str) -> None:
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def cast(value, dtype):
        if isinstance(value, Tensor) and value.is_floating_point() \
                and value.device.type == device_type:
            return value.to(dtype)
        return value

    def kernel(keyset, *args):
        dtype = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op._opoverload(*(cast(a, dtype) for a in args))

    _LIBRARY.impl(op._name, kernel, key, with_keyset=True)


def register_autocast(ops) -> None:
    """Register the CPU and CUDA autocast rules of each custom op in ``ops``."""
    for op in ops:
        for device_type in ("cpu", "cuda"):
            _register(op, device_type)
