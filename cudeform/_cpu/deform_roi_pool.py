"""Deformable RoI pooling in vectorised NumPy (OPS_SPEC section 2, mmcv semantics).

The sampling grid of a bin depends on its RoI (``sampling_ratio=0`` picks
``ceil(roi_h/ph) x ceil(roi_w/pw)``), so the samples of all bins are flattened
into one list ordered by bin: the cumulative sum of the per-bin sample counts
and ``searchsorted`` give each sample its bin and its place in the bin's grid.
The four corners of every sample are rows of the input stored channel-last,
merged per (bin, row) pair with their weights summed, then weighted and summed per
bin by :func:`cudeform._cpu.scatter.sums_by_key`. The
backward is the bins' gradients, times the corner weights, summed per input row
(the input gradient), and each pair's input row dotted with its bin's gradient
(:func:`cudeform._cpu.scatter.dots_by_key`), times the weights' slopes and summed
per bin (the offset gradient). No ``numpy.add.at``, no loop over RoIs, bins or
channels.

The RoIs are split over the CPU's cores (:mod:`cudeform._cpu.parallel`), each
worker's memory near its share of the workspace limit: RoIs are processed in
chunks, and the samples of a chunk of RoIs in ranges of samples, since one large
RoI can hold more samples than the limit allows.

Bad RoIs (batch index outside [0, N) after truncation toward zero, NaN or
infinite corners or size) have no samples. A bin visits only the window of its
grid whose samples can land in [-1, H] x [-1, W], so a huge RoI costs about the
map's size, not its own. :func:`_bins` and :func:`_sample_window` mirror
``roi_bin`` and ``sample_window`` of kernels/deform_roi_pool.cu operation for
operation; see that file for the rules.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy

from cudeform._cpu import parallel
from cudeform._cpu.bilinear import roi_align_corners
from cudeform._cpu.scatter import dots_by_key, merge_by_key, sums_by_key
from cudeform._workspace import batch_chunks, workspace_limit

# Bytes per bin of the per-bin arrays below, besides its rows of C channels.
_BIN_BYTES = 160
# Bytes per sample of indices, positions and corners, besides its rows of C channels.
_SAMPLE_BYTES = 1024


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
class _Pairs:
    """The (bin, input row) pairs of samples ``start:stop`` of the flat list: the
    entries of the pooling's sparse (bins x rows) matrix. The corners of a bin's
    samples that fall on one row are merged, their weights summed."""

    bin: numpy.ndarray       # (P,) bin of each pair
    rows: numpy.ndarray      # (P,) channel-last input row
    weight: numpy.ndarray    # (P, 1) summed bilinear weights
    slopes: object           # (P, 2) summed d weight / d (y, x), or None


def _pairs(g, bins, start, stop, derivatives):
    real = bins.start_y.dtype.type
    index = numpy.arange(start, stop)
    b = numpy.searchsorted(bins.ends, index, side="right")
    ky, kx = numpy.divmod(index - bins.starts[b], bins.n_x[b])
    y = bins.start_y[b] + (bins.first_y[b] + ky.astype(real) + real(0.5)) * bins.step_y[b]
    x = bins.start_x[b] + (bins.first_x[b] + kx.astype(real) + real(0.5)) * bins.step_x[b]
    corners = roi_align_corners(y, x, g.height, g.width, derivatives)
    # Bilinear weights sum to 1 on the map and are all 0 off it: keep the samples on it.
    inside = numpy.flatnonzero(corners.weight.sum(axis=0) > 0)
    b = b[inside]
    rows = bins.image[b] * (g.height * g.width) + corners.index[:, inside]
    weights = [corners.weight[:, inside]]
    if derivatives:
        weights += [corners.weight_dy[:, inside], corners.weight_dx[:, inside]]
    # Elements are (corner, sample), keyed by (bin, row).
    total_rows = g.batch * g.height * g.width
    keys, summed = merge_by_key((b * total_rows + rows).ravel(),
                                numpy.stack([w.ravel() for w in weights], axis=1))
    pair_bin, pair_rows = numpy.divmod(keys, total_rows)
    return _Pairs(pair_bin, pair_rows, summed[:, :1], summed[:, 1:] if derivatives else None)


def _channel_rows(images):
    """``images (N, C, H, W)`` as channel-last rows ``(N*H*W + 1, C)``, the last one zero
    (see :func:`cudeform._cpu.scatter.sums_by_key`); the images are split over the workers."""
    n, channels, height, width = images.shape
    rows = numpy.empty((n * height * width + 1, channels), dtype=images.dtype)
    planes = rows[:-1].reshape(n, height, width, channels)
    rows[-1] = 0

    def copy(part):
        planes[part] = images[part].transpose(0, 2, 3, 1)

    parallel.split(n, copy)
    return rows


def _summed_images(g, parts):
    """The sum of the workers' channel-last input gradients ``parts``, as NCHW."""
    grad_input = numpy.empty((g.batch, g.channels, g.height, g.width), dtype=parts[0].dtype)
    planes = [part[:-1].reshape(g.batch, g.height, g.width, g.channels) for part in parts]

    def add(images):
        total = planes[0][images]
        if len(planes) > 1:
            total = numpy.add(total, planes[1][images])
            for plane in planes[2:]:
                total += plane[images]
        grad_input[images] = total.transpose(0, 3, 1, 2)

    parallel.split(g.batch, add)
    return grad_input


def _roi_chunks(g, itemsize, part):
    """RoI ranges covering the slice ``part`` of the RoIs, each within one worker's
    share of the workspace limit."""
    bin_bytes = (_BIN_BYTES + 3 * g.channels * itemsize) * parallel.worker_count()
    for start, stop in batch_chunks(part.stop - part.start, g.pooled_h * g.pooled_w * bin_bytes):
        yield part.start + start, part.start + stop


def _sample_ranges(g, bins, itemsize):
    """Ranges of the flat sample list of a RoI chunk, within one worker's share of
    the workspace limit. A range ends at the end of a bin unless one bin alone
    holds more samples than a range (it is then cut every so many samples from its
    start), so that a bin's sum does not depend on where its RoI chunk starts: the
    forward is the same for any number of workers."""
    sample_bytes = (_SAMPLE_BYTES + 6 * g.channels * itemsize) * parallel.worker_count()
    per_range = max(1, workspace_limit() // sample_bytes)
    start, total = 0, bins.samples
    while start < total:
        stop = start + per_range
        if stop < total:
            last_end = bins.ends[numpy.searchsorted(bins.ends, stop, side="right") - 1]
            if last_end > start:
                stop = int(last_end)
            else:  # the bin holding ``start`` has more than per_range samples left
                b = numpy.searchsorted(bins.ends, start, side="right")
                first = int(bins.starts[b])
                cut = first + ((start - first) // per_range + 1) * per_range
                stop = min(int(bins.ends[b]), cut)
        stop = min(stop, total)
        yield start, stop
        start = stop


def _from_bin_rows(g, rows):
    """Bin rows ``(R*ph*pw, C)`` as ``(R, C, ph, pw)``."""
    return rows.reshape(-1, g.pooled_h, g.pooled_w, g.channels).transpose(0, 3, 1, 2)


def _slice(array, start, stop):
    return None if array is None else array[start:stop]


def _forward_part(g, data, rois, offset, output, part):
    """The outputs of the RoIs ``part`` (a slice), written into ``output``."""
    for start, stop in _roi_chunks(g, data.dtype.itemsize, part):
        bins = _bins(g, rois[start:stop], _slice(offset, start, stop))
        sums = numpy.zeros((bins.ends.size, g.channels), dtype=data.dtype)
        for first, last in _sample_ranges(g, bins, data.dtype.itemsize):
            p = _pairs(g, bins, first, last, derivatives=False)
            present, bin_sums = sums_by_key(p.bin, data, p.rows, p.weight)
            sums[present] += bin_sums[:, 0]
        output[start:stop] = _from_bin_rows(g, sums / bins.count[:, None])


def forward(input, rois, offset, g):
    """``deform_roi_pool`` on C-contiguous NumPy arrays of one dtype, validated into ``g``.

    The RoIs are split over the workers (see :mod:`cudeform._cpu.parallel`).
    """
    output = numpy.zeros(g.output_shape, dtype=input.dtype)
    parallel.split(g.rois, functools.partial(_forward_part, g, _channel_rows(input), rois,
                                             offset, output))
    return output


def _backward_part(g, data, grad_output, rois, offset, grad_offset, part):
    """Gradients of the RoIs ``part``: the offsets' are written into ``grad_offset``;
    returns this part's input gradient as channel-last rows, summed by the caller."""
    dtype = data.dtype
    grad_data = numpy.zeros_like(data)
    for start, stop in _roi_chunks(g, dtype.itemsize, part):
        bins = _bins(g, rois[start:stop], _slice(offset, start, stop))
        # The mean's gradient per bin (channel-last), with a zero row after them.
        grad_means = numpy.empty((bins.ends.size + 1, g.channels), dtype=dtype)
        grad_means[-1] = 0
        shape = (stop - start, g.pooled_h, g.pooled_w)
        numpy.divide(grad_output[start:stop].transpose(0, 2, 3, 1), bins.count.reshape(*shape, 1),
                     out=grad_means[:-1].reshape(*shape, g.channels))
        grad_start = numpy.zeros((bins.ends.size, 2), dtype=dtype)  # d loss / d (y, x)
        for first, last in _sample_ranges(g, bins, dtype.itemsize):
            p = _pairs(g, bins, first, last, derivatives=offset is not None)
            if offset is not None:
                # Per pair: its input row dotted with its bin's gradient, times the slopes.
                dots = dots_by_key(p.bin, data, p.rows, grad_means)
                present, slopes = merge_by_key(p.bin, p.slopes * dots[:, None])
                grad_start[present] += slopes
            rows, sums = sums_by_key(p.rows, grad_means, p.bin, p.weight)
            grad_data[rows] += sums[:, 0]
        if offset is not None:
            grad_offset[start:stop, 0] = (grad_start[:, 1] * bins.shift_x).reshape(shape)
            grad_offset[start:stop, 1] = (grad_start[:, 0] * bins.shift_y).reshape(shape)
    return grad_data


def backward(grad_output, input, rois, offset, g):
    """Gradients ``(input, offset)`` of ``deform_roi_pool``; the offset's is None without one.

    The RoIs are split over the workers; each sums its own input gradient, and
    those are added in worker order, so results are reproducible for a given
    number of workers (and equal to within rounding for different numbers).
    """
    grad_offset = None if offset is None else numpy.zeros(offset.shape, dtype=input.dtype)
    parts = parallel.split(g.rois, functools.partial(
        _backward_part, g, _channel_rows(input), grad_output, rois, offset, grad_offset))
    return _summed_images(g, parts), grad_offset
