"""Bilinear sampling weights and their coordinate derivatives, in NumPy.

Sampling reads a plane stored with one zero row/column before it and two after
it (``PAD_BEFORE``/``PAD_AFTER``). Under the DCNv2 border rule a point inside
``(-1, H) x (-1, W)`` then has all four corners inside the padded plane, and the
zero padding stands for the corners outside the map. A point outside that range,
or at a NaN or infinite position, is sent to the all-zero corner block at padded
``(H+1, W+1)`` with zero weights, so gathers never go out of bounds.
"""

from __future__ import annotations

import dataclasses

import numpy

PAD_BEFORE = 1
PAD_AFTER = 2


def padded_size(size):
    return size + PAD_BEFORE + PAD_AFTER


@dataclasses.dataclass
class Corners:
    """Corners of a set of points in a padded plane of width ``padded_width``.

    Corner ``q`` of point ``i`` sits at flat padded index ``index[i] + steps[q]``,
    corners ordered (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1).
    """

    index: numpy.ndarray      # int64, flat padded index of the (y0, x0) corner
    steps: tuple              # flat offsets of the four corners
    weight: numpy.ndarray     # (..., 4) bilinear weights, 0 outside the range
    inside: numpy.ndarray     # bool, whether the point is inside the range
    fractions: object         # (hy, ly, hx, lx), 0 outside the range, if derivatives asked


def zero_padded_corners(y, x, height, width, derivatives=False):
    """Corners of points ``(y, x)`` under the DCNv2 border rule (see module doc).

    With ``derivatives``, the interpolation fractions are kept for
    :func:`coordinate_gradients`.
    """
    with numpy.errstate(invalid="ignore"):
        inside = (y > -1) & (y < height) & (x > -1) & (x < width)
    zero = numpy.zeros((), dtype=y.dtype)
    y = numpy.where(inside, y, zero)
    x = numpy.where(inside, x, zero)
    y_floor = numpy.floor(y)
    x_floor = numpy.floor(x)
    ly = y - y_floor  # 0 outside, as y and x are
    lx = x - x_floor
    hy = numpy.where(inside, 1 - ly, zero)
    hx = numpy.where(inside, 1 - lx, zero) if derivatives else 1 - lx
    padded_width = padded_size(width)
    index = numpy.where(
        inside,
        (y_floor.astype(numpy.int64) + PAD_BEFORE) * padded_width
        + x_floor.astype(numpy.int64) + PAD_BEFORE,
        (height + PAD_BEFORE) * padded_width + width + PAD_BEFORE,
    )
    weight = numpy.empty(y.shape + (4,), dtype=y.dtype)
    for q, (wy, wx) in enumerate(((hy, hx), (hy, lx), (ly, hx), (ly, lx))):
        numpy.multiply(wy, wx, out=weight[..., q])
    steps = (0, 1, padded_width, padded_width + 1)
    return Corners(index, steps, weight, inside, (hy, ly, hx, lx) if derivatives else None)


def coordinate_gradients(corner_grads, corners):
    """Gradients ``(d/dy, d/dx)`` of a sample whose corner ``q`` has gradient
    ``corner_grads[..., q]`` (the derivative of the bilinear weights; 0 outside)."""
    hy, ly, hx, lx = corners.fractions
    g00, g01, g10, g11 = (corner_grads[..., q] for q in range(4))
    grad_y = (g10 - g00) * hx + (g11 - g01) * lx
    grad_x = (g01 - g00) * hy + (g11 - g10) * ly
    return grad_y, grad_x


@dataclasses.dataclass
class PlaneCorners:
    """Corners of a set of points in one unpadded H x W plane (RoI pooling rules).

    Corner ``q`` of point ``i`` is at flat index ``index[q, i]``; invalid points
    have index 0 and zero weights, so gathers stay in bounds.
    """

    index: numpy.ndarray      # (4, ...) int64 flat indices row * W + col
    weight: numpy.ndarray     # (4, ...) bilinear weights
    weight_dy: object         # (4, ...) d weight / d y, or None if not asked for
    weight_dx: object         # (4, ...) d weight / d x, or None if not asked for


def _plane_corners(y, x, rows, cols, width, dwy, dwx, valid, derivatives):
    """Weights of corners (rows[a], cols[b]) of points (y, x); q = 2a + b, in the
    dtype of ``y`` (the integer corner coordinates are exact in it)."""
    ly = y - rows[0].astype(y.dtype)
    lx = x - cols[0].astype(x.dtype)
    wy = (1 - ly, ly)
    wx = (1 - lx, lx)
    valid = valid.astype(y.dtype)
    index = numpy.stack([rows[a] * width + cols[b] for a in (0, 1) for b in (0, 1)])
    index = numpy.where(valid > 0, index, 0)
    weight = numpy.stack([wy[a] * wx[b] for a in (0, 1) for b in (0, 1)]) * valid
    weight_dy = weight_dx = None
    if derivatives:
        weight_dy = numpy.stack([dwy[a] * wx[b] for a in (0, 1) for b in (0, 1)]) * valid
        weight_dx = numpy.stack([wy[a] * dwx[b] for a in (0, 1) for b in (0, 1)]) * valid
    return PlaneCorners(index, weight, weight_dy, weight_dx)


def roi_align_corners(y, x, height, width, derivatives=False):
    """Corners under the RoIAlign rule of deformable RoI pooling (OPS_SPEC section 2).

    A point contributes only if -1 <= y <= H and -1 <= x <= W (NaN fails);
    negative coordinates clamp to 0 and a low corner at or past the last
    row/column clamps both corners to it. Clamped coordinates have zero derivative.
    """
    with numpy.errstate(invalid="ignore"):
        valid = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    zero = numpy.zeros((), dtype=y.dtype)
    y = numpy.where(valid, y, zero)
    x = numpy.where(valid, x, zero)
    low_y, low_x = y <= 0, x <= 0
    y = numpy.where(low_y, zero, y)
    x = numpy.where(low_x, zero, x)
    y0 = numpy.floor(y).astype(numpy.int64)
    x0 = numpy.floor(x).astype(numpy.int64)
    high_y, high_x = y0 >= height - 1, x0 >= width - 1
    y0 = numpy.where(high_y, height - 1, y0)
    x0 = numpy.where(high_x, width - 1, x0)
    y1 = numpy.where(high_y, y0, y0 + 1)
    x1 = numpy.where(high_x, x0, x0 + 1)
    y = numpy.where(high_y, y0.astype(y.dtype), y)
    x = numpy.where(high_x, x0.astype(x.dtype), x)
    slope_y = (~(low_y | high_y)).astype(y.dtype)
    slope_x = (~(low_x | high_x)).astype(x.dtype)
    return _plane_corners(y, x, (y0, y1), (x0, x1), width, (-slope_y, slope_y),
                          (-slope_x, slope_x), valid, derivatives)


def clamped_corners(y, x, height, width, derivatives=False):
    """Corners under MXNet's rule of position-sensitive pooling (OPS_SPEC section 3).

    The caller skips samples outside [-0.5, H-0.5] x [-0.5, W-0.5]; the point is
    clamped to [0, H-1] x [0, W-1] and read from its floor and ceil corners. The
    derivative is the slope at the clamped position (0 where floor == ceil).
    """
    y = numpy.clip(y, 0, height - 1)
    x = numpy.clip(x, 0, width - 1)
    rows = (numpy.floor(y).astype(numpy.int64), numpy.ceil(y).astype(numpy.int64))
    cols = (numpy.floor(x).astype(numpy.int64), numpy.ceil(x).astype(numpy.int64))
    one = numpy.ones_like(y)
    return _plane_corners(y, x, rows, cols, width, (-one, one), (-one, one),
                          numpy.ones(y.shape, dtype=bool), derivatives)
