"""Arrays from the corners of the input space, for the edge-case and property-based tests.

Offsets are drawn per element from a set of kinds: continuous, whole pixels, quarter
pixels (exact in every dtype), landing exactly on or half a pixel from a border (-1,
0, H - 1, H, ...), and special values (NaN, +-inf, huge, +-2**31). RoIs likewise:
inside, on a quarter grid, empty, inverted, on the borders, outside, NaN or infinite
corners, batch indices outside [0, N) or fractional, and huge.
"""

from __future__ import annotations

import numpy

from cudeform._shapes import deform_conv2d_geometry

SPECIAL_VALUES = (numpy.nan, numpy.inf, -numpy.inf, 1e30, -1e30, 2.0**31, -(2.0**31))
OFFSET_KINDS = ("uniform", "whole", "quarters", "landing", "special")
ROI_KINDS = ("inside", "quarters", "empty", "inverted", "borders", "outside", "nan",
             "infinite", "bad-batch", "fractional-batch", "huge")


def borders(size):
    """Rows (columns) on and next to both borders of a map ``size`` long."""
    return numpy.array([-1.5, -1.0, -0.5, 0.0, 0.5, size - 1.5, size - 1.0, size - 0.5,
                        float(size), size + 0.5])


def landing_offsets(rng, input_shape, offset_shape, weight_shape, options, landing=borders):
    """``deform_conv2d`` offsets whose samples land exactly on rows/columns drawn from
    ``landing(size)``: the target minus the tap's base position ``ho*stride - pad +
    i*dilation``, whole or half numbers, so the sum is exact in any dtype (float64)."""
    g = deform_conv2d_geometry(input_shape, offset_shape, weight_shape, **options)
    base_y = (numpy.arange(g.out_h)[None, :] * g.stride_h - g.pad_h
              + numpy.arange(g.kernel_h)[:, None] * g.dilation_h)        # (kh, out_h)
    base_x = (numpy.arange(g.out_w)[None, :] * g.stride_w - g.pad_w
              + numpy.arange(g.kernel_w)[:, None] * g.dilation_w)        # (kw, out_w)
    shape = (g.batch, g.offset_groups, g.kernel_h, g.kernel_w, g.out_h, g.out_w)
    dy = rng.choice(landing(g.height), size=shape) - base_y[None, None, :, None, :, None]
    dx = rng.choice(landing(g.width), size=shape) - base_x[None, None, None, :, None, :]
    return numpy.stack([dy, dx], axis=4).reshape(offset_shape)


def mixed_values(rng, shape, kinds, scale, landing=None):
    """float64 values of ``shape``, each of a kind drawn from ``kinds`` (OFFSET_KINDS);
    ``landing`` holds the "landing" values (all of ``shape``), ``scale`` bounds the others."""
    candidates = {
        "uniform": lambda: rng.uniform(-scale, scale, shape),
        "whole": lambda: rng.integers(-int(scale) - 1, int(scale) + 2, shape).astype(float),
        "quarters": lambda: rng.integers(-4 * int(scale) - 4, 4 * int(scale) + 5, shape) / 4,
        "landing": lambda: landing,
        "special": lambda: rng.choice(SPECIAL_VALUES, shape),
    }
    kinds = [kind for kind in kinds if kind != "landing" or landing is not None]
    if not kinds:
        kinds = ["uniform"]
    choice = rng.integers(0, len(kinds), shape)
    values = numpy.empty(shape)
    for index, kind in enumerate(kinds):
        values[choice == index] = candidates[kind]()[choice == index]
    return values


def _box(rng, kind, height, width):
    """One feature-map box ``(x1, y1, x2, y2)`` of ``kind`` (ROI_KINDS)."""
    span = numpy.array([width, height], float)
    if kind == "quarters":
        low = rng.integers(-8, 4 * span + 5) / 4
        return numpy.concatenate([low, low + rng.integers(0, 4 * span + 5) / 4])
    if kind == "empty":
        low = rng.uniform(-1.5, span + 0.5)
        high = low.copy()
        high[rng.integers(0, 2)] += rng.uniform(0, 3) * rng.integers(0, 2)
        return numpy.concatenate([low, high])
    if kind == "inverted":
        low = rng.uniform(-1, span)
        return numpy.concatenate([low, low - rng.uniform(0.1, 3, 2)])
    if kind == "borders":
        return numpy.array([rng.choice(borders(width)), rng.choice(borders(height)),
                            rng.choice(borders(width)), rng.choice(borders(height))])
    if kind == "outside":
        side = rng.choice([-1, 1], 2)
        low = numpy.where(side < 0, -rng.uniform(3, 10, 2) - 4, span + rng.uniform(2, 10, 2))
        return numpy.concatenate([low, low + rng.uniform(0, 3, 2)])
    if kind == "nan":
        box = _box(rng, "inside", height, width)
        box[rng.integers(0, 4)] = numpy.nan
        return box
    if kind == "infinite":
        box = _box(rng, "inside", height, width)
        box[rng.integers(0, 4)] = rng.choice([numpy.inf, -numpy.inf])
        return box
    if kind == "huge":
        return rng.choice([-1e30, -1e15, 1e15, 1e30], 4)
    low = rng.uniform(-2, span + 1)  # inside, crossing the borders, or bad-batch ones
    return numpy.concatenate([low, low + rng.uniform(0, 1.5, 2) * span])


def _batch_index(rng, kind, batch):
    index = float(rng.integers(0, batch))
    if kind == "bad-batch":
        return float(rng.choice([-1.0, -3.0, batch, batch + 0.5, numpy.nan, numpy.inf]))
    if kind == "fractional-batch":
        return index + 0.7 if index > 0 or rng.integers(0, 2) else -0.5
    return index


def mixed_rois(rng, count, kinds, *, batch, height, width, spatial_scale):
    """``(count, 5)`` float64 RoIs ``(batch_index, x1, y1, x2, y2)``, each of a kind drawn
    from ``kinds``; feature-map boxes are mapped to image coordinates by
    ``(x + 0.5) / spatial_scale``, the inverse of the RoI poolings' mapping (rounding
    aside, for the position-sensitive one)."""
    rows = []
    for _ in range(count):
        kind = kinds[rng.integers(0, len(kinds))]
        with numpy.errstate(invalid="ignore", over="ignore"):
            box = (_box(rng, kind, height, width) + 0.5) / spatial_scale
            rows.append([_batch_index(rng, kind, batch), *box])
    return numpy.array(rows, dtype=numpy.float64).reshape(count, 5)
