"""Deformable position-sensitive RoI pooling in vectorised NumPy (OPS_SPEC section 3).

A sample's position depends on its output channel only through the channel's
class, and the input channel an output reads depends only on its channel and
its bin's group cell. So the input is stored as rows of the channels of one
class, one row per (image, group cell, pixel, class): every bilinear corner of
a sample is one contiguous row for all the channels of its class. Positions and
corners are built once per (RoI, class, bin, sample), every bin has the same
``S*S`` samples, and a bin's output is one ``take`` of its ``4*S*S`` corner rows
and one small matrix product with their weights. Every product and sum that
decides where a sample lies is computed in the same order as in
``kernels/deform_psroi_pool.cu``, so both paths skip the same samples; skipped
samples read a zero row.

The RoIs are split over the workers (:mod:`cudeform._cpu.parallel`), in chunks
within each worker's share of the workspace limit. The input gradient is the
bins' gradients, times the corner weights, summed per input row by
:func:`cudeform._cpu.scatter.sums_by_key`; the offset gradient of a part cell is
the sum over the bins that map to it, taken as a product with one-hot (part
cell x bin) matrices.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy

from cudeform._cpu import parallel
from cudeform._cpu.bilinear import clamped_corners
from cudeform._cpu.scatter import sums_by_key
from cudeform._workspace import batch_chunks


def round_half_away(x):
    """C ``round`` (halves away from zero), exact for every float.

    ``numpy.round`` rounds halves to even, and ``floor(|x| + 0.5)`` is wrong where
    ``|x| + 0.5`` rounds up (0.49999997 in float32); ``x - trunc(x)`` is exact.
    """
    whole = numpy.trunc(x)
    return numpy.where(numpy.abs(x - whole) >= 0.5, whole + numpy.sign(x), whole)


def part_cells(g, dtype):
    """Part cell of each bin, ``floor(p / pooled_size * part_size)`` in ``dtype`` as MXNet."""
    t = dtype.type
    bins = numpy.arange(g.pooled_size, dtype=dtype)
    cells = numpy.floor(bins / t(g.pooled_size) * t(g.part_size)).astype(numpy.int64)
    return numpy.minimum(cells, g.part_size - 1)


def group_cells(g):
    """Group cell ``gh * G + gw`` of each bin ``(ph, pw)``, as a ``(P, P)`` array."""
    bins = numpy.arange(g.pooled_size)
    cell = numpy.minimum(bins * g.group_size // g.pooled_size, g.group_size - 1)
    return cell[:, None] * g.group_size + cell


@dataclasses.dataclass
class _Samples:
    """The samples of a chunk of RoIs; skipped samples have zero weights."""

    batch: numpy.ndarray      # (rois,) image of each RoI (0 for a RoI that pools to zero)
    kept: numpy.ndarray       # (rois, classes, P, P, S*S) whether a sample is not skipped
    count: numpy.ndarray      # (rois, classes, P, P) samples not skipped, per bin
    corners: object           # PlaneCorners, arrays (4, rois, classes, P, P, S*S)
    roi_w: numpy.ndarray      # (rois,) RoI size on the feature map
    roi_h: numpy.ndarray


def _samples(g, rois, offset, derivatives):
    """Sample positions and bilinear corners of the RoIs ``rois`` (a chunk)."""
    dtype = rois.dtype
    t = dtype.type
    n, size, classes = rois.shape[0], g.pooled_size, g.num_classes
    index, coords = rois[:, 0], rois[:, 1:]
    with numpy.errstate(invalid="ignore"):
        valid = (index > -1) & (index < g.batch) & numpy.isfinite(coords).all(axis=1)
    batch = numpy.trunc(numpy.where(valid, index, 0)).astype(numpy.int64)
    x1, y1, x2, y2 = round_half_away(numpy.where(valid[:, None], coords, 0)).T

    with numpy.errstate(over="ignore", invalid="ignore"):
        scale, half = t(g.spatial_scale), t(0.5)
        x1s, y1s = x1 * scale - half, y1 * scale - half
        roi_w = ((x2 + t(1)) * scale - half) - x1s
        roi_h = ((y2 + t(1)) * scale - half) - y1s
        roi_w = numpy.where(roi_w > t(0.1), roi_w, t(0.1))
        roi_h = numpy.where(roi_h > t(0.1), roi_h, t(0.1))
        bin_w, bin_h = roi_w / t(size), roi_h / t(size)
        sub_w, sub_h = bin_w / t(g.sample_per_part), bin_h / t(g.sample_per_part)

        bins = numpy.arange(size, dtype=dtype)
        wstart = (bins * bin_w[:, None] + x1s[:, None])[:, None, None, :]  # (n, 1, 1, pw)
        hstart = (bins * bin_h[:, None] + y1s[:, None])[:, None, :, None]  # (n, 1, ph, 1)
        if offset is None:
            shape = (n, classes, size, size)
            wstart, hstart = numpy.broadcast_to(wstart, shape), numpy.broadcast_to(hstart, shape)
        else:
            cells = part_cells(g, dtype)
            pairs = offset.reshape(n, classes, 2, g.part_size, g.part_size)
            trans = pairs[:, :, :, cells[:, None], cells[None, :]] * t(g.trans_std)
            wstart = wstart + trans[:, :, 0] * roi_w[:, None, None, None]
            hstart = hstart + trans[:, :, 1] * roi_h[:, None, None, None]
        steps = numpy.arange(g.sample_per_part, dtype=dtype)
        # (n, classes, ph, pw, ih, iw): h varies along ih, w along iw.
        w = wstart[..., None, None] + (steps * sub_w[:, None])[:, None, None, None, None, :]
        h = hstart[..., None, None] + (steps * sub_h[:, None])[:, None, None, None, :, None]
        # NaN fails both tests, so a NaN position is skipped.
        inside_w = (w >= t(-0.5)) & (w <= t(g.width) - half)
        inside_h = (h >= t(-0.5)) & (h <= t(g.height) - half)
    full = (n, classes, size, size, g.sample_per_part, g.sample_per_part)
    inside = (inside_h & inside_w & valid[:, None, None, None, None, None]).reshape(
        n, classes, size, size, -1)
    # Skipped (and NaN) positions are moved to 0 before the clamp, then weighted by 0.
    zero = t(0)
    h = numpy.where(inside, numpy.broadcast_to(h, full).reshape(inside.shape), zero)
    w = numpy.where(inside, numpy.broadcast_to(w, full).reshape(inside.shape), zero)
    corners = clamped_corners(h, w, g.height, g.width, derivatives)
    keep = inside.astype(dtype)
    corners.weight *= keep
    if derivatives:
        corners.weight_dy *= keep
        corners.weight_dx *= keep
    return _Samples(batch, inside, inside.sum(axis=-1), corners, roi_w, roi_h)


def _channel_rows(g, input):
    """``input (N, output_dim*G*G, H, W)`` as rows ``(N*G*G*H*W*classes + 1, C/class)``:
    row ``(((n*G + gh)*G + gw)*H*W + pixel)*classes + class`` holds the channels of
    the class that bins of group cell ``(gh, gw)`` read; the last row is zero."""
    n, size = input.shape[0], g.group_size
    rows = numpy.empty((n * size * size * g.height * g.width * g.num_classes + 1,
                        g.channels_each_class), dtype=input.dtype)
    rows[-1] = 0
    by_cell = input.reshape(n, g.num_classes, g.channels_each_class, size, size,
                            g.height, g.width)
    planes = rows[:-1].reshape(n, size, size, g.height, g.width, g.num_classes, -1)

    def copy(cell_rows):  # a slice of the (image, gh) pairs
        for image, gh in (divmod(k, size) for k in range(cell_rows.start, cell_rows.stop)):
            planes[image, gh] = by_cell[image, :, :, gh].transpose(2, 3, 4, 0, 1)

    parallel.split(n * size, copy)
    return rows


def _corner_rows(g, samples):
    """Data row of every corner of every sample, ``(rois, classes, P, P, 4*S*S)``
    ordered (corner, sample) along the last axis; skipped samples read the zero row."""
    plane = g.height * g.width
    first = (samples.batch[:, None, None] * g.group_size ** 2 + group_cells(g)) * plane
    rows = ((first[None, :, None, :, :, None] + samples.corners.index) * g.num_classes
            + numpy.arange(g.num_classes)[:, None, None, None])
    rows = numpy.where(samples.kept, rows, _zero_row(g))
    return numpy.moveaxis(rows, 0, -2).reshape(*rows.shape[1:-1], -1)


def _zero_row(g):
    return g.batch * g.group_size ** 2 * g.height * g.width * g.num_classes


def _corner_weights(values, rois):
    """``values (4, rois, classes, P, P, S*S)`` as ``(rois, classes, P, P, 1, 4*S*S)``."""
    return numpy.moveaxis(values, 0, -2).reshape(*values.shape[1:-1], 1, -1)


def _chunks(g, itemsize, part):
    """RoI ranges covering the slice ``part`` of the RoIs, each within one worker's
    share of the workspace limit."""
    # Per RoI: the gathered corner rows and their weights and products per bin, and
    # positions and the four corners (index, weight, two slopes) per sample.
    samples = g.pooled_size ** 2 * g.sample_per_part ** 2
    per_roi = samples * (g.output_dim * 6 * itemsize + g.num_classes * (96 + 24 * itemsize))
    for start, stop in batch_chunks(part.stop - part.start, per_roi * parallel.worker_count()):
        yield part.start + start, part.start + stop


def _slice(array, start, stop):
    return None if array is None else array[start:stop]


def _per_sample(values, count):
    """``values (rois, classes, P, P, C/class)`` divided by the samples of their bin;
    0 where a bin has no sample (the mean of no sample is 0)."""
    count = count[..., None].astype(values.dtype)
    return numpy.divide(values, count, out=numpy.zeros_like(values), where=count > 0)


def _by_class(g, array):
    """``(rois, output_dim, P, P)`` as the view ``(rois, classes, P, P, C/class)``."""
    n, size = array.shape[0], g.pooled_size
    return array.reshape(n, g.num_classes, g.channels_each_class, size, size).transpose(
        0, 1, 3, 4, 2)


def _forward_part(g, data, rois, offset, output, part):
    """The outputs of the RoIs ``part`` (a slice), written into ``output``."""
    for start, stop in _chunks(g, data.dtype.itemsize, part):
        samples = _samples(g, rois[start:stop], _slice(offset, start, stop), False)
        # Indices are in bounds by construction; mode="clip" skips the bounds check.
        values = numpy.take(data, _corner_rows(g, samples), axis=0, mode="clip")
        sums = numpy.matmul(_corner_weights(samples.corners.weight, stop - start), values)
        _by_class(g, output[start:stop])[...] = _per_sample(sums[..., 0, :], samples.count)


def forward(input, rois, offset, g):
    """``deform_psroi_pool`` on C-contiguous NumPy arrays of one dtype, validated into ``g``."""
    output = numpy.zeros(g.output_shape, dtype=input.dtype)
    if input.size == 0:  # no image: every RoI pools to zero
        return output
    parallel.split(g.rois, functools.partial(_forward_part, g, _channel_rows(g, input), rois,
                                             offset, output))
    return output


def _part_sum(g, grad, dtype):
    """Sum ``(rois, classes, P, P)`` bin values into their ``(part, part)`` cells."""
    one_hot = (part_cells(g, dtype)[None, :] == numpy.arange(g.part_size)[:, None])
    one_hot = one_hot.astype(dtype)
    return numpy.einsum("up,rkpq,vq->rkuv", one_hot, grad, one_hot)


def _backward_part(g, data, grad_output, rois, offset, grad_offset, part):
    """Gradients of the RoIs ``part``: the offsets' are written into ``grad_offset``;
    returns this part's input gradient as data rows, summed by the caller."""
    dtype = data.dtype
    grad_rows = numpy.zeros_like(data)
    for start, stop in _chunks(g, dtype.itemsize, part):
        n = stop - start
        samples = _samples(g, rois[start:stop], _slice(offset, start, stop), offset is not None)
        corners, rows = samples.corners, _corner_rows(g, samples)
        # Gradient of each output divided by its bin's sample count (the mean), per bin,
        # with a zero row after them.
        grad_bins = numpy.zeros((samples.count.size + 1, g.channels_each_class), dtype=dtype)
        grad = grad_bins[:-1].reshape(*samples.count.shape, -1)
        grad[...] = _per_sample(_by_class(g, grad_output[start:stop]), samples.count)
        weights = _corner_weights(corners.weight, n)
        elements = rows.size // samples.count.size  # 4*S*S per bin
        keep = rows.reshape(-1) != _zero_row(g)
        present, sums = sums_by_key(rows.reshape(-1)[keep], grad_bins,
                                    numpy.repeat(numpy.arange(samples.count.size),
                                                 elements)[keep],
                                    weights.reshape(-1, 1)[keep])
        grad_rows[present] += sums[:, 0]
        if offset is not None:
            values = numpy.take(data, rows, axis=0, mode="clip")
            slopes = numpy.concatenate([_corner_weights(corners.weight_dx, n),
                                        _corner_weights(corners.weight_dy, n)], axis=-2)
            # Each corner row dotted with its bin's gradient first: no (2, C) products.
            grad_x, grad_y = numpy.moveaxis(
                numpy.matmul(slopes, numpy.matmul(values, grad[..., None]))[..., 0], -1, 0)
            # d w / d offset = trans_std * roi_w (only where a bin has samples, so the
            # RoI size is finite).
            t = dtype.type
            sampled = samples.count > 0
            with numpy.errstate(over="ignore", invalid="ignore"):
                scale_x = (t(g.trans_std) * samples.roi_w)[:, None, None, None]
                scale_y = (t(g.trans_std) * samples.roi_h)[:, None, None, None]
                grad_x = numpy.where(sampled, grad_x * scale_x, 0).astype(dtype)
                grad_y = numpy.where(sampled, grad_y * scale_y, 0).astype(dtype)
            pairs = grad_offset[start:stop].reshape(n, g.num_classes, 2, g.part_size, -1)
            pairs[:, :, 0] = _part_sum(g, grad_x, dtype)
            pairs[:, :, 1] = _part_sum(g, grad_y, dtype)
    return grad_rows


def _summed_input(g, input, parts):
    """The sum of the workers' gradient rows ``parts``, as an array shaped like ``input``."""
    n, size = input.shape[0], g.group_size
    grad_input = numpy.empty(input.shape, dtype=input.dtype)
    by_cell = grad_input.reshape(n, g.num_classes, g.channels_each_class, size, size,
                                 g.height, g.width)
    planes = [part[:-1].reshape(n, size, size, g.height, g.width, g.num_classes, -1)
              for part in parts]

    def add(cell_rows):  # a slice of the (image, gh) pairs
        for image, gh in (divmod(k, size) for k in range(cell_rows.start, cell_rows.stop)):
            total = planes[0][image, gh]
            if len(planes) > 1:
                total = numpy.add(total, planes[1][image, gh])
                for plane in planes[2:]:
                    total += plane[image, gh]
            by_cell[image, :, :, gh] = total.transpose(3, 4, 0, 1, 2)

    parallel.split(n * size, add)
    return grad_input


def backward(grad_output, input, rois, offset, g):
    """Gradients ``(input, offset)`` of ``deform_psroi_pool``; ``offset``'s is None without one.

    The RoIs are split over the workers; each sums its own input gradient, and
    those are added in worker order, so results are reproducible for a given
    number of workers (and equal to within rounding for different numbers).
    """
    dtype = input.dtype
    grad_offset = None if offset is None else numpy.zeros(offset.shape, dtype=dtype)
    if input.size == 0:
        return numpy.zeros_like(input), grad_offset
    parts = parallel.split(g.rois, functools.partial(
        _backward_part, g, _channel_rows(g, input), grad_output, rois, offset, grad_offset))
    return _summed_input(g, input, parts), grad_offset
