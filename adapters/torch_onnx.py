"""A translation table for ``torch.onnx.export(..., dynamo=True)``: ``cudeform::deform_conv2d``
as the standard ONNX ``DeformConv`` node (opset 19).

It is rarely needed. The functional op and the layers record ``DeformConv`` by
themselves inside ``torch.onnx.export`` (torch 2.8 and later; see
``cudeform/adapters/torch/_onnx.py``), so a plain
``torch.onnx.export(model, (x,), dynamo=True, opset_version=19)`` works. The table
serves models that call ``torch.ops.cudeform.deform_conv2d`` directly, older torch
versions, and code that already passes it::

    from cudeform.adapters.torch_onnx import onnx_translation_table

    torch.onnx.export(model, (x,), "model.onnx", dynamo=True, opset_version=19,
                      custom_translation_table=onnx_translation_table())

The translation holds no math: it maps the op's arguments to ``DeformConv``'s
attributes. The number of weight groups and offset groups is read from the static
shapes of ``weight`` and ``offset``, as cudeform infers them at run time. The RoI
pooling ops have no ONNX counterpart and are not exported.
"""

from __future__ import annotations

from typing import Optional, Sequence, TypeVar

import torch
from onnxscript import DOUBLE, FLOAT, FLOAT16
from onnxscript import opset19 as op

from cudeform.adapters import torch as _ops  # noqa: F401  (registers torch.ops.cudeform)

__all__ = ["onnx_translation_table"]

TFloat = TypeVar("TFloat", FLOAT16, FLOAT, DOUBLE)


def _static_dim(value, axis, name):
    shape = value.shape
    dim = None if shape is None else shape[axis]
    if not isinstance(dim, int):
        raise ValueError(f"{name}.shape[{axis}] is not valid: expected a static size for "
                         f"ONNX DeformConv's attributes, got {dim!r}")
    return dim


def deform_conv2d_to_onnx(
    input: TFloat,
    offset: TFloat,
    weight: TFloat,
    bias: Optional[TFloat],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    mask: Optional[TFloat],
) -> TFloat:
    """``cudeform::deform_conv2d`` as ONNX ``DeformConv`` (opset 19; inputs X, W, offset,
    B, mask)."""
    in_channels = _static_dim(input, 1, "input")
    kh, kw = _static_dim(weight, 2, "weight"), _static_dim(weight, 3, "weight")
    group = in_channels // _static_dim(weight, 1, "weight")
    offset_group = _static_dim(offset, 1, "offset") // (2 * kh * kw)
    pad_h, pad_w = padding
    return op.DeformConv(
        input, weight, offset, bias, mask,
        dilations=list(dilation), group=group, kernel_shape=[kh, kw],
        offset_group=offset_group, pads=[pad_h, pad_w, pad_h, pad_w], strides=list(stride))


def onnx_translation_table() -> dict:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True,
    opset_version=19)``: ``{torch.ops.cudeform.deform_conv2d.default: <DeformConv>}``.

    Example:
        >>> import torch
        >>> from cudeform.adapters.torch_onnx import onnx_translation_table
        >>> list(onnx_translation_table()) == [torch.ops.cudeform.deform_conv2d.default]
        True
    """
    return {torch.ops.cudeform.deform_conv2d.default: deform_conv2d_to_onnx}
