"""Where one unit of a network of stacked deformable layers samples the image.

A unit of the top layer at ``(ho, wo)`` samples the map below at its regular grid
plus its learned offsets. Each of those points is a fractional position on that
map, whose own layer reads its offsets there (bilinearly) and samples the map below
it, and so on: two 3x3 layers give 81 points. Scaled by the feature stride, they are
image pixels. With zero offsets the same walk gives a plain network's regular grid,
as in figure 5 of Dai et al. 2017.
"""

from __future__ import annotations

import numpy
import torch

from cudeform._cpu.bilinear import clamped_corners
from cudeform._cpu.deform_conv import grid_positions
from cudeform._shapes import deform_conv2d_geometry


@torch.no_grad()
def layer_offsets(net, layer_names, images, device):
    """Offsets ``(n, 2*kh*kw, H_out, W_out)`` predicted by each named ``DeformConv2dPack``."""
    captured = {}
    hooks = [getattr(net, name).conv_offset.register_forward_hook(
        lambda module, inputs, output, name=name: captured.__setitem__(name, output.cpu()))
        for name in layer_names]
    try:
        net.to(device).eval()
        net(torch.from_numpy(images).to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return [captured[name].numpy().astype(numpy.float64) for name in layer_names]


def _geometry(conv, offset):
    n, _, height, width = offset.shape  # stride 1 and same padding: input size = output size
    return deform_conv2d_geometry((n, conv.in_channels, height, width), offset.shape,
                                  tuple(conv.weight.shape), stride=conv.stride,
                                  padding=conv.padding, dilation=conv.dilation)


def _offsets_at(offset, y, x):
    """Offsets ``(n, m, taps, 2)`` read bilinearly (clamped to the map) at ``(y, x) (n, m)``."""
    n, channels, height, width = offset.shape
    corners = clamped_corners(y, x, height, width)
    flat = offset.reshape(n, 1, channels, height * width)
    values = sum(numpy.take_along_axis(flat, corners.index[q][:, :, None, None], axis=3)[..., 0]
                 * corners.weight[q][:, :, None] for q in range(4))
    return values.reshape(n, y.shape[1], channels // 2, 2)


def sampling_points(convs, offsets, units, feature_stride):
    """Image positions ``(n, points, 2)`` (y, x) that top units ``units (n, 2)`` sample.

    Args:
        convs: the stacked layers, bottom first (each a ``DeformConv2d`` or
            ``nn.Conv2d`` with one offset group, stride 1, output size = input size).
        offsets: their offsets, bottom first, ``(n, 2*kh*kw, H, W)`` (zeros for a
            plain layer).
        units: ``(ho, wo)`` of one unit of the top layer per image.
        feature_stride: image pixels per step of the bottom layer's input map.
    """
    y = numpy.asarray(units, dtype=numpy.float64)[:, None, 0]
    x = numpy.asarray(units, dtype=numpy.float64)[:, None, 1]
    for conv, offset in reversed(list(zip(convs, offsets))):
        base_y, base_x = grid_positions(_geometry(conv, offset), y, x, numpy.float64)
        moved = _offsets_at(offset, y, x)
        y = (base_y + moved[..., 0]).reshape(len(y), -1)
        x = (base_x + moved[..., 1]).reshape(len(x), -1)
    return numpy.stack([y, x], axis=-1) * feature_stride


def spread(points):
    """Root-mean-square distance of each image's points from their mean, ``(n,)``."""
    centred = points - points.mean(axis=1, keepdims=True)
    return numpy.sqrt((centred**2).sum(axis=2).mean(axis=1))
