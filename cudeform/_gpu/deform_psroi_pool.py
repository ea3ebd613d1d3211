"""Host logic of the CUDA deformable position-sensitive RoI pooling.

Written against an array module ``xp`` and a ``launch`` function, like
:mod:`cudeform._gpu.deform_conv`, so that the tests can drive the same kernel
source compiled for the CPU on NumPy arrays. Every kernel reads the RoIs and
offsets directly; the only workspace is the input-gradient scatter's, chunked by
images (:func:`cudeform._gpu.scatter.scatter_by_images`). There is no
GEMM either; ``gemm`` is taken only so that every op takes the same engine arguments.
"""

from __future__ import annotations

from cudeform._gpu.launch import index_bits
from cudeform._gpu.scatter import max_abs_bound, scatter_by_images
from cudeform._gpu.signatures import (
    DEFORM_PSROI_POOL_BACKWARD_INPUT, DEFORM_PSROI_POOL_BACKWARD_OFFSET,
    DEFORM_PSROI_POOL_FORWARD,
)


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


def forward(input, rois, offset, g, *, dtype_name, xp, launch, gemm=None, deterministic=False):
    """``deform_psroi_pool`` on C-contiguous arrays of one dtype, validated into ``g``
    (a gather: deterministic in either mode)."""
    output = xp.empty(g.output_shape, dtype=input.dtype)
    launch(DEFORM_PSROI_POOL_FORWARD, dtype_name, _bits(g, input, rois, offset), output.size,
           input=input, rois=rois, offset=offset, output=output, **_shape_args(g))
    return output


def backward(grad_output, input, rois, offset, g, *, dtype_name, xp, launch, gemm=None,
             deterministic=False):
    """Gradients ``(input, offset)`` of ``deform_psroi_pool``; ``offset``'s is None without one.

    The input gradient is scattered with float atomicAdd into a buffer of the
    accumulation dtype (float32 for 16-bit types) and cast back, or, when
    ``deterministic``, in 64-bit fixed point (:mod:`cudeform._gpu.scatter`), by ranges of
    images whose buffers stay under the workspace limit. The
    offset gradient is gathered, one thread per offset pair, deterministically.
    """
    bits = _bits(g, input, rois, offset)
    args = dict(grad_output=grad_output, rois=rois, offset=offset, **_shape_args(g))
    grad_input = xp.empty(input.shape, dtype=input.dtype)
    # One output's samples weigh at most 1 in all, so an element gets at most
    # max|grad_output| from each of the rois * pooled_size**2 outputs that can read its
    # channel.
    scatter_by_images(grad_input, (DEFORM_PSROI_POOL_BACKWARD_INPUT, grad_output.size, args),
                      max_abs_bound(grad_output), g.rois * g.pooled_size**2,
                      deterministic=deterministic, dtype_name=dtype_name, bits=bits, xp=xp,
                      launch=launch)
    grad_offset = None
    if offset is not None:
        grad_offset = xp.empty(offset.shape, dtype=input.dtype)
        launch(DEFORM_PSROI_POOL_BACKWARD_OFFSET, dtype_name, bits,
               g.rois * g.num_classes * g.part_size * g.part_size,
               grad_output=grad_output, input=input, rois=rois, offset=offset,
               grad_offset=grad_offset, **_shape_args(g))
    return grad_input, grad_offset
