"""What the functional ops become inside ``torch.onnx.export(..., dynamo=True)``.

Inside that export :func:`deform_conv2d_node` stands in for ``cudeform::deform_conv2d``:
``torch.onnx.ops.symbolic`` (torch 2.8 and later) records the standard ONNX
``DeformConv`` (opset 19) with the output's shape from :mod:`cudeform._shapes`,
symbolic sizes included, so a dynamic batch and dynamic spatial sizes export with no
translation table. ``DeformConv``'s offset layout, mask and border rule are
cudeform's. The RoI pooling ops have no ONNX operator: :func:`refuse_export` says so
during an export.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from cudeform.adapters.torch._conv_ops import conv_geometry

try:  # the dynamo exporter's own flag (private to torch), see _dynamo_exporter_running
    from torch.onnx._internal.exporter import _flags as _exporter_flags
except ImportError:
    _exporter_flags = None

__all__ = ["OPSET", "deform_conv2d_node", "exporting_to_onnx", "in_onnx_export",
           "refuse_export"]

OPSET = 19  # the first opset with DeformConv


def _dynamo_exporter_running() -> bool:
    """True inside ``torch.onnx.export(..., dynamo=True)`` (the exporter's own flag),
    also while dynamo traces the model for it, where ``torch.onnx.is_in_onnx_export()``
    is folded to False."""
    if _exporter_flags is None:
        return torch.onnx.is_in_onnx_export()
    return bool(getattr(_exporter_flags, "_is_onnx_exporting", False))


def in_onnx_export() -> bool:
    """True inside any ``torch.onnx.export``, the TorchScript-based one included."""
    return torch.onnx.is_in_onnx_export() or _dynamo_exporter_running()


def exporting_to_onnx() -> bool:
    """True inside ``torch.onnx.export(..., dynamo=True)`` when this torch can record ONNX
    nodes itself (``torch.onnx.ops.symbolic``). The TorchScript-based exporter
    (``dynamo=False``) traces sizes as tensors and is left the custom op, which it
    cannot translate."""
    return _dynamo_exporter_running() and hasattr(getattr(torch.onnx, "ops", None),
                                                  "symbolic")


def _static(value, name: str) -> int:
    if not isinstance(value, int):
        raise ValueError(f"{name} is not valid: ONNX DeformConv takes it as an attribute, "
                         f"so it must be static; got the symbolic size {value}")
    return value


def deform_conv2d_node(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                       stride: Sequence[int], padding: Sequence[int],
                       dilation: Sequence[int], mask: Optional[Tensor]) -> Tensor:
    """ONNX ``DeformConv(X, W, offset, B, mask)`` with the attributes of the call."""
    g = conv_geometry(dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask),
                      stride, padding, dilation)
    attributes = dict(
        dilations=[g.dilation_h, g.dilation_w],
        group=_static(g.groups, "groups (input.shape[1] // weight.shape[1])"),
        kernel_shape=[g.kernel_h, g.kernel_w],
        offset_group=_static(g.offset_groups, "offset groups (offset.shape[1] // (2*kh*kw))"),
        pads=[g.pad_h, g.pad_w, g.pad_h, g.pad_w],
        strides=[g.stride_h, g.stride_w])
    return torch.onnx.ops.symbolic("DeformConv", [input, weight, offset, bias, mask],
                                   attributes, dtype=input.dtype, shape=g.output_shape,
                                   version=OPSET)


def refuse_export(op_name: str, what: str) -> None:
    """Inside ``torch.onnx.export``, raise: ONNX has no operator for ``op_name``."""
    if not in_onnx_export():
        return
    raise RuntimeError(f"cudeform::{op_name} cannot be exported to ONNX: ONNX has no "
                       f"{what} operator (of cudeform's ops, only deform_conv2d exports, "
                       f"as DeformConv). Export the part of the model before it (e.g. the "
                       f"backbone) and run the pooling in PyTorch.")
