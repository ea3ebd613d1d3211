"""Deformable convolution in vectorised NumPy.

Layout: the input is stored channels-last with zero borders and viewed as rows
of ``C_in / dg`` channels, one row per (image, padded pixel, offset group), so
each bilinear corner of a sampling point is one contiguous row to gather.
Offsets and mask are reordered pixel-major, so that a block of output pixels
is a contiguous slice of them.

Output pixels are processed in cache-sized blocks within one image, split over
the cores. A block's sampling points, corner values and columns are built in the
worker's buffers; one GEMM per weight group writes the block's outputs straight
into the NCHW result, so neither the full column matrix nor a transposed output
is ever stored. The backward is the transpose of each step: two GEMMs read the
NCHW output gradient in place, and the input gradient is scattered back onto
the rows by :func:`cudeform._cpu.scatter.sums_by_key`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy

from cudeform._cpu import parallel
from cudeform._cpu.bilinear import (
    PAD_BEFORE, coordinate_gradients, padded_size, zero_padded_corners,
)
from cudeform._cpu.columns import ColumnOrder
from cudeform._cpu.scatter import sums_by_key
from cudeform._workspace import batch_chunks

# Bytes of gathered corner values in one block of pixels.
_BLOCK_BYTES = 2**23


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


@dataclasses.dataclass
class _Block:
    """Output pixels ``first:last`` of image ``image`` of a chunk."""

    image: int
    first: int
    last: int
    plane: int

    @property
    def pixels(self):
        """The block as a slice of the chunk's pixel-major arrays."""
        return slice(self.image * self.plane + self.first, self.image * self.plane + self.last)

    def of(self, nchw):
        """The block's ``(C, pixels)`` view of one image of an NCHW array."""
        return nchw[self.image].reshape(nchw.shape[1], -1)[:, self.first:self.last]


def _block_pixels(g, itemsize):
    return max(1, _BLOCK_BYTES // (4 * g.taps * g.in_channels * itemsize))


def _blocks(g, part, itemsize):
    """Blocks of at most :func:`_block_pixels` pixels covering ``part`` (a slice of the
    chunk's n*P pixels), none across two images."""
    plane, step = g.out_h * g.out_w, _block_pixels(g, itemsize)
    start = part.start
    while start < part.stop:
        image, first = divmod(start, plane)
        last = min(plane, first + step, part.stop - image * plane)
        yield _Block(image, first, last, plane)
        start = image * plane + last


@dataclasses.dataclass
class _Sampling:
    """Where the points of a block sample; points ordered (pixel, tap, offset group)."""

    corners: object          # bilinear.Corners, arrays shaped (pixels, taps, dg)
    rows: numpy.ndarray      # (points,) data row of each point's first corner
    row_steps: tuple         # row offsets of the four corners
    weights: numpy.ndarray   # (points, 4) corner weights, times the mask if any
    modulation: object       # mask as (pixels, taps, dg), or None


def _sampling(g, grid, block, offsets, mask, derivatives):
    """Sampling points of the pixels of ``block``; ``grid`` is the plane's
    :func:`grid_positions`, each ``(P, taps)``."""
    pixels, dg = block.pixels, g.offset_groups
    moved = offsets[pixels]
    corners = zero_padded_corners(grid[0][block.first:block.last, :, None] + moved[..., 0],
                                  grid[1][block.first:block.last, :, None] + moved[..., 1],
                                  g.height, g.width, derivatives)
    padded_plane = padded_size(g.height) * padded_size(g.width)
    rows = (corners.index + block.image * padded_plane) * dg
    if dg > 1:
        rows += numpy.arange(dg)
    modulation = None if mask is None else mask[pixels]
    weights = corners.weight if modulation is None else corners.weight * modulation[..., None]
    row_steps = tuple(step * dg for step in corners.steps)
    return _Sampling(corners, rows.reshape(-1), row_steps, weights.reshape(-1, 4), modulation)


class _BlockColumns:
    """One worker's builder of block columns, in buffers it reuses for every block."""

    def __init__(self, g, data, order):
        self.data = data
        self.order = order
        points = g.taps * g.offset_groups * _block_pixels(g, data.dtype.itemsize)
        self.values = numpy.empty((points, 4, data.shape[1]), data.dtype)
        self.columns = numpy.empty((points, 1, data.shape[1]), data.dtype)

    def __call__(self, sampling):
        """Corner values ``(points, 4, C/dg)`` and the GEMM's columns of a block."""
        count = sampling.rows.size
        corner_rows = sampling.rows[:, None] + numpy.array(sampling.row_steps)
        # Rows are in bounds by construction (see bilinear.py); mode="clip" skips
        # the bounds check and the buffered copy of the default mode.
        values = numpy.take(self.data, corner_rows, axis=0, out=self.values[:count],
                            mode="clip")
        numpy.matmul(sampling.weights[:, None, :], values, out=self.columns[:count])
        return values, self.order.columns(self.columns[:count])


def _chunks(g, itemsize, backward):
    workers = parallel.worker_count()  # first, so that a bad setting is reported first
    # Per image: the padded input (and one input gradient per worker in the
    # backward) plus offsets, mask and their gradients.
    padded = g.in_channels * padded_size(g.height) * padded_size(g.width)
    sampling = 6 * g.taps * g.offset_groups * g.out_h * g.out_w
    copies = 1 + (workers if backward else 0)
    return batch_chunks(g.batch, itemsize * (padded * copies + sampling))


@dataclasses.dataclass
class _Chunk:
    """Images ``start:stop`` of a call, in the layouts its blocks read."""

    data: numpy.ndarray      # zero-bordered channel-last rows, see _padded_rows
    offsets: numpy.ndarray   # pixel-major, see _pixel_major
    modulation: object       # pixel-major mask, or None


def _chunk(g, input, offset, mask, start, stop):
    offsets, modulation = _pixel_major(g, offset[start:stop],
                                       None if mask is None else mask[start:stop])
    return _Chunk(_padded_rows(input[start:stop], g.offset_groups), offsets, modulation)


def _plane_grid(g, dtype):
    """:func:`grid_positions` of every output pixel of a plane, each ``(P, taps)``."""
    return grid_positions(g, *numpy.divmod(numpy.arange(g.out_h * g.out_w), g.out_w), dtype)


def _forward_part(g, order, grid, chunk, gemm_weight, bias, output, part):
    """The outputs ``output (n, C_out, H_out, W_out)`` of the pixels ``part`` of a chunk."""
    block_columns = _BlockColumns(g, chunk.data, order)
    for block in _blocks(g, part, chunk.data.dtype.itemsize):
        sampling = _sampling(g, grid, block, chunk.offsets, chunk.modulation, derivatives=False)
        _, columns = block_columns(sampling)
        out = order.grouped(block.of(output))
        numpy.matmul(gemm_weight, columns.transpose(0, 2, 1), out=out)
        if bias is not None:
            out += bias


def forward(input, offset, weight, bias, mask, g):
    """``deform_conv2d`` on C-contiguous NumPy arrays of one dtype, validated into ``g``."""
    output = numpy.empty(g.output_shape, dtype=input.dtype)
    order = ColumnOrder(g, weight)
    gemm_weight = order.weight()
    bias = None if bias is None else bias.reshape(g.groups, -1, 1)
    grid = _plane_grid(g, input.dtype)
    for start, stop in _chunks(g, input.dtype.itemsize, backward=False):
        chunk = _chunk(g, input, offset, mask, start, stop)
        parallel.split(chunk.offsets.shape[0], functools.partial(
            _forward_part, g, order, grid, chunk, gemm_weight, bias, output[start:stop]))
    return output


def _scatter(grad_rows, sampling, grad_columns):
    """Add each point's column gradient, times its corner weights, onto its corner rows.

    ``grad_columns`` has one row per point and a zero row after them. Points
    outside the map (zero weights, all on one padding row) are left out.
    """
    live = numpy.flatnonzero(sampling.corners.inside)
    rows, sums = sums_by_key(sampling.rows[live], grad_columns, live, sampling.weights[live])
    for q, step in enumerate(sampling.row_steps):
        grad_rows[rows + step] += sums[:, q]


def _point_gradients(values, grad_columns, sampling):
    """Gradients ``(pixels, taps, dg)`` of the sampling positions (dy, dx) and of the mask.

    ``values (points, 4, C/dg)`` are the corner values, ``grad_columns`` the
    points' column gradients.
    """
    corners = sampling.corners
    corner_grads = numpy.matmul(values, grad_columns[:, :, None]).reshape(
        corners.weight.shape)  # d loss / d (corner weight), per corner
    grad_y, grad_x = coordinate_gradients(corner_grads, corners)
    grad_m = numpy.einsum("...q,...q->...", corner_grads, corners.weight)
    if sampling.modulation is not None:
        grad_y *= sampling.modulation
        grad_x *= sampling.modulation
    return grad_y, grad_x, grad_m


def _backward_part(g, order, grid, chunk, gemm_weight, grad_output, grad_offsets,
                   grad_modulation, part):
    """Gradients of the pixels ``part`` of a chunk: the position and mask gradients
    are written into ``grad_offsets`` and ``grad_modulation`` (pixel-major); returns
    this part's input-row and weight gradients, summed by the caller."""
    block_columns = _BlockColumns(g, chunk.data, order)
    grad_rows = numpy.zeros_like(chunk.data)
    grad_weight = numpy.zeros_like(gemm_weight)
    block_grad_weight = numpy.empty_like(gemm_weight)
    grad_columns = numpy.empty((block_columns.columns.shape[0] + 1, chunk.data.shape[1]),
                               chunk.data.dtype)
    for block in _blocks(g, part, chunk.data.dtype.itemsize):
        sampling = _sampling(g, grid, block, chunk.offsets, chunk.modulation, derivatives=True)
        values, columns = block_columns(sampling)
        block_grad_output = order.grouped(block.of(grad_output))
        numpy.matmul(block_grad_output, columns, out=block_grad_weight)
        grad_weight += block_grad_weight
        points = sampling.rows.size
        order.point_gradients(block_grad_output, gemm_weight, grad_columns[:points])
        grad_columns[points] = 0
        grad_y, grad_x, grad_modulation[block.pixels] = _point_gradients(
            values, grad_columns[:points], sampling)
        grad_offsets[block.pixels, ..., 0] = grad_y
        grad_offsets[block.pixels, ..., 1] = grad_x
        _scatter(grad_rows, sampling, grad_columns[:points + 1])
    return grad_rows, grad_weight


def backward(grad_output, input, offset, weight, bias, mask, g):
    """Gradients ``(input, offset, weight, bias, mask)`` of ``deform_conv2d``."""
    dtype = input.dtype
    height, width = g.height, g.width
    grad_input = numpy.empty(input.shape, dtype=dtype)
    grad_offset = numpy.empty(offset.shape, dtype=dtype)
    grad_mask = None if mask is None else numpy.empty(mask.shape, dtype=dtype)
    order = ColumnOrder(g, weight)
    gemm_weight = order.weight()
    grad_gemm_weight = numpy.zeros_like(gemm_weight)
    grid = _plane_grid(g, dtype)

    for start, stop in _chunks(g, dtype.itemsize, backward=True):
        n = stop - start
        chunk = _chunk(g, input, offset, mask, start, stop)
        grad_offsets = numpy.empty_like(chunk.offsets)
        grad_modulation = numpy.empty(chunk.offsets.shape[:-1], dtype=dtype)
        # Each worker sums its own input and weight gradients: no shared writes.
        partial_grads = parallel.split(chunk.offsets.shape[0], functools.partial(
            _backward_part, g, order, grid, chunk, gemm_weight, grad_output[start:stop],
            grad_offsets, grad_modulation))
        grad_rows = partial_grads[0][0]
        for rows, _ in partial_grads[1:]:
            grad_rows += rows
        for _, weight_part in partial_grads:
            grad_gemm_weight += weight_part

        grad_padded = grad_rows.reshape(n, padded_size(height), padded_size(width), -1)
        grad_input[start:stop] = grad_padded[
            :, PAD_BEFORE:PAD_BEFORE + height, PAD_BEFORE:PAD_BEFORE + width].transpose(0, 3, 1, 2)
        grad_offset[start:stop] = _from_pixel_major(g, grad_offsets, offset.shape[1])
        if grad_mask is not None:
            grad_mask[start:stop] = _from_pixel_major(g, grad_modulation, mask.shape[1])

    grad_weight = order.natural_weight(grad_gemm_weight)
    grad_bias = None if bias is None else grad_output.sum(axis=(0, 2, 3)).astype(dtype)
    return grad_input, grad_offset, grad_weight, grad_bias, grad_mask
