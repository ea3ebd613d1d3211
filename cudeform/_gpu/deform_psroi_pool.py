"""Host logic of the CUDA deformable position-sensitive RoI pooling.

Written against an array module ``xp`` and a ``launch`` function, like
:mod:`cudeform._gpu.deform_conv`, so that the tests can drive the same kernel
source compiled for the CPU on NumPy arrays. No workspace is needed: every
kernel reads the RoIs and offsets directly, so there is no chunking.
"""

from __future__ import annotations

from cudeform._gpu.launch import index_bits
from cudeform._gpu.signatures import (
    ACCUMULATE_DTYPES, DEFORM_PSROI_POOL_BACKWARD_INPUT, DEFORM_PSROI_POOL_BACKWARD_OFFSET,
    DEFORM_PSROI_POOL_FORWARD,
)
from cudeform._gpu.storage import narrow


def _shape_args(g):
    return dict(
        batch=g.batch, channels=g.channels, height=g.height, width=g.width, num_rois=g.rois,
        output_dim=g.output_dim, group_size=g.group_size, pooled_size=g.pooled_size,
        part_size=g.part_size, sample_per_part=g.sample_per_part, num_classes=g.num_classes,
        spatial_scale=g.spatial_scale, trans_std=g.trans_std,
    )


def _bits(g, input, rois, offset):
    """Index width for every buffer of the call (the output and its gradient included)."""
    output_size = g.rois * g.output_dim * g.pooled_size * g.pooled_size
    return index_bits(input.size, rois.size, output_size, 0 if offset is None else offset.size)


def forward(input, rois, offset, g, *, dtype_name, xp, launch):
    """``deform_psroi_pool`` on C-contiguous arrays of one dtype, validated into ``g``."""
    output = xp.empty(g.output_shape, dtype=input.dtype)
    launch(DEFORM_PSROI_POOL_FORWARD, dtype_name, _bits(g, input, rois, offset), output.size,
           input=input, rois=rois, offset=offset, output=output, **_shape_args(g))
    return output


def backward(grad_output, input, rois, offset, g, *, dtype_name, xp, launch):
    """Gradients ``(input, offset)`` of ``deform_psroi_pool``; ``offset``'s is None without one.

    The input gradient is scattered with atomicAdd into a buffer of the
    accumulation dtype (float32 for 16-bit types), cast back at the end; the
    offset gradient is gathered, one thread per offset pair, deterministically.
    """
    bits = _bits(g, input, rois, offset)
    accumulate = xp.dtype(ACCUMULATE_DTYPES[dtype_name])
    grad_input = xp.zeros(input.shape, dtype=accumulate)
    launch(DEFORM_PSROI_POOL_BACKWARD_INPUT, dtype_name, bits, grad_output.size,
           grad_output=grad_output, rois=rois, offset=offset, grad_input=grad_input,
           **_shape_args(g))
    grad_offset = None
    if offset is not None:
        grad_offset = xp.empty(offset.shape, dtype=input.dtype)
        launch(DEFORM_PSROI_POOL_BACKWARD_OFFSET, dtype_name, bits,
               g.rois * g.num_classes * g.part_size * g.part_size,
               grad_output=grad_output, input=input, rois=rois, offset=offset,
               grad_offset=grad_offset, **_shape_args(g))
    return narrow(grad_input, input.dtype, dtype_name, xp), grad_offset
