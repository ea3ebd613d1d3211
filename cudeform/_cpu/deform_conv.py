"""Deformable convolution in vectorised NumPy.

Layout: the input is stored channels-last with zero borders and viewed as rows
of ``C_in / dg`` channels, one row per (image, padded pixel, offset group), so
each bilinear corner of a sampling point is one contiguous row to gather.
Offsets and mask are reordered pixel-major, so that a block of output pixels
is a contiguous slice of them.

Output pixels are processed in cache-sized blocks, split over the cores. A
block's sampling points, corner values and columns ``(pixels, taps * C_in)``
are built in the worker's buffers and multiplied by the weight (one GEMM per
weight group), so the full column matrix is never stored. The backward is
the transpose of each step; the input gradient is scattered back onto the
rows, repeated rows summed after one sort per block with ``numpy.add.reduceat``.
"""

from __future__ import annotations

import dataclasses

import numpy

from cudeform._cpu import parallel
from cudeform._cpu.bilinear import PAD_BEFORE, padded_size, zero_padded_corners
from cudeform._workspace import batch_chunks

# Bytes of gathered corner values in one block of pixels.
_BLOCK_BYTES = 2**22


def _padded_rows(images, offset_groups):
    """``images (n, C, H, W)`` as zero-bordered channel-last rows ``(n*Hp*Wp*dg, C/dg)``."""
    n, channels, height, width = images.shape
    padded = numpy.zeros((n, padded_size(height), padded_size(width), channels),
                         dtype=images.dtype)
    padded[:, PAD_BEFORE:PAD_BEFORE + height, PAD_BEFORE:PAD_BEFORE + width] = (
        images.transpose(0, 2, 3, 1))
    return padded.reshape(-1, channels // offset_groups)


def _pixel_major(g, offset, mask):
    """Offsets as ``(n*P, taps, dg, 2)`` (dy, dx) and mask as ``(n*P, taps, dg)``."""
    n, taps, dg, plane = offset.shape[0], g.taps, g.offset_groups, g.out_h * g.out_w
    offsets = offset.reshape(n, dg, taps, 2, plane).transpose(0, 4, 2, 1, 3)
    offsets = numpy.ascontiguousarray(offsets).reshape(n * plane, taps, dg, 2)
    if mask is not None:
        mask = numpy.ascontiguousarray(mask.reshape(n, dg, taps, plane).transpose(0, 3, 2, 1))
        mask = mask.reshape(n * plane, taps, dg)
    return offsets, mask


def _from_pixel_major(g, values, channels):
    """Inverse of :func:`_pixel_major` for ``(n*P, taps, dg[, 2])`` arrays."""
    plane = g.out_h * g.out_w
    n = values.shape[0] // plane
    values = values.reshape(n, plane, g.taps, g.offset_groups, -1).transpose(0, 3, 2, 4, 1)
    return values.reshape(n, channels, g.out_h, g.out_w)


@dataclasses.dataclass
class _Sampling:
    """Where the points of a block sample; points ordered (pixel, tap, offset group)."""

    corners: object          # bilinear.Corners, arrays shaped (pixels, taps, dg)
    rows: numpy.ndarray      # (points,) data row of each point's first corner
    row_steps: tuple         # row offsets of the four corners
    weights: numpy.ndarray   # (points, 1, 4) corner weights, times the mask if any
    modulation: object       # mask as (pixels, taps, dg), or None


def grid_positions(g, ho, wo, dtype):
    """Regular-grid positions ``(y, x)``, each ``(..., taps)``, of the taps of output
    pixels ``(ho, wo)`` (arrays of one shape, possibly fractional); the offsets add to them.

    The only copy of the sampling formula on the NumPy path.
    """
    i = numpy.arange(g.taps) // g.kernel_w
    j = numpy.arange(g.taps) % g.kernel_w
    ho, wo = numpy.asarray(ho)[..., None], numpy.asarray(wo)[..., None]
    return ((ho * g.stride_h - g.pad_h + i * g.dilation_h).astype(dtype),
            (wo * g.stride_w - g.pad_w + j * g.dilation_w).astype(dtype))


def _sampling(g, pixels, offsets, mask, derivatives):
    """Sampling points of the output pixels ``pixels`` (a slice over n*P)."""
    dtype, dg = offsets.dtype, g.offset_groups
    plane = g.out_h * g.out_w
    index = numpy.arange(pixels.start, pixels.stop)
    image, pixel = index // plane, index % plane
    base_y, base_x = grid_positions(g, pixel // g.out_w, pixel % g.out_w, dtype)
    block = offsets[pixels]
    corners = zero_padded_corners(base_y[:, :, None] + block[..., 0],
                                  base_x[:, :, None] + block[..., 1], g.height, g.width,
                                  derivatives)

    padded_plane = padded_size(g.height) * padded_size(g.width)
    group = numpy.arange(dg)
    rows = ((image[:, None, None] * padded_plane + corners.index) * dg + group).reshape(-1)
    modulation = None if mask is None else mask[pixels]
    weights = corners.weight if modulation is None else corners.weight * modulation
    weights = numpy.ascontiguousarray(weights.reshape(4, -1).T)[:, None, :]
    row_steps = tuple(step * dg for step in corners.steps)
    return _Sampling(corners, rows, row_steps, weights, modulation)


def _blocks(g, pixels, data):
    """Slices of at most a block of output pixels, covering the slice ``pixels``."""
    step = max(1, _BLOCK_BYTES // (4 * g.taps * g.offset_groups * data[0].nbytes))
    for start in range(pixels.start, pixels.stop, step):
        yield slice(start, min(pixels.stop, start + step))


def _grouped(g, columns):
    """Block columns ``(points, 1, C/dg)`` as ``(groups, pixels, taps * C_in/groups)``."""
    pixels = columns.size // (g.taps * g.in_channels)
    split = columns.reshape(pixels, g.taps, g.groups, g.in_channels // g.groups)
    return split.transpose(2, 0, 1, 3).reshape(g.groups, pixels, -1)


def _ungrouped(g, grouped):
    """Inverse of :func:`_grouped`, as ``(points, C/dg, 1)``."""
    split = grouped.reshape(g.groups, -1, g.taps, g.in_channels // g.groups)
    columns = numpy.ascontiguousarray(split.transpose(1, 2, 0, 3))
    return columns.reshape(-1, g.in_channels // g.offset_groups, 1)


class _BlockColumns:
    """One worker's builder of block columns, in buffers it reuses for every block."""

    def __init__(self, g, data):
        self.g = g
        self.data = data
        points = g.taps * g.offset_groups * next(_blocks(g, slice(0, 1 << 62), data)).stop
        self.values = numpy.empty((4, points, data.shape[1]), data.dtype)
        self.columns = numpy.empty((points, 1, data.shape[1]), data.dtype)

    def __call__(self, sampling):
        """Corner values ``(points, 4, C/dg)`` and grouped columns of a block."""
        count = sampling.rows.size
        for q, step in enumerate(sampling.row_steps):
            # Rows are in bounds by construction (see bilinear.py); mode="clip"
            # skips the bounds check and the buffered copy of the default mode.
            numpy.take(self.data, sampling.rows + step, axis=0, out=self.values[q, :count],
                       mode="clip")
        values = self.values[:, :count].transpose(1, 0, 2)
        numpy.matmul(sampling.weights, values, out=self.columns[:count])
        return values, _grouped(self.g, self.columns[:count])


def _gemm_weight(g, weight):
    """Weight as ``(groups, taps * C_in/groups, C_out/groups)``, matching :func:`_grouped`."""
    per_group = weight.reshape(g.groups, g.out_channels // g.groups,
                               g.in_channels // g.groups, g.taps)
    return numpy.ascontiguousarray(per_group.transpose(0, 3, 2, 1)).reshape(
        g.groups, g.taps * (g.in_channels // g.groups), -1)


def _chunks(g, itemsize):
    # Per image: the padded input (and one input gradient per worker in the
    # backward) plus offsets, mask and their gradients.
    padded = g.in_channels * padded_size(g.height) * padded_size(g.width)
    sampling = 6 * g.taps * g.offset_groups * g.out_h * g.out_w
    per_image = itemsize * (padded * (1 + parallel.worker_count()) + sampling)
    return batch_chunks(g.batch, per_image)


def forward(input, offset, weight, bias, mask, g):
    """``deform_conv2d`` on C-contiguous NumPy arrays of one dtype, validated into ``g``."""
    output = numpy.empty(g.output_shape, dtype=input.dtype)
    weight_gemm = _gemm_weight(g, weight)
    plane = g.out_h * g.out_w
    for start, stop in _chunks(g, input.dtype.itemsize):
        n = stop - start
        data = _padded_rows(input[start:stop], g.offset_groups)
        offsets, modulation = _pixel_major(g, offset[start:stop],
                                           None if mask is None else mask[start:stop])
        result = numpy.empty((g.groups, n * plane, weight_gemm.shape[2]), dtype=input.dtype)

        def work(part):
            block_columns = _BlockColumns(g, data)
            for pixels in _blocks(g, part, data):
                sampling = _sampling(g, pixels, offsets, modulation, derivatives=False)
                _, columns = block_columns(sampling)
                numpy.matmul(columns, weight_gemm, out=result[:, pixels])

        parallel.split(n * plane, work)
        result = result.reshape(g.groups, n, plane, -1).transpose(1, 0, 3, 2)
        output[start:stop] = result.reshape(n, g.out_channels, g.out_h, g.out_w)
    if bias is not None:
        output += bias.reshape(1, -1, 1, 1)
    return output


def _scatter(grad_rows, sampling, grad_columns):
    """Add each point's column gradient, times its corner weights, onto its corner rows.

    The four corners of a point are shifts of its first corner, so one sort of
    the first-corner rows groups every corner's repeated rows.
    """
    order = numpy.argsort(sampling.rows, kind="stable")
    sorted_rows = sampling.rows[order]
    starts = numpy.flatnonzero(numpy.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    unique_rows = sorted_rows[starts]
    sorted_grad = grad_columns[order]
    sorted_weights = sampling.weights[order, 0]
    for q, step in enumerate(sampling.row_steps):
        contributions = sorted_grad * sorted_weights[:, q, None]
        grad_rows[unique_rows + step] += numpy.add.reduceat(contributions, starts, axis=0)


def _coordinate_grads(dots, sampling):
    """Gradients ``(pixels, taps, dg)`` of the sampling positions (dy, dx) and of the mask.

    ``dots[i, q]`` is the sum over the group's channels of the column gradient
    times corner ``q`` of point ``i``.
    """
    corners = sampling.corners
    dots = dots.reshape(-1, 4).T.reshape(corners.weight.shape)
    grad_y = numpy.einsum("q...,q...->...", dots, corners.weight_dy)
    grad_x = numpy.einsum("q...,q...->...", dots, corners.weight_dx)
    grad_m = numpy.einsum("q...,q...->...", dots, corners.weight)
    if sampling.modulation is not None:
        grad_y *= sampling.modulation
        grad_x *= sampling.modulation
    return grad_y, grad_x, grad_m


def backward(grad_output, input, offset, weight, bias, mask, g):
    """Gradients ``(input, offset, weight, bias, mask)`` of ``deform_conv2d``."""
    dtype = input.dtype
    height, width, dg = g.height, g.width, g.offset_groups
    plane = g.out_h * g.out_w
    grad_input = numpy.empty(input.shape, dtype=dtype)
    grad_offset = numpy.empty(offset.shape, dtype=dtype)
    grad_mask = None if mask is None else numpy.empty(mask.shape, dtype=dtype)
    weight_gemm = _gemm_weight(g, weight)
    grad_weight_gemm = numpy.zeros_like(weight_gemm)

    for start, stop in _chunks(g, dtype.itemsize):
        n = stop - start
        data = _padded_rows(input[start:stop], dg)
        offsets, modulation = _pixel_major(g, offset[start:stop],
                                           None if mask is None else mask[start:stop])
        grad_out = grad_output[start:stop].reshape(n, g.groups, -1, plane).transpose(1, 0, 3, 2)
        grad_out = numpy.ascontiguousarray(grad_out).reshape(g.groups, n * plane, -1)
        grad_offsets = numpy.empty_like(offsets)
        grad_modulation = numpy.empty(offsets.shape[:-1], dtype=dtype)

        def work(part):
            # Each worker sums its own input and weight gradients: no shared writes.
            block_columns = _BlockColumns(g, data)
            grad_rows = numpy.zeros_like(data)
            grad_weight = numpy.zeros_like(weight_gemm)
            for pixels in _blocks(g, part, data):
                sampling = _sampling(g, pixels, offsets, modulation, derivatives=True)
                values, columns = block_columns(sampling)
                block_grad_out = grad_out[:, pixels]
                grad_weight += numpy.matmul(columns.transpose(0, 2, 1), block_grad_out)
                grad_columns = _ungrouped(g, numpy.matmul(block_grad_out,
                                                          weight_gemm.transpose(0, 2, 1)))
                grad_y, grad_x, grad_modulation[pixels] = _coordinate_grads(
                    numpy.matmul(values, grad_columns), sampling)
                grad_offsets[pixels, ..., 0] = grad_y
                grad_offsets[pixels, ..., 1] = grad_x
                _scatter(grad_rows, sampling, grad_columns[:, :, 0])
            return grad_rows, grad_weight

        partial_grads = parallel.split(n * plane, work)
        grad_rows = sum(rows for rows, _ in partial_grads)
        grad_weight_gemm += sum(weight for _, weight in partial_grads)

        grad_padded = grad_rows.reshape(n, padded_size(height), padded_size(width), -1)
        grad_input[start:stop] = grad_padded[
            :, PAD_BEFORE:PAD_BEFORE + height, PAD_BEFORE:PAD_BEFORE + width].transpose(0, 3, 1, 2)
        grad_offset[start:stop] = _from_pixel_major(g, grad_offsets, offset.shape[1])
        if grad_mask is not None:
            grad_mask[start:stop] = _from_pixel_major(g, grad_modulation, mask.shape[1])

    grad_weight = grad_weight_gemm.reshape(
        g.groups, g.taps, g.in_channels // g.groups, -1).transpose(0, 3, 2, 1)
    grad_weight = numpy.ascontiguousarray(grad_weight).reshape(weight.shape)
    grad_bias = None if bias is None else grad_output.sum(axis=(0, 2, 3)).astype(dtype)
    return grad_input, grad_offset, grad_weight, grad_bias, grad_mask
