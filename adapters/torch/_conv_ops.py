"""``cudeform::deform_conv2d`` and its backward as ``torch.library`` custom ops.

Schemas (the ONNX translation in ``torch_onnx.py`` depends on the first)::

    cudeform::deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? bias,
        int[] stride, int[] padding, int[] dilation, Tensor? mask) -> Tensor
    cudeform::deform_conv2d_backward(Tensor grad_output, <the same>)
        -> (Tensor, Tensor, Tensor, Tensor?, Tensor?)

The backward's optional outputs (bias, mask) are None exactly where the forward's
inputs were. The fake kernels run :mod:`cudeform._shapes` on the (possibly symbolic)
sizes and return C-contiguous tensors, as the real kernels do.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

import cudeform
from cudeform._shapes import ConvGeometry, deform_conv2d_geometry
from cudeform.adapters.torch._checks import checked_call
from cudeform.adapters.torch._to_core import run_core

__all__ = ["DEVICE_TYPES", "deform_conv2d_op", "deform_conv2d_backward_op", "empty_like",
           "no_double_backward"]

DEVICE_TYPES = ("cpu", "cuda")
_ARGUMENTS = ("Tensor input, Tensor offset, Tensor weight, Tensor? bias, int[] stride, "
              "int[] padding, int[] dilation, Tensor? mask")


def empty_like(tensor: Optional[Tensor]) -> Optional[Tensor]:
    """A C-contiguous empty tensor of ``tensor``'s shape, dtype and device (the real
    kernels' layout), whatever ``tensor``'s memory format."""
    return None if tensor is None else tensor.new_empty(tensor.shape)


def no_double_backward(name: str):
    """The autograd formula of a backward op: differentiating it raises."""
    def backward(ctx, *grads):
        raise RuntimeError(f"cudeform::{name}: the backward is first order; "
                           "double backward is not supported")
    return backward


def _options(stride, padding, dilation) -> dict:
    return dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation))


@torch.library.custom_op("cudeform::deform_conv2d", mutates_args=(),
                         device_types=DEVICE_TYPES, schema=f"({_ARGUMENTS}) -> Tensor")
def deform_conv2d_op(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                     stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                     mask: Optional[Tensor]) -> Tensor:
    tensors = dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    conv_geometry(tensors, stride, padding, dilation)
    return run_core(cudeform.deform_conv2d, tensors, **_options(stride, padding, dilation))


@torch.library.custom_op(
    "cudeform::deform_conv2d_backward", mutates_args=(), device_types=DEVICE_TYPES,
    schema=f"(Tensor grad_output, {_ARGUMENTS}) -> (Tensor, Tensor, Tensor, Tensor?, Tensor?)")
def deform_conv2d_backward_op(grad_output, input, offset, weight, bias, stride, padding,
                              dilation, mask):
    tensors = dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask,
                   grad_output=grad_output)
    conv_geometry(tensors, stride, padding, dilation)
    return run_core(cudeform.deform_conv2d_backward, tensors,
                    **_options(stride, padding, dilation))


def conv_geometry(tensors: dict, stride, padding, dilation) -> ConvGeometry:
    """Every check of a call (``tensors``: input, offset, weight, bias, mask and, for
    the backward, grad_output) and its geometry, on the tensors' (possibly symbolic)
    sizes; the real kernels and the fakes run it first."""
    def geometry(s):
        return deform_conv2d_geometry(s["input"], s["offset"], s["weight"], s["bias"],
                                      s["mask"], **_options(stride, padding, dilation))

    return checked_call(tensors, ("bias", "mask"), geometry)


@deform_conv2d_op.register_fake
def _(input, offset, weight, bias, stride, padding, dilation, mask):
    g = conv_geometry(dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask),
                      stride, padding, dilation)
    return input.new_empty(g.output_shape)


@deform_conv2d_backward_op.register_fake
def _(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
    conv_geometry(dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask,
                       grad_output=grad_output), stride, padding, dilation)
    return tuple(empty_like(t) for t in (input, offset, weight, bias, mask))


def _setup_context(ctx, inputs, output):
    input, offset, weight, bias, stride, padding, dilation, mask = inputs
    ctx.save_for_backward(input, offset, weight, bias, mask)
    ctx.options = (stride, padding, dilation)


def _backward(ctx, grad_output):
    input, offset, weight, bias, mask = ctx.saved_tensors
    grad_input, grad_offset, grad_weight, grad_bias, grad_mask = deform_conv2d_backward_op(
        grad_output, input, offset, weight, bias, *ctx.options, mask)
    return grad_input, grad_offset, grad_weight, grad_bias, None, None, None, grad_mask


deform_conv2d_op.register_autograd(_backward, setup_context=_setup_context)
deform_conv2d_backward_op.register_autograd(no_double_backward("deform_conv2d_backward"))
