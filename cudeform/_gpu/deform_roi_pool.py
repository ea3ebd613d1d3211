"""Host logic of the CUDA deformable RoI pooling (kernels/deform_roi_pool.cu).

Written against an array module ``xp`` and a ``launch`` function, like
:mod:`cudeform._gpu.deform_conv`, so that the tests can run the same kernel source
compiled for the CPU on NumPy arrays. The kernels read the input, RoIs and offsets
directly and write the outputs; the only workspace is the input-gradient scatter's
(:func:`cudeform._gpu.scatter.scatter_by_images`). RoI pooling has no GEMM; its
functions take ``gemm`` only so that every op takes the same engine arguments.
"""

from __future__ import annotations

from cudeform._gpu.launch import index_bits
from cudeform._gpu.scatter import max_abs_bound, scatter_by_images
from cudeform._gpu.signatures import (
    DEFORM_ROI_POOL_BACKWARD_INPUT, DEFORM_ROI_POOL_BACKWARD_OFFSET,
    DEFORM_ROI_POOL_FORWARD,
)


def _shape_args(g):
    return dict(
        batch=g.batch, channels=g.channels, height=g.height, width=g.width, num_rois=g.rois,
        pooled_h=g.pooled_h, pooled_w=g.pooled_w, sampling_ratio=g.sampling_ratio,
        spatial_scale=g.spatial_scale, gamma=g.gamma,
    )


def _index_bits(g):
    # Every buffer the kernels index, and the longest sample window of a bin
    # (at most (size + 1) / step + 3 with step >= 1/2, see sample_window).
    bins = g.rois * g.pooled_h * g.pooled_w
    return index_bits(g.batch * g.channels * g.height * g.width, 5 * g.rois,
                      bins * g.channels, 2 * bins, 2 * max(g.height, g.width) + 5,
                      g.sampling_ratio)


def forward(input, rois, offset, g, *, dtype_name, xp, launch, gemm=None, deterministic=False):
    """``deform_roi_pool`` on C-contiguous arrays of one dtype, validated into ``g``
    (a gather: deterministic in either mode)."""
    output = xp.empty(g.output_shape, dtype=input.dtype)
    launch(DEFORM_ROI_POOL_FORWARD, dtype_name, _index_bits(g), output.size,
           input=input, rois=rois, offset=offset, output=output, **_shape_args(g))
    return output


def backward(grad_output, input, rois, offset, g, *, dtype_name, xp, launch, gemm=None,
             deterministic=False):
    """Gradients ``(input, offset)`` of ``deform_roi_pool``; ``offset``'s is None without one.

    The input gradient is scattered with float atomicAdd into a buffer of the
    accumulation dtype (float32 for 16-bit types) and cast back, or, when
    ``deterministic``, in 64-bit fixed point (:mod:`cudeform._gpu.scatter`), by ranges of
    images whose buffers stay under the workspace limit. The offset
    gradient is summed by one thread per bin, without atomics.
    """
    bits = _index_bits(g)
    args = dict(grad_output=grad_output, rois=rois, offset=offset, **_shape_args(g))
    grad_input = xp.empty(input.shape, dtype=input.dtype)
    # One output's samples weigh at most 1 in all, so an element gets at most
    # max|grad_output| from each of the rois * pooled_h * pooled_w outputs of its channel.
    scatter_by_images(grad_input, (DEFORM_ROI_POOL_BACKWARD_INPUT, grad_output.size, args),
                      max_abs_bound(grad_output), g.rois * g.pooled_h * g.pooled_w,
                      deterministic=deterministic, dtype_name=dtype_name, bits=bits, xp=xp,
                      launch=launch)
    grad_offset = None
    if offset is not None:
        grad_offset = xp.empty(offset.shape, dtype=input.dtype)
        launch(DEFORM_ROI_POOL_BACKWARD_OFFSET, dtype_name, bits, offset.size // 2,
               grad_output=grad_output, input=input, rois=rois, offset=offset,
               grad_offset=grad_offset, **_shape_args(g))
    return grad_input, grad_offset
