"""The blocks of output pixels a deformable convolution works on, in NumPy.

Layout: the input is stored channels-last with zero borders and viewed as rows
of ``C_in / dg`` channels, one row per (image, padded pixel, offset group), so
each bilinear corner of a sampling point is one contiguous row to gather.
Offsets and mask are reordered pixel-major, so that a block of output pixels
is a contiguous slice of them. Images are processed in chunks under the
workspace limit, and the output pixels of a chunk in cache-sized blocks within
one image, whose sampling points, corner values and GEMM columns are built in
a worker's reused buffers.
"""

from __future__ import annotations

import dataclasses

import numpy

from cudeform._cpu import parallel
from cudeform._cpu.bilinear import PAD_BEFORE, padded_size, zero_padded_corners
from cudeform._workspace import batch_chunks

# Bytes of gathered corner values in one block of pixels.
BLOCK_BYTES = 2**23


def padded_rows(images, offset_groups):
    """``images (n, C, H, W)`` as zero-bordered channel-last rows ``(n*Hp*Wp*dg, C/dg)``."""
    n, channels, height, width = images.shape
    padded = numpy.zeros((n, padded_size(height), padded_size(width), channels),
                         dtype=images.dtype)
    padded[:, PAD_BEFORE:PAD_BEFORE + height, PAD_BEFORE:PAD_BEFORE + width] = (
        images.transpose(0, 2, 3, 1))
    return padded.reshape(-1, channels // offset_groups)


def pixel_major(g, offset, mask):
    """Offsets as ``(n*P, taps, dg, 2)`` (dy, dx) and mask as ``(n*P, taps, dg)``."""
    n, taps, dg, plane = offset.shape[0], g.taps, g.offset_groups, g.out_h * g.out_w
    offsets = offset.reshape(n, dg, taps, 2, plane).transpose(0, 4, 2, 1, 3)
    offsets = numpy.ascontiguousarray(offsets).reshape(n * plane, taps, dg, 2)
    if mask is not None:
        mask = numpy.ascontiguousarray(mask.reshape(n, dg, taps, plane).transpose(0, 3, 2, 1))
        mask = mask.reshape(n * plane, taps, dg)
    return offsets, mask


def from_pixel_major(g, values, channels):
    """Inverse of :func:`pixel_major` for ``(n*P, taps, dg[, 2])`` arrays."""
    plane = g.out_h * g.out_w
    n = values.shape[0] // plane
    values = values.reshape(n, plane, g.taps, g.offset_groups, -1).transpose(0, 3, 2, 4, 1)
    return values.reshape(n, channels, g.out_h, g.out_w)


@dataclasses.dataclass
class Block:
    """Output pixels ``first:last`` of image ``image`` of a chunk."""

    image: int
    first: int
    last: int
    plane: int

    @property
    def pixels(self):
        """The block as a slice of the chunk's pixel-major arrays."""
        return slice(self.image * self.plane + self.first, self.image * self.plane + self.last)

    def points(self, g):
        """The block's points as a slice of the chunk's points (pixel, tap, offset group)."""
        per_pixel = g.taps * g.offset_groups
        return slice(self.pixels.start * per_pixel, self.pixels.stop * per_pixel)

    def of(self, nchw):
        """The block's ``(C, pixels)`` view of one image of an NCHW array."""
        return nchw[self.image].reshape(nchw.shape[1], -1)[:, self.first:self.last]


def block_pixels(g, itemsize):
    return max(1, BLOCK_BYTES // (4 * g.taps * g.in_channels * itemsize))


def pixel_blocks(g, part, itemsize):
    """Blocks of at most :func:`block_pixels` pixels covering ``part`` (a slice of the
    chunk's n*P pixels), none across two images."""
    plane, step = g.out_h * g.out_w, block_pixels(g, itemsize)
    start = part.start
    while start < part.stop:
        image, first = divmod(start, plane)
        last = min(plane, first + step, part.stop - image * plane)
        yield Block(image, first, last, plane)
        start = image * plane + last


@dataclasses.dataclass
class Sampling:
    """Where the points of a block sample; points ordered (pixel, tap, offset group)."""

    corners: object          # bilinear.Corners, arrays shaped (pixels, taps, dg)
    rows: numpy.ndarray      # (points,) data row of each point's first corner
    row_steps: tuple         # row offsets of the four corners
    weights: numpy.ndarray   # (points, 4) corner weights, times the mask if any
    modulation: object       # mask as (pixels, taps, dg), or None


def block_sampling(g, grid, block, offsets, mask, derivatives):
    """Sampling points of the pixels of ``block``; ``grid`` holds the regular-grid
    positions of a plane's pixels, each ``(P, taps)``
    (:func:`cudeform._cpu.deform_conv.grid_positions`)."""
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
    return Sampling(corners, rows.reshape(-1), row_steps, weights.reshape(-1, 4), modulation)


class BlockColumns:
    """One worker's builder of block columns, in buffers it reuses for every block."""

    def __init__(self, g, data, order):
        self.data = data
        self.order = order
        points = g.taps * g.offset_groups * block_pixels(g, data.dtype.itemsize)
        self.values = numpy.empty((points, 4, data.shape[1]), data.dtype)
        self.columns = numpy.empty((points, 1, data.shape[1]), data.dtype)

    def __call__(self, sampling, out=None, values=None):
        """Corner values ``(points, 4, C/dg)`` and the GEMM's columns of a block
        (written into ``out (groups, pixels, K)`` and ``values`` if given)."""
        count = sampling.rows.size
        corner_rows = sampling.rows[:, None] + numpy.array(sampling.row_steps)
        # Rows are in bounds by construction (see bilinear.py); mode="clip" skips
        # the bounds check and the buffered copy of the default mode.
        values = numpy.take(self.data, corner_rows, axis=0, mode="clip",
                            out=self.values[:count] if values is None else values)
        weighted_sum(sampling.weights, values, self.columns[:count, 0])
        return values, self.order.columns(self.columns[:count], out)


def weighted_sum(weights, rows, out):
    """``out[i] = sum over q of weights[i, q] * rows[i, q]`` for ``rows (m, 4, w)``.

    ``numpy.vecmat`` (NumPy 2.2 and later) does it about a fifth faster than a
    batched ``matmul`` of (1 x 4) by (4 x w) matrices.
    """
    vecmat = getattr(numpy, "vecmat", None)
    if vecmat is not None:
        return vecmat(weights, rows, out=out)
    return numpy.matmul(weights[:, None, :], rows, out=out[:, None, :])[:, 0]


def image_chunks(g, itemsize, backward):
    """``(start, stop)`` ranges of the images, each chunk under the workspace limit."""
    workers = parallel.worker_count()  # first, so that a bad setting is reported first
    # Per image: the padded input (and one input gradient per worker in the
    # backward) plus offsets, mask and their gradients.
    padded = g.in_channels * padded_size(g.height) * padded_size(g.width)
    sampling = 6 * g.taps * g.offset_groups * g.out_h * g.out_w
    copies = 1 + (workers if backward else 0)
    return batch_chunks(g.batch, itemsize * (padded * copies + sampling))


@dataclasses.dataclass
class Chunk:
    """Images ``start:stop`` of a call, in the layouts its blocks read."""

    data: numpy.ndarray      # zero-bordered channel-last rows, see padded_rows
    offsets: numpy.ndarray   # pixel-major, see pixel_major
    modulation: object       # pixel-major mask, or None


def chunk_layouts(g, input, offset, mask, start, stop):
    """The :class:`Chunk` of images ``start:stop``."""
    offsets, modulation = pixel_major(g, offset[start:stop],
                                       None if mask is None else mask[start:stop])
    return Chunk(padded_rows(input[start:stop], g.offset_groups), offsets, modulation)
