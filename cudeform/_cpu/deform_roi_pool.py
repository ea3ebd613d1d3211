"""Deformable RoI pooling in vectorised NumPy (OPS_SPEC section 2, mmcv semantics).

The sampling grid of a bin depends on its RoI (``sampling_ratio=0`` picks
``ceil(roi_h/ph) x ceil(roi_w/pw)``), so the samples of all bins are flattened
into one list ordered by bin: the cumulative sum of the per-bin sample counts
and ``searchsorted`` give each sample its bin and its place in the bin's grid.
The four corners of every sample are rows of the input stored channel-last,
gathered with ``take`` and summed per bin with ``numpy.add.reduceat``. The
backward first sums, for each (bin, input row) pair, the weights of the corners
of the bin's samples that fall on that row (the entries of a sparse bins x rows
matrix); it scatters the bins' gradients times those weights onto the rows after
a sort, summing repeated rows with ``numpy.add.reduceat``, and sums the offset
gradient per bin the same way. No ``numpy.add.at``, no loop over RoIs, bins or
channels.

Memory stays near the workspace limit: RoIs are processed in chunks, and the
samples of a chunk of RoIs in chunks of samples, since one large RoI can hold
more samples than the limit allows.

Bad RoIs (batch index outside [0, N) after truncation toward zero, NaN or
infinite corners or size) have no samples. A bin visits only the window of its
grid whose samples can land in [-1, H] x [-1, W], so a huge RoI costs about the
map's size, not its own. :func:`_bins` and :func:`_sample_window` mirror
``roi_bin`` and ``sample_window`` of kernels/deform_roi_pool.cu operation for
operation; see that file for the rules.
"""

from __future__ import annotations

import dataclasses

import numpy

from cudeform._cpu.bilinear import roi_align_corners
from cudeform._workspace import batch_chunks

# Bytes per bin of the per-bin arrays below, besides its rows of C channels.
_BIN_BYTES = 160
# Bytes per sample of indices, positions, corners and pairs, besides its rows of C channels.
_SAMPLE_BYTES = 512


def _sample_window(start, step, grid, size):
    """``(first, n)``: the grid indices a bin visits along one axis (see the kernel)."""
    real = start.dtype.type
    one, half = real(1), real(0.5)
    whole = (grid > 0) & ~(step > 0)  # a fixed sampling_ratio on an empty or inverted RoI
    usable = (grid > 0) & (step > 0) & numpy.isfinite(start)
    step = numpy.where(usable, step, one)
    start = numpy.where(usable, start, real(0))
    with numpy.errstate(over="ignore", divide="ignore", invalid="ignore"):
        low = -numpy.floor(-((real(-1) - start) / step - half)) - one
        high = numpy.floor((real(size) - start) / step - half) + one
        low = numpy.maximum(low, real(0))
        high = numpy.minimum(high, grid - one)
        n = numpy.minimum(high - low + one, numpy.floor(real(size + 1) / step) + real(3))
    n = numpy.where(usable & (n > 0), n, numpy.where(whole, grid, real(0)))
    return numpy.where(usable, low, real(0)), n.astype(numpy.int64)


@dataclasses.dataclass
class _Bins:
    """The bins of a chunk of RoIs, flattened over (roi, i, j)."""

    image: numpy.ndarray     # batch index of the bin's RoI (0 for a bad RoI)
    start_y: numpy.ndarray   # bin start, offset included
    start_x: numpy.ndarray
    step_y: numpy.ndarray    # distance between samples
    step_x: numpy.ndarray
    first_y: numpy.ndarray   # first grid index visited
    first_x: numpy.ndarray
    n_x: numpy.ndarray       # grid columns visited (int64)
    starts: numpy.ndarray    # index of the bin's first sample in the flat list (int64)
    ends: numpy.ndarray      # one past its last sample (int64)
    count: numpy.ndarray     # the average's denominator, max(grid_y * grid_x, 1)
    shift_y: numpy.ndarray   # d start_y / d offset[r, 1, i, j] = gamma * roi_h
    shift_x: numpy.ndarray   # d start_x / d offset[r, 0, i, j] = gamma * roi_w

    @property
    def samples(self):
        return int(self.ends[-1]) if self.ends.size else 0


def _bins(g, rois, offset):
    """The bins of ``rois`` (a chunk of RoIs) with their ``offset`` (or None)."""
    real = rois.dtype.type
    bins = g.pooled_h * g.pooled_w
    scale, half = real(g.spatial_scale), real(0.5)
    with numpy.errstate(over="ignore", invalid="ignore"):
        x1 = rois[:, 1] * scale - half
        y1 = rois[:, 2] * scale - half
        roi_w = rois[:, 3] * scale - half - x1
        roi_h = rois[:, 4] * scale - half - y1
        batch_index = rois[:, 0]
        good = ((batch_index > -1) & (batch_index < g.batch) & numpy.isfinite(x1)
                & numpy.isfinite(y1) & numpy.isfinite(roi_w) & numpy.isfinite(roi_h))
    zero = real(0)
    x1, y1, roi_w, roi_h = (numpy.where(good, v, zero) for v in (x1, y1, roi_w, roi_h))
    image = numpy.where(good, batch_index, zero).astype(numpy.int64)  # truncation, as mmcv
    bin_h, bin_w = roi_h / real(g.pooled_h), roi_w / real(g.pooled_w)
    if g.sampling_ratio > 0:
        grid_y = grid_x = numpy.full_like(bin_h, g.sampling_ratio)
    else:
        grid_y, grid_x = -numpy.floor(-bin_h), -numpy.floor(-bin_w)
    grid_y = numpy.where(good & (grid_y > 0), grid_y, zero)
    grid_x = numpy.where(good & (grid_x > 0), grid_x, zero)
    with numpy.errstate(over="ignore"):  # a huge RoI's grid_y * grid_x may overflow to inf
        samples = grid_y * grid_x
    count = numpy.where(samples > 1, samples, real(1))
    step_y = numpy.where(grid_y > 0, bin_h / numpy.where(grid_y > 0, grid_y, real(1)), zero)
    step_x = numpy.where(grid_x > 0, bin_w / numpy.where(grid_x > 0, grid_x, real(1)), zero)

    shape = (rois.shape[0], g.pooled_h, g.pooled_w)
    i = numpy.arange(g.pooled_h, dtype=rois.dtype)[:, None]
    j = numpy.arange(g.pooled_w, dtype=rois.dtype)
    start_y = numpy.broadcast_to(y1[:, None, None] + i * bin_h[:, None, None], shape)
    start_x = numpy.broadcast_to(x1[:, None, None] + j * bin_w[:, None, None], shape)
    gamma = real(g.gamma)
    shift_y, shift_x = gamma * roi_h, gamma * roi_w
    if offset is not None:
        with numpy.errstate(over="ignore", invalid="ignore"):
            start_x = start_x + shift_x[:, None, None] * offset[:, 0]
            start_y = start_y + shift_y[:, None, None] * offset[:, 1]

    def per_bin(values):
        return numpy.repeat(values, bins)

    step_y, step_x = per_bin(step_y), per_bin(step_x)
    first_y, n_y = _sample_window(start_y.ravel(), step_y, per_bin(grid_y), g.height)
    first_x, n_x = _sample_window(start_x.ravel(), step_x, per_bin(grid_x), g.width)
    ends = numpy.cumsum(n_y * n_x)
    return _Bins(per_bin(image), start_y.ravel(), start_x.ravel(), step_y, step_x,
                 first_y, first_x, n_x, ends - n_y * n_x, ends, per_bin(count),
                 per_bin(shift_y), per_bin(shift_x))


@dataclasses.dataclass
class _Samples:
    """Samples ``start:stop`` of the flat list that land on the map, ordered by bin."""

    bin: numpy.ndarray       # (S,) bin of each sample, nondecreasing
    rows: numpy.ndarray      # (4, S) channel-last input row of each corner
    corners: object          # bilinear.PlaneCorners of the samples
    segments: numpy.ndarray  # first sample of each bin present
    bins: numpy.ndarray      # the bins present, one per segment


def _samples(g, bins, start, stop, derivatives):
    real = bins.start_y.dtype.type
    index = numpy.arange(start, stop)
    b = numpy.searchsorted(bins.ends, index, side="right")
    ky, kx = numpy.divmod(index - bins.starts[b], bins.n_x[b])
    y = bins.start_y[b] + (bins.first_y[b] + ky.astype(real) + real(0.5)) * bins.step_y[b]
    x = bins.start_x[b] + (bins.first_x[b] + kx.astype(real) + real(0.5)) * bins.step_x[b]
    corners = roi_align_corners(y, x, g.height, g.width, derivatives)
    # Bilinear weights sum to 1 on the map and are all 0 off it: keep the samples on it.
    inside = numpy.flatnonzero(corners.weight.sum(axis=0) > 0)
    if inside.size < index.size:
        b = b[inside]
        corners.index, corners.weight = corners.index[:, inside], corners.weight[:, inside]
        if derivatives:
            corners.weight_dy = corners.weight_dy[:, inside]
            corners.weight_dx = corners.weight_dx[:, inside]
    rows = bins.image[b] * (g.height * g.width) + corners.index
    segments = numpy.flatnonzero(numpy.r_[True, b[1:] != b[:-1]]) if b.size else b
    return _Samples(b, rows, corners, segments, b[segments])


@dataclasses.dataclass
class _Pairs:
    """The (bin, input row) pairs of some samples, with their corner weights summed.

    The samples of a bin and their four corners reach an input row through one
    weight, the sum of the corner weights that fall on it: the pooling is a sparse
    (bins x rows) matrix, and the backward works on its entries. Sorted by bin, row.
    """

    bin: numpy.ndarray        # (P,) bin of each pair, nondecreasing
    rows: numpy.ndarray       # (P,) channel-last input row
    weight: numpy.ndarray     # (P,) summed bilinear weights
    weight_dy: object         # (P,) summed d weight / d y, or None
    weight_dx: object         # (P,) summed d weight / d x, or None
    segments: numpy.ndarray   # first pair of each bin present
    bins: numpy.ndarray       # the bins present, one per segment


def _pairs(s):
    """The pairs of the samples ``s``; derivatives too if ``s`` has them."""
    rows = s.rows.ravel()
    b = numpy.broadcast_to(s.bin, s.rows.shape).ravel()
    order = numpy.lexsort((rows, b))
    b, rows = b[order], rows[order]
    starts = numpy.flatnonzero(numpy.r_[True, (b[1:] != b[:-1]) | (rows[1:] != rows[:-1])])

    def summed(values):
        return None if values is None else numpy.add.reduceat(values.ravel()[order], starts)

    b = b[starts]
    segments = numpy.flatnonzero(numpy.r_[True, b[1:] != b[:-1]])
    return _Pairs(b, rows[starts], summed(s.corners.weight), summed(s.corners.weight_dy),
                  summed(s.corners.weight_dx), segments, b[segments])


def _channel_rows(images):
    """``images (N, C, H, W)`` as channel-last rows ``(N*H*W, C)``."""
    return numpy.ascontiguousarray(images.transpose(0, 2, 3, 1)).reshape(-1, images.shape[1])


def _chunks(g, itemsize):
    """``(roi_start, roi_stop, sample_chunks)``: RoI chunks and a sample chunker for each."""
    bin_bytes = _BIN_BYTES + 2 * g.channels * itemsize
    sample_bytes = _SAMPLE_BYTES + 4 * g.channels * itemsize
    for start, stop in batch_chunks(g.rois, g.pooled_h * g.pooled_w * bin_bytes):
        yield start, stop, lambda total: batch_chunks(total, sample_bytes)


def _from_bin_rows(g, rows):
    """Bin rows ``(R*ph*pw, C)`` as ``(R, C, ph, pw)``."""
    return rows.reshape(-1, g.pooled_h, g.pooled_w, g.channels).transpose(0, 3, 1, 2)


def _sampled_values(data, s):
    """Values ``(S, C)`` of the samples ``s``: their four corner rows, weighted and summed."""
    values = numpy.empty((s.bin.size, data.shape[1]), dtype=data.dtype)
    corner = numpy.empty_like(values)
    for q in range(4):
        # Rows are in bounds by construction; mode="clip" skips the bounds check.
        numpy.take(data, s.rows[q], axis=0, out=corner if q else values, mode="clip")
        if q:
            corner *= s.corners.weight[q][:, None]
            values += corner
        else:
            values *= s.corners.weight[0][:, None]
    return values


def forward(input, rois, offset, g):
    """``deform_roi_pool`` on C-contiguous NumPy arrays of one dtype, validated into ``g``."""
    output = numpy.zeros(g.output_shape, dtype=input.dtype)
    data = _channel_rows(input)
    for start, stop, sample_chunks in _chunks(g, input.dtype.itemsize):
        bins = _bins(g, rois[start:stop], None if offset is None else offset[start:stop])
        sums = numpy.zeros((bins.ends.size, g.channels), dtype=input.dtype)
        for first, last in sample_chunks(bins.samples):
            s = _samples(g, bins, first, last, derivatives=False)
            if s.bin.size:
                sums[s.bins] += numpy.add.reduceat(_sampled_values(data, s), s.segments, axis=0)
        output[start:stop] = _from_bin_rows(g, sums / bins.count[:, None])
    return output


def _scatter(grad_data, rows, contributions):
    """``grad_data[rows[k]] += contributions[k]`` for every k, repeated rows summed."""
    order = numpy.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = numpy.flatnonzero(numpy.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    grad_data[sorted_rows[starts]] += numpy.add.reduceat(contributions[order], starts, axis=0)


def backward(grad_output, input, rois, offset, g):
    """Gradients ``(input, offset)`` of ``deform_roi_pool``; the offset's is None without one."""
    dtype = input.dtype
    data = _channel_rows(input)
    grad_data = numpy.zeros_like(data)
    grad_offset = None if offset is None else numpy.zeros(offset.shape, dtype=dtype)
    grad_bins = numpy.ascontiguousarray(grad_output.transpose(0, 2, 3, 1)).reshape(
        -1, g.channels)
    for start, stop, sample_chunks in _chunks(g, dtype.itemsize):
        bins = _bins(g, rois[start:stop], None if offset is None else offset[start:stop])
        bin_range = slice(start * g.pooled_h * g.pooled_w, stop * g.pooled_h * g.pooled_w)
        grad_means = grad_bins[bin_range] / bins.count[:, None]
        grad_y = numpy.zeros(bins.ends.size, dtype=dtype)
        grad_x = numpy.zeros(bins.ends.size, dtype=dtype)
        for first, last in sample_chunks(bins.samples):
            s = _samples(g, bins, first, last, derivatives=offset is not None)
            if not s.bin.size:
                continue
            p = _pairs(s)
            grad = numpy.take(grad_means, p.bin, axis=0, mode="clip")
            if offset is not None:
                dots = numpy.einsum("pc,pc->p", numpy.take(data, p.rows, axis=0, mode="clip"),
                                    grad)
                grad_y[p.bins] += numpy.add.reduceat(p.weight_dy * dots, p.segments)
                grad_x[p.bins] += numpy.add.reduceat(p.weight_dx * dots, p.segments)
            grad *= p.weight[:, None]
            _scatter(grad_data, p.rows, grad)
        if offset is not None:
            shape = (stop - start, g.pooled_h, g.pooled_w)
            grad_offset[start:stop, 0] = (grad_x * bins.shift_x).reshape(shape)
            grad_offset[start:stop, 1] = (grad_y * bins.shift_y).reshape(shape)
    grad_input = grad_data.reshape(g.batch, g.height, g.width, g.channels).transpose(0, 3, 1, 2)
    return numpy.ascontiguousarray(grad_input), grad_offset
