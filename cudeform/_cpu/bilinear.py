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
    weight: numpy.ndarray     # (4, ...) bilinear weights, 0 outside the range
    weight_dy: object         # (4, ...) d weight / d y, or None if not asked for
    weight_dx: object         # (4, ...) d weight / d x, or None if not asked for


def zero_padded_corners(y, x, height, width, derivatives=False):
    """Corners of points ``(y, x)`` under the DCNv2 border rule (see module doc).

    The weights' derivatives are computed only when ``derivatives`` is true.
    """
    with numpy.errstate(invalid="ignore"):
        inside = (y > -1) & (y < height) & (x > -1) & (x < width)
    zero = numpy.zeros((), dtype=y.dtype)
    y = numpy.where(inside, y, zero)
    x = numpy.where(inside, x, zero)
    y_floor = numpy.floor(y)
    x_floor = numpy.floor(x)
    ly = y - y_floor
    lx = x - x_floor
    hy = 1 - ly
    hx = 1 - lx
    padded_width = padded_size(width)
    index = numpy.where(
        inside,
        (y_floor.astype(numpy.int64) + PAD_BEFORE) * padded_width
        + x_floor.astype(numpy.int64) + PAD_BEFORE,
        (height + PAD_BEFORE) * padded_width + width + PAD_BEFORE,
    )
    inside = inside.astype(y.dtype)
    weight = numpy.stack([hy * hx, hy * lx, ly * hx, ly * lx]) * inside
    weight_dy = weight_dx = None
    if derivatives:
        weight_dy = numpy.stack([-hx, -lx, hx, lx]) * inside
        weight_dx = numpy.stack([-hy, hy, -ly, ly]) * inside
    steps = (0, 1, padded_width, padded_width + 1)
    return Corners(index, steps, weight, weight_dy, weight_dx)
