"""Host logic of the fused forward of ``deform_conv2d`` (kernels/deform_conv_fused.cu):
one launch over the whole batch, no column buffer and no workspace.

Block ``(x, y, z)`` of the grid computes ``tile.block_m`` output pixels (numbered across
the images), ``tile.block_n`` output channels of weight group ``z``. Written against an
array module ``xp`` and a ``launch`` function, as :mod:`cudeform._gpu.deform_conv` is, so
that the host tests run the same code in the block emulator on NumPy arrays.
"""

from __future__ import annotations

from cudeform._gpu import fused_tiles
from cudeform._gpu.launch import index_bits
from cudeform._gpu.signatures import DEFORM_CONV_FUSED

# CUDA's limit on the y and z sizes of a grid.
_GRID_YZ_LIMIT = 65535


def kernel(tile, math):
    """The instantiation of ``tile`` with ``math`` ("tensor" or "simt")."""
    return DEFORM_CONV_FUSED[(tile, math)]


def grid(g, tile):
    """Blocks along the pixels of every image, the output channels of a group, the groups."""
    pixels = g.batch * g.out_h * g.out_w
    return (-(-pixels // tile.block_m),
            -(-(g.out_channels // g.groups) // tile.block_n), g.groups)


def launch_bits(g):
    """The index width of the launch: 32 while every array's size fits."""
    plane = g.out_h * g.out_w
    return index_bits(g.batch * g.in_channels * g.height * g.width,
                      g.batch * 2 * g.offset_groups * g.taps * plane,
                      g.out_channels * (g.in_channels // g.groups) * g.taps,
                      g.batch * g.out_channels * plane)


def why_not(tile, g, dtype_name, math, arch):
    """Why ``tile`` with ``math`` cannot run the convolution ``g`` in ``dtype_name`` on a
    device of compute capability ``arch`` (e.g. 90; None: any), or None when it can."""
    reason = fused_tiles.why_not_built(tile, math, dtype_name)
    if reason is not None:
        return reason
    if arch is not None and arch < fused_tiles.MIN_ARCH:
        return (f"needs compute capability {fused_tiles.MIN_ARCH / 10:.1f} or newer (WMMA "
                f"with bfloat16 and TF32), the device has {arch / 10:.1f}")
    _, channel_tiles, groups = grid(g, tile)
    if max(channel_tiles, groups) > _GRID_YZ_LIMIT:
        return (f"its grid needs {channel_tiles} x {groups} blocks along y x z, over CUDA's "
                f"{_GRID_YZ_LIMIT}")
    return None


def forward(input, offset, weight, bias, mask, g, *, tile, math, dtype_name, xp, launch):
    """``deform_conv2d`` on C-contiguous arrays of one dtype, validated into ``g``, with
    the fused kernel of ``tile`` and ``math`` (which :func:`why_not` has accepted).

    Deterministic: every output is one fixed-order sum. 16-bit types (bfloat16 views
    included) round each sample to their type, multiply exactly and sum in float32.
    """
    output = xp.empty(g.output_shape, dtype=input.dtype)
    launch(kernel(tile, math), dtype_name, launch_bits(g), grid(g, tile), input=input,
           offset=offset, mask=mask, weight=weight, bias=bias, output=output,
           batch=g.batch, channels=g.in_channels, height=g.height, width=g.width,
           kernel_h=g.kernel_h, kernel_w=g.kernel_w, pad_h=g.pad_h, pad_w=g.pad_w,
           stride_h=g.stride_h, stride_w=g.stride_w, dilation_h=g.dilation_h,
           dilation_w=g.dilation_w, out_h=g.out_h, out_w=g.out_w,
           offset_groups=g.offset_groups, out_channels=g.out_channels, groups=g.groups)
    return output
