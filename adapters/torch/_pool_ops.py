"""The two RoI pooling operators and their backwards as ``torch.library`` custom ops.

Schemas::

    cudeform::deform_roi_pool(Tensor input, Tensor rois, Tensor? offset,
        int[] output_size, float spatial_scale, int sampling_ratio, float gamma) -> Tensor
    cudeform::deform_roi_pool_backward(Tensor grad_output, <the same>) -> (Tensor, Tensor?)
    cudeform::deform_psroi_pool(Tensor input, Tensor rois, Tensor? offset, int output_dim,
        int group_size, int pooled_size, int part_size, int sample_per_part,
        float spatial_scale, float trans_std) -> Tensor
    cudeform::deform_psroi_pool_backward(Tensor grad_output, <the same>) -> (Tensor, Tensor?)

Both share the wiring: inputs ``(input, rois, offset, *options)``, a gradient for
input and offset (None where offset was None), none for ``rois``.
"""

from __future__ import annotations

from typing import Callable

import torch

import cudeform
from cudeform._shapes import deform_psroi_pool_geometry, deform_roi_pool_geometry
from cudeform.adapters.torch._checks import checked_call
from cudeform.adapters.torch._conv_ops import DEVICE_TYPES, empty_like, no_double_backward
from cudeform.adapters.torch._to_core import run_core

__all__ = ["deform_roi_pool_op", "deform_roi_pool_backward_op", "deform_psroi_pool_op",
           "deform_psroi_pool_backward_op"]

_ROI_ARGUMENTS = ("Tensor input, Tensor rois, Tensor? offset, int[] output_size, "
                  "float spatial_scale, int sampling_ratio, float gamma")
_PSROI_ARGUMENTS = ("Tensor input, Tensor rois, Tensor? offset, int output_dim, "
                    "int group_size, int pooled_size, int part_size, int sample_per_part, "
                    "float spatial_scale, float trans_std")


def _roi_options(output_size, spatial_scale, sampling_ratio, gamma) -> dict:
    return dict(output_size=tuple(output_size), spatial_scale=spatial_scale,
                sampling_ratio=sampling_ratio, gamma=gamma)


def _psroi_options(output_dim, group_size, pooled_size, part_size, sample_per_part,
                   spatial_scale, trans_std) -> dict:
    return dict(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                part_size=part_size, sample_per_part=sample_per_part,
                spatial_scale=spatial_scale, trans_std=trans_std)


def _define_pool(name: str, arguments: str, options_of: Callable, geometry: Callable,
                 forward: Callable, backward: Callable):
    """Register ``cudeform::<name>`` and ``cudeform::<name>_backward`` with fakes and
    autograd; return both ops."""

    def checked(tensors, options):
        """Every check of a call, on the (possibly symbolic) sizes, before any
        conversion; the real kernels and the fakes run it first."""
        return checked_call(tensors, ("offset",), lambda s: geometry(
            s["input"], s["rois"], s["offset"], **options_of(*options)))

    def forward_impl(input, rois, offset, *options):
        tensors = dict(input=input, rois=rois, offset=offset)
        checked(tensors, options)
        return run_core(forward, tensors, **options_of(*options))

    def backward_impl(grad_output, input, rois, offset, *options):
        tensors = dict(input=input, rois=rois, offset=offset, grad_output=grad_output)
        checked(tensors, options)
        return run_core(backward, tensors, **options_of(*options))

    forward_op = torch.library.custom_op(
        f"cudeform::{name}", forward_impl, mutates_args=(), device_types=DEVICE_TYPES,
        schema=f"({arguments}) -> Tensor")
    backward_op = torch.library.custom_op(
        f"cudeform::{name}_backward", backward_impl, mutates_args=(),
        device_types=DEVICE_TYPES,
        schema=f"(Tensor grad_output, {arguments}) -> (Tensor, Tensor?)")

    def fake_forward(input, rois, offset, *options):
        g = checked(dict(input=input, rois=rois, offset=offset), options)
        return input.new_empty(g.output_shape)

    def fake_backward(grad_output, input, rois, offset, *options):
        checked(dict(input=input, rois=rois, offset=offset, grad_output=grad_output), options)
        return empty_like(input), empty_like(offset)

    def setup_context(ctx, inputs, output):
        input, rois, offset, *options = inputs
        ctx.save_for_backward(input, rois, offset)
        ctx.options = options

    def autograd_backward(ctx, grad_output):
        input, rois, offset = ctx.saved_tensors
        grad_input, grad_offset = backward_op(grad_output, input, rois, offset, *ctx.options)
        return (grad_input, None, grad_offset) + (None,) * len(ctx.options)

    forward_op.register_fake(fake_forward)
    backward_op.register_fake(fake_backward)
    forward_op.register_autograd(autograd_backward, setup_context=setup_context)
    backward_op.register_autograd(no_double_backward(f"{name}_backward"))
    return forward_op, backward_op


deform_roi_pool_op, deform_roi_pool_backward_op = _define_pool(
    "deform_roi_pool", _ROI_ARGUMENTS, _roi_options, deform_roi_pool_geometry,
    cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward)
deform_psroi_pool_op, deform_psroi_pool_backward_op = _define_pool(
    "deform_psroi_pool", _PSROI_ARGUMENTS, _psroi_options, deform_psroi_pool_geometry,
    cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward)
