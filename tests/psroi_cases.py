"""Random cases of ``deform_psroi_pool`` shared by its NumPy, host-run and GPU tests."""

from __future__ import annotations

import numpy

from cudeform._shapes import deform_psroi_pool_geometry

# Configurations every backend comparison covers, as psroi_case keyword arguments.
# Together: spatial_scale 1 and 1/16, sample_per_part 1, 2 and 4, part_size below,
# equal to and above pooled_size, group_size != pooled_size, 1 and several classes,
# no offset, offsets that move bins across the borders, no RoI.
PSROI_CASES = {
    "basic": dict(),
    "no-offset": dict(num_classes=None),
    "group3-pooled7-samples1": dict(group_size=3, pooled_size=7, sample_per_part=1,
                                    part_size=7),
    "classes2-part5-pooled3": dict(output_dim=4, num_classes=2, pooled_size=3, part_size=5),
    "classes4-part3-pooled4-group2": dict(output_dim=4, num_classes=4, group_size=2,
                                          pooled_size=4, part_size=3),
    "scale1/16-samples4": dict(spatial_scale=1 / 16, sample_per_part=4, output_dim=3,
                               num_classes=3, size=(6, 9)),
    "large-offsets": dict(offset_scale=6.0, num_classes=2, output_dim=2),
    "no-rois": dict(rois=0),
}


def _sorted_pair(a, b):
    return numpy.minimum(a, b), numpy.maximum(a, b)


def random_rois(rng, count, *, batch, height, width, spatial_scale):
    """``(count, 5)`` RoIs in image coordinates, cycling through kinds that cross every
    border, are degenerate (x1 == x2, a point, or inverted), are larger than the map,
    lie on halves (C ``round`` goes away from zero), have a fractional batch index, or
    start exactly on a border (first sample at -0.5 or at H - 0.5, W - 0.5)."""
    rows = []
    for i in range(count):
        kind = i % 10
        span = numpy.array([width, height])
        low = rng.uniform(-0.4, 1.2, 2) * span
        high = low + rng.uniform(0.5, 0.9, 2) * span
        if kind == 1:    # degenerate in x: x1 == x2
            high[0] = low[0]
        elif kind == 2:  # a point
            high = low.copy()
        elif kind == 3:  # larger than the map
            low, high = -rng.uniform(0.3, 1.0, 2) * span, (1 + rng.uniform(0.3, 1.0, 2)) * span
        elif kind == 4:  # inverted: roi_w and roi_h clamp to 0.1
            low, high = high, low
        elif kind == 5:  # small and inside
            low = rng.uniform(0.1, 0.6, 2) * span
            high = low + rng.uniform(0.0, 0.3, 2) * span
        elif kind == 8:  # first samples on the borders x = -0.5 and y = H - 0.5
            low = numpy.array([0, height])
            high = numpy.array([width, height + rng.integers(0, 4)])
        elif kind == 9:  # first samples on the borders x = W - 0.5 and y = -0.5
            low = numpy.array([width, 0])
            high = numpy.array([width + rng.integers(0, 4), height])
        corners = numpy.concatenate([low, high]) / spatial_scale
        if kind == 6:    # halves, in image coordinates, negative ones included
            corners = numpy.floor(corners) + 0.5
        index = float(rng.integers(0, batch))
        if kind == 7:    # truncated toward zero: -0.5 is image 0, 1.7 is image 1
            index = -0.5 if index == 0 else index + 0.7
        rows.append([index, *corners])
    return numpy.array(rows, dtype=numpy.float64).reshape(count, 5)


def psroi_case(rng, *, batch=2, output_dim=2, group_size=3, pooled_size=3, part_size=None,
               sample_per_part=2, spatial_scale=1.0, trans_std=0.1, num_classes=1,
               size=(7, 8), rois=10, offset_scale=1.0, dtype=numpy.float64):
    """``(arrays, options)`` of a random ``deform_psroi_pool`` call.

    ``num_classes=None`` means no offset. Offsets are uniform in
    ``[-offset_scale, offset_scale]``: times trans_std, a shift of that many tenths
    of the RoI size.
    """
    height, width = size
    channels = output_dim * group_size * group_size
    part = pooled_size if part_size is None else part_size
    offset = None
    if num_classes is not None:
        offset = rng.uniform(-offset_scale, offset_scale, (rois, 2 * num_classes, part, part))
    arrays = dict(
        input=rng.standard_normal((batch, channels, height, width)),
        rois=random_rois(rng, rois, batch=batch, height=height, width=width,
                         spatial_scale=spatial_scale),
        offset=offset,
    )
    arrays = {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}
    options = dict(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                   part_size=part_size, sample_per_part=sample_per_part,
                   spatial_scale=spatial_scale, trans_std=trans_std)
    geometry(arrays, options)
    return arrays, options


def smooth_case(rng, *, output_dim=2, group_size=2, pooled_size=3, part_size=None,
                sample_per_part=2, num_classes=1, rois=3, cells=1, trans_std=0.1,
                dtype=numpy.float64):
    """A case whose every sample lies strictly inside ``(0, W-1) x (0, H-1)`` with a
    fractional part in [0.15, 0.85], so that nothing is skipped or clamped and no
    position crosses an integer under a small change of the offsets.

    At spatial_scale 1 a RoI with rounded corners x1 and x1 + L - 1 has roi_w = L;
    with L = pooled_size * sample_per_part * cells the samples sit at x1 - 0.5 plus
    whole numbers plus the shift tx * L, and the offsets make that shift a whole
    number in {-1, 0, 1} plus f in [-0.35, 0.35]. The corners get a jitter that
    rounding removes.
    """
    extent = pooled_size * sample_per_part * cells
    size = 2 + 2 + extent + 2  # start at 2..4, shifts of at most 1.35, one pixel spare
    part = pooled_size if part_size is None else part_size
    starts = rng.integers(2, 5, (rois, 2)).astype(numpy.float64)
    corners = numpy.concatenate([starts, starts + extent - 1], axis=1)
    corners += rng.uniform(-0.4, 0.4, corners.shape)
    index = rng.integers(0, 2, (rois, 1)).astype(numpy.float64)
    shifts = rng.integers(-1, 2, (rois, 2 * num_classes, part, part)) + rng.uniform(
        -0.35, 0.35, (rois, 2 * num_classes, part, part))
    arrays = dict(
        input=rng.standard_normal((2, output_dim * group_size**2, size, size)).astype(dtype),
        rois=numpy.concatenate([index, corners], axis=1).astype(dtype),
        offset=(shifts / (trans_std * extent)).astype(dtype),
    )
    options = dict(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                   part_size=part_size, sample_per_part=sample_per_part, spatial_scale=1.0,
                   trans_std=trans_std)
    geometry(arrays, options)
    return arrays, options


def bad_rois(rng, *, batch, height, width):
    """RoIs that must pool to zero with zero gradients: batch index outside [0, N)
    after truncation, NaN batch index, and NaN or infinite corners."""
    good = [1.0, 1.0, 0.5 * width, 0.5 * height]
    nan, inf = numpy.nan, numpy.inf
    rows = [
        [-1.0, *good], [float(batch), *good], [batch + 0.5, *good], [-3.0, *good],
        [nan, *good], [inf, *good],
        [0.0, nan, 1.0, 3.0, 3.0], [0.0, 1.0, 1.0, 3.0, nan],
        [0.0, -inf, -inf, inf, inf], [0.0, 1.0, 1.0, inf, 3.0], [0.0, -inf, 1.0, 2.0, 2.0],
        [0.0, inf, inf, inf, inf],
    ]
    return numpy.array(rows)


def huge_rois(batch):
    """Finite RoIs with corners of 1e30: far outside, or spanning far past the map."""
    return numpy.array([
        [0.0, 1e30, 1e30, 1e30, 1e30], [batch - 1.0, -1e30, -1e30, -1e30, -1e30],
        [0.0, -1e30, -1e30, 1e30, 1e30], [0.0, 1.0, -1e30, 3.0, 1e30],
    ])


def geometry(arrays, options):
    offset = arrays["offset"]
    return deform_psroi_pool_geometry(arrays["input"].shape, arrays["rois"].shape,
                                      None if offset is None else offset.shape, **options)
