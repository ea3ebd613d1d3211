"""Argument checks of the PyTorch adapter, worded for tensors.

The core checks NumPy and CuPy arrays and words its errors for them. These checks
run first, on the tensors, so that torch users read about tensors, devices and torch
dtypes. Shape errors are left to :mod:`cudeform._shapes`, whose wording is the
contract's; the layer constructors' scalar rules are :mod:`cudeform._layer_arguments`,
shared with the Chainer adapter.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

from cudeform._shapes import check_grad_output


__all__ = ["SUPPORTED_DTYPES", "check_tensors", "checked_call", "require_tensors"]

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
    for name, tensor in present.items():  # an unsupported dtype is named as such, not as a mix
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {tensor.dtype}, which cudeform does not "
                            f"support for tensors; expected one of "
                            f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
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


def checked_call(tensors: Mapping[str, Optional[Tensor]], optional: tuple,
                 geometry_of: Callable):
    """Every check of one op call, run by the real kernels and the fake ones alike,
    before anything is converted (a 16-bit CPU tensor is copied to float32 on its way
    to the core, so a call with the wrong shapes must fail first).

    Args:
        tensors: the op's tensor arguments by name; the first one is the reference.
        optional: the names that may be None.
        geometry_of: the op's geometry from :mod:`cudeform._shapes`, a function of
            ``{name: shape or None}``; a ``grad_output`` must have its output shape.

    Returns:
        The geometry.
    """
    require_tensors(tensors, optional)
    check_tensors(tensors)
    shapes = {name: None if t is None else t.shape for name, t in tensors.items()}
    geometry = geometry_of(shapes)
    if "grad_output" in shapes:
        check_grad_output(shapes["grad_output"], geometry.output_shape)
    return geometry
