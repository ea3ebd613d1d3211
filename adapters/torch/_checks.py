"""Argument checks of the PyTorch adapter, worded for tensors.

The core checks NumPy and CuPy arrays and words its errors for them. These checks
run first, on the tensors, so that torch users read about tensors, devices and torch
dtypes. Shape errors are left to :mod:`cudeform._shapes`, whose wording is the
contract's; the layer constructors reuse its rules for their scalar arguments.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor

from cudeform._shapes import _finite_float, _positive_float, _positive_int, pair

__all__ = [
    "SUPPORTED_DTYPES", "check_tensors", "divisor", "finite_float", "non_negative_int",
    "pair", "positive_float", "positive_int", "require_tensors",
]

# float16 and bfloat16 CPU tensors compute in float32 on the NumPy path.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _type_name(value: object) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"


def require_tensors(arguments: Mapping[str, object], optional: tuple = ()) -> None:
    """A short TypeError unless each argument is a ``torch.Tensor`` (or None, for the
    names in ``optional``); without it a NumPy array or a list would reach the
    dispatcher and end in a long schema error."""
    for name, value in arguments.items():
        if value is None and name in optional:
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(value)}")


def check_tensors(tensors: Mapping[str, Optional[Tensor]]) -> None:
    """One device and one supported dtype for ``tensors`` (a dict by argument name; the
    first entry is the reference).

    Raises:
        TypeError: tensors on different kinds of device, different dtypes, or a dtype
            cudeform does not support.
        ValueError: CUDA tensors on different GPUs.
    """
    present = {name: t for name, t in tensors.items() if t is not None}
    first = next(iter(present))
    reference = present[first]
    for name, tensor in present.items():
        if tensor.device.type != reference.device.type:
            raise TypeError(f"{name} is on {tensor.device} but {first} is on "
                            f"{reference.device}; pass tensors on one device")
        if tensor.device != reference.device:
            raise ValueError(f"{name} is on {tensor.device} but {first} is on "
                             f"{reference.device}; pass tensors on one device")
        if tensor.dtype != reference.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype} but {first} has dtype "
                            f"{reference.dtype}; pass tensors of one dtype")
    if reference.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{first} has dtype {reference.dtype}, which cudeform does not "
                        f"support; expected one of "
                        f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")


# --- scalar arguments of the layer constructors (the core's rules and wording) ----------


def positive_int(value: int, name: str) -> int:
    """``value`` as an int >= 1, else ValueError naming ``name``."""
    return _positive_int(value, name)


def non_negative_int(value: int, name: str) -> int:
    """``value`` as an int >= 0, else ValueError naming ``name``."""
    return _positive_int(value, name, minimum=0)


def positive_float(value: float, name: str) -> float:
    """``value`` as a finite float > 0, else ValueError naming ``name``."""
    return _positive_float(value, name)


def finite_float(value: float, name: str) -> float:
    """``value`` as a finite float, else ValueError naming ``name``."""
    return _finite_float(value, name)


def divisor(value: int, name: str, **multiples: int) -> int:
    """``value`` as a positive int dividing every one of ``multiples`` (by name)."""
    value = positive_int(value, name)
    if any(m % value for m in multiples.values()):
        named = " and ".join(f"{k}={m}" for k, m in multiples.items())
        raise ValueError(f"{name} is not valid: expected a divisor of {named}, got {value}")
    return value
