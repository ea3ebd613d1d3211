"""The order of the GEMM's reduction axis K = (C_in/groups) x taps, chosen per call.

The convolution's GEMM multiplies the weight, viewed as ``(groups, C_out/groups,
K)``, by each block's columns. In the weight's natural layout
``(C_out, C_in/groups, kh, kw)`` K is channel-major (channel, tap). The gather
produces tap-major columns: one row of channels per (pixel, tap). One side has
to be rearranged for BLAS: either the weight, once per call (``C_out * K``
elements), or the columns of every block (``pixels * groups * K`` elements in
all, spread over the workers). The smaller one is rearranged: the weight for
layers with many output pixels, the columns for large weights on small maps.
The order also decides how the forward splits its GEMM over the workers: by
pixels when the columns are the larger operand, by output channels when the
weight is (each worker then reads only its part of the weight).
"""

from __future__ import annotations

import numpy


def rearranges_weight(g):
    """Whether the weight (``C_out * K`` elements) is no larger than the columns of
    the call (``N * H_out * W_out * groups * K``), and so is the side rearranged."""
    return g.out_channels <= g.groups * g.batch * g.out_h * g.out_w


class ColumnOrder:
    """K order of one call: ``tap_major`` (weight rearranged) or channel-major (natural)."""

    def __init__(self, g, weight):
        self.g = g
        self.natural = weight.reshape(g.groups, g.out_channels // g.groups, -1)
        self.tap_major = rearranges_weight(g)

    def _split(self):
        g = self.g
        return g.groups, g.out_channels // g.groups, g.in_channels // g.groups, g.taps

    def weight(self):
        """The weight as the GEMM's ``(groups, C_out/groups, K)`` operand."""
        if not self.tap_major:
            return self.natural
        groups, per_group, channels, taps = self._split()
        split = self.natural.reshape(groups, per_group, channels, taps)
        return numpy.ascontiguousarray(split.transpose(0, 1, 3, 2)).reshape(
            groups, per_group, -1)

    def natural_weight(self, gemm_weight):
        """Inverse of :meth:`weight`: a ``(C_out, C_in/groups, kh, kw)`` array."""
        g = self.g
        shape = (g.out_channels, g.in_channels // g.groups, g.kernel_h, g.kernel_w)
        if not self.tap_major:
            return gemm_weight.reshape(shape)
        groups, per_group, channels, taps = self._split()
        split = gemm_weight.reshape(groups, per_group, taps, channels)
        return numpy.ascontiguousarray(split.transpose(0, 1, 3, 2)).reshape(shape)

    def grouped(self, outputs):
        """A block's ``(C_out, pixels)`` outputs (or output gradients) per group."""
        return outputs.reshape(self.g.groups, -1, outputs.shape[-1])

    def columns(self, point_columns, out=None):
        """Points' columns ``(pixels*taps*dg, 1, C/dg)`` as ``(groups, pixels, K)``,
        written into ``out`` if given."""
        groups, _, channels, taps = self._split()
        split = point_columns.reshape(-1, taps, groups, channels)
        pixels = split.shape[0]
        if self.tap_major:
            ordered, shape = split.transpose(2, 0, 1, 3), (groups, pixels, taps, channels)
        else:
            ordered, shape = split.transpose(2, 0, 3, 1), (groups, pixels, channels, taps)
        if out is None:
            return ordered.reshape(groups, pixels, -1)
        numpy.copyto(out.reshape(shape), ordered)
        return out

    def points(self, grouped, out):
        """Inverse of :meth:`columns`: ``grouped (groups, pixels, K)`` written into
        ``out (pixels*taps*dg, C/dg)`` in the points' order."""
        groups, _, channels, taps = self._split()
        pixels = grouped.shape[1]
        if self.tap_major:
            ordered = grouped.reshape(groups, pixels, taps, channels).transpose(1, 2, 0, 3)
        else:
            ordered = grouped.reshape(groups, pixels, channels, taps).transpose(1, 3, 0, 2)
        numpy.copyto(out.reshape(pixels, taps, groups, channels), ordered)

    def point_gradients(self, grad_outputs, gemm_weight, out):
        """Column gradients of the points, ``grad_outputs^T @ weight`` written into
        ``out (pixels*taps*dg, C/dg)`` in the points' order.

        ``grad_outputs`` is a block's :meth:`grouped` output gradient.
        """
        by_pixel = grad_outputs.transpose(0, 2, 1)
        if self.tap_major and self.g.groups == 1:
            numpy.matmul(by_pixel[0], gemm_weight[0], out=out.reshape(by_pixel.shape[1], -1))
            return
        self.points(numpy.matmul(by_pixel, gemm_weight), out)
