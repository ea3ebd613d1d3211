"""Deformable position-sensitive RoI pooling in vectorised NumPy (OPS_SPEC section 3).

RoIs are processed in chunks bounded by the workspace limit. A sample's position
depends on its output channel only through the channel's class, so positions
and bilinear corners are built once per (RoI, class, bin, sample), shaped
``(rois, classes, P, P, S*S)`` (P = pooled_size, S = sample_per_part); corner
values are then gathered per (RoI, class, channel of the class, bin, sample).
Every product and sum that decides where a sample lies is computed in the same
order as in ``kernels/deform_psroi_pool.cu``, so both paths skip the same samples.

The input gradient is scattered with ``numpy.bincount``; the offset gradient of
a part cell is the sum over the bins that map to it, taken as a product with
one-hot (part cell x bin) matrices.
"""

from __future__ import annotations

import dataclasses

import numpy

from cudeform._cpu.bilinear import clamped_corners
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


def input_channels(g):
    """Input channel of each output ``(class, channel of the class, ph, pw)``."""
    bins = numpy.arange(g.pooled_size)
    group = numpy.minimum(bins * g.group_size // g.pooled_size, g.group_size - 1)
    ctop = numpy.arange(g.output_dim).reshape(g.num_classes, g.channels_each_class)
    return (ctop[:, :, None, None] * g.group_size + group[:, None]) * g.group_size + group


@dataclasses.dataclass
class _Samples:
    """The samples of a chunk of RoIs; skipped samples have zero weights."""

    batch: numpy.ndarray      # (rois,) image of each RoI (0 for a RoI that pools to zero)
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
    return _Samples(batch, inside.sum(axis=-1), corners, roi_w, roi_h)


def _plane_starts(g, samples):
    """Flat input index of each output's plane, ``(rois, classes, channels/class, P, P, 1)``."""
    channels = input_channels(g)
    starts = (samples.batch[:, None, None, None, None] * g.channels + channels) * (
        g.height * g.width)
    return starts[..., None]


def _gather(input_flat, starts, corners, q):
    """Values of corner ``q`` of every sample, per channel of each class.

    Indices are in bounds by construction (skipped samples read index 0 of their
    plane); mode="clip" skips numpy's bounds check and buffered copy.
    """
    return numpy.take(input_flat, starts + corners.index[q][:, :, None], mode="clip")


def _chunks(g, itemsize):
    # Per RoI and corner: index, scatter weight (as float64 in bincount), value and
    # product arrays per (channel, bin, sample); positions and the four corners
    # (index, weight, two slopes) per (class, bin, sample).
    samples = g.pooled_size ** 2 * g.sample_per_part ** 2
    per_roi = samples * (g.output_dim * (32 + 2 * itemsize)
                         + g.num_classes * (64 + 16 * itemsize))
    return batch_chunks(g.rois, per_roi)


def _slice(array, start, stop):
    return None if array is None else array[start:stop]


def _per_sample(values, count):
    """``values / count`` per bin, broadcast over the channels of each class; 0 where a
    bin has no sample (the mean of no sample is 0)."""
    count = count[:, :, None].astype(values.dtype)
    return numpy.divide(values, count, out=numpy.zeros_like(values), where=count > 0)


def forward(input, rois, offset, g):
    """``deform_psroi_pool`` on C-contiguous NumPy arrays of one dtype, validated into ``g``."""
    output = numpy.zeros(g.output_shape, dtype=input.dtype)
    if input.size == 0:  # no image: every RoI pools to zero
        return output
    input_flat = input.reshape(-1)
    for start, stop in _chunks(g, input.dtype.itemsize):
        samples = _samples(g, rois[start:stop], _slice(offset, start, stop), False)
        starts = _plane_starts(g, samples)
        total = 0
        for q in range(4):
            total = total + numpy.einsum("rkjabs,rkabs->rkjab",
                                         _gather(input_flat, starts, samples.corners, q),
                                         samples.corners.weight[q])
        output[start:stop] = _per_sample(total, samples.count).reshape(
            stop - start, *g.output_shape[1:])
    return output


def _part_sum(g, grad, dtype):
    """Sum ``(rois, classes, P, P)`` bin values into their ``(part, part)`` cells."""
    one_hot = (part_cells(g, dtype)[None, :] == numpy.arange(g.part_size)[:, None])
    one_hot = one_hot.astype(dtype)
    return numpy.einsum("up,rkpq,vq->rkuv", one_hot, grad, one_hot)


def backward(grad_output, input, rois, offset, g):
    """Gradients ``(input, offset)`` of ``deform_psroi_pool``; ``offset``'s is None without one."""
    dtype = input.dtype
    grad_offset = None if offset is None else numpy.zeros(offset.shape, dtype=dtype)
    if input.size == 0:
        return numpy.zeros_like(input), grad_offset
    grad_flat = numpy.zeros(input.size, dtype=numpy.float64)
    input_flat = input.reshape(-1)
    shape = (g.num_classes, g.channels_each_class, g.pooled_size, g.pooled_size)
    for start, stop in _chunks(g, dtype.itemsize):
        n = stop - start
        samples = _samples(g, rois[start:stop], _slice(offset, start, stop), offset is not None)
        starts = _plane_starts(g, samples)
        corners = samples.corners
        # Gradient of each output divided by its bin's sample count (the mean).
        grad = _per_sample(grad_output[start:stop].reshape(n, *shape), samples.count)
        grad_x = grad_y = 0
        for q in range(4):
            grad_flat += numpy.bincount(
                (starts + corners.index[q][:, :, None]).reshape(-1),
                (grad[..., None] * corners.weight[q][:, :, None]).reshape(-1),
                minlength=input.size)
            if offset is not None:
                # Sum over the channels of each class, then weight by the corner slopes.
                dots = numpy.einsum("rkjabs,rkjab->rkabs",
                                    _gather(input_flat, starts, corners, q), grad)
                grad_x = grad_x + numpy.einsum("rkabs,rkabs->rkab", dots, corners.weight_dx[q])
                grad_y = grad_y + numpy.einsum("rkabs,rkabs->rkab", dots, corners.weight_dy[q])
        if offset is not None:
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
    return grad_flat.reshape(input.shape).astype(dtype), grad_offset
