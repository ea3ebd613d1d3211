"""Random deformable RoI pooling cases, shared by the NumPy, host-run and GPU tests.

Two kinds of RoI sets:

* ``random``: continuous coordinates, with boxes that cross every border, are
  degenerate (x1 == x2 or y1 == y2), inverted, cover the map or dwarf it, and
  fractional batch indices;
* ``dyadic``: the same kinds of boxes on a quarter-pixel grid, with output sizes,
  sampling grids, gamma and offsets chosen so that every sample position is
  computed exactly in float32 (and every coordinate is exact in bfloat16) for
  maps up to 8 x 8.
  Samples then fall exactly on integers, on -1 and on H / W, and two
  implementations that round differently (FMA on the GPU) still agree on which
  side of a bilinear kink or border every sample is.
"""

from __future__ import annotations

import numpy

from cudeform._options import pair
from tests.helpers import plant_bad_values

# Configurations every backend comparison covers, as roi_pool_case keyword arguments.
ROI_POOL_CASES = {
    "adaptive": dict(),
    "adaptive-scale16-rect32": dict(spatial_scale=1 / 16, output_size=(3, 2)),
    "sampling2": dict(sampling_ratio=2),
    "sampling3-scale16-no-offset": dict(sampling_ratio=3, spatial_scale=1 / 16, offset=False),
    "adaptive-no-offset-square": dict(offset=False, output_size=2),
    "gamma1-across-borders": dict(gamma=1.0),
    "batch1-channel1": dict(batch=1, channels=1, output_size=(1, 4)),
    "dyadic-adaptive-rect24": dict(dyadic=True, output_size=(2, 4), gamma=0.25),
    "dyadic-sampling4-scale16": dict(dyadic=True, sampling_ratio=4, spatial_scale=1 / 16,
                                     output_size=(4, 2), gamma=0.5),
    "dyadic-sampling1-no-offset": dict(dyadic=True, sampling_ratio=1, offset=False,
                                       output_size=(2, 2)),
}
DYADIC_CASES = {name: case for name, case in ROI_POOL_CASES.items() if case.get("dyadic")}

# Bin sizes whose adaptive grid ceil(bin) is 1, 2 or 4, so that bin / grid is exact.
DYADIC_BINS = (0.0, 0.5, 1.0, 1.75, 2.0, 3.5, 4.0)


def _special_boxes(batch, height, width):
    """Feature-map boxes ``(b, x1, y1, x2, y2)`` of every kind, for any batch size."""
    last = batch - 1
    return numpy.array([
        (0, 1.25, 0.75, 1.25, 4.0),                              # degenerate in x
        (last, -0.75, 2.25, 4.0, 2.25),                          # degenerate in y
        (0, -0.5, -0.5, width - 0.5, height - 0.5),              # the whole map
        (last, -12.0, -12.0, 20.0, 20.0),                        # 32 x 32: dwarfs the map
        (0, 4.25, 5.0, 1.25, 0.5),                               # inverted
        (last + 0.75, -1.0, -1.0, width, height),                # fractional index, -1 and H
        (-0.5, 2.0, 3.0, width + 1.5, 1.0 + height / 2),         # index -0.5 truncates to 0
    ])


def _random_boxes(rng, count, batch, height, width):
    centre = rng.uniform((-2, -2), (width + 1, height + 1), size=(count, 2))
    extent = rng.uniform(0, 1.6, size=(count, 2)) * (width, height)
    index = rng.integers(0, batch, size=(count, 1))
    return numpy.hstack([index, centre - extent / 2, centre + extent / 2])


def _dyadic_boxes(rng, count, batch, height, width, output_size):
    start = rng.integers(-12, 4 * numpy.array([width, height]) + 1, size=(count, 2)) / 4
    bins = rng.choice(DYADIC_BINS, size=(count, 2))
    bins[rng.uniform(size=(count, 2)) < 0.1] *= -1  # a few inverted RoIs
    end = start + bins * (output_size[1], output_size[0])
    index = rng.integers(0, batch, size=(count, 1))
    return numpy.hstack([index, start, end])


def roi_pool_case(rng, *, batch=2, channels=3, size=(7, 6), rois=8, output_size=(2, 3),
                  spatial_scale=1.0, sampling_ratio=0, gamma=0.1, offset=True, dyadic=False,
                  dtype=numpy.float64):
    """Random ``deform_roi_pool`` arguments: ``(arrays, options)``.

    ``arrays`` holds input, rois and offset (None without one); ``options`` the
    keyword arguments. RoIs are drawn on the feature map and mapped to image
    coordinates with ``(x + 0.5) / spatial_scale``.
    """
    height, width = size
    output_size = pair(output_size, "output_size", minimum=1)
    if dyadic:
        boxes = _dyadic_boxes(rng, rois, batch, height, width, output_size)
    else:
        boxes = _random_boxes(rng, rois, batch, height, width)
    boxes = numpy.vstack([boxes, _special_boxes(batch, height, width)])
    image_boxes = numpy.hstack([boxes[:, :1], (boxes[:, 1:] + 0.5) / spatial_scale])
    offset_shape = (len(boxes), 2, *output_size)
    if dyadic:
        offsets = rng.integers(-16, 17, size=offset_shape) / 16
    else:
        offsets = rng.uniform(-1, 1, size=offset_shape)
    arrays = dict(
        input=rng.standard_normal((batch, channels, height, width)).astype(dtype),
        rois=image_boxes.astype(dtype),
        offset=offsets.astype(dtype) if offset else None,
    )
    options = dict(output_size=output_size, spatial_scale=spatial_scale,
                   sampling_ratio=sampling_ratio, gamma=gamma)
    return arrays, options


def off_kink_case(rng, *, spatial_scale, sampling_ratio, gamma, rois=4):
    """RoIs on an 8 x 8 map whose samples all have fractional parts in [0.15, 0.85].

    Bins are whole pixels with one sample per pixel (step 1), start on integers, and
    each bin's offset moves it by less than 0.35 pixel: every sample is at
    k + 0.5 + shift, inside (0, H - 1), away from integers and the clamps.
    """
    ph, pw = 2, 3
    bins = rng.integers(1, 3, size=(rois, 2)) if sampling_ratio == 0 else numpy.full(
        (rois, 2), sampling_ratio)
    size = bins * (pw, ph)  # (roi_w, roi_h)
    start = rng.integers(0, 8 - size)  # start + size <= H - 1
    boxes = numpy.hstack([rng.integers(0, 2, size=(rois, 1)), start, start + size])
    shift = rng.uniform(-0.35, 0.35, size=(rois, 2, ph, pw))
    offset = shift / (gamma * size[:, :, None, None])
    rois_image = numpy.hstack([boxes[:, :1], (boxes[:, 1:] + 0.5) / spatial_scale])
    arrays = dict(input=rng.standard_normal((2, 2, 8, 8)), rois=rois_image, offset=offset)
    options = dict(output_size=(ph, pw), spatial_scale=spatial_scale,
                   sampling_ratio=sampling_ratio, gamma=gamma)
    return arrays, options


# Bad RoIs as (batch_index, x1, y1, x2, y2), coordinates divided by spatial_scale.
BAD_ROIS = {
    "batch-1": (-1, 1, 1, 4, 4),
    "batch-N": ("N", 1, 1, 4, 4),
    "batch-nan": (numpy.nan, 1, 1, 4, 4),
    "x1-nan": (0, numpy.nan, 1, 4, 4),
    "y2-inf": (0, 1, 1, 4, numpy.inf),
    "x1-minus-inf": (0, -numpy.inf, 1, 4, 4),
}
# RoIs that are valid but absurdly large: bounded work, a finite and nearly-zero result.
# Their sample positions are rounded to far more than a pixel, so only implementations
# that round alike (the NumPy path and the host run) agree on their offset gradient.
HUGE_ROIS = {
    "huge-far": (0, 1e30, 1e30, 2e30, 2e30),
    "huge-around-map": (0, -1e30, -1e30, 1e30, 1e30),
    "huge-one-side": (0, -1e15, 1, 1e15, 4),
}


def with_bad_rois(rng, arrays, options, *, huge=True):
    """``arrays`` with the BAD_ROIS (and HUGE_ROIS) rows appended, and bad offsets.

    Returns ``(arrays, bad)``: ``bad`` marks the rows that must pool to zero.
    Some offsets of good RoIs are also made NaN, infinite or huge.
    """
    batch = arrays["input"].shape[0]
    rows = list(BAD_ROIS.values()) + (list(HUGE_ROIS.values()) if huge else [])
    extra = numpy.array([[batch if v == "N" else v for v in row] for row in rows], float)
    with numpy.errstate(invalid="ignore"):
        extra[:, 1:] = extra[:, 1:] / options["spatial_scale"]
    dtype = arrays["input"].dtype
    rois = numpy.vstack([arrays["rois"], extra.astype(dtype)])
    bad = numpy.zeros(len(rois), bool)
    bad[len(arrays["rois"]):len(arrays["rois"]) + len(BAD_ROIS)] = True
    offset = arrays["offset"]
    if offset is not None:
        more = rng.uniform(-1, 1, size=(len(extra), *offset.shape[1:])).astype(dtype)
        offset = numpy.concatenate([offset, more])
        good = offset[:len(arrays["rois"])]
        plant_bad_values(rng, good, max(1, good.size // 10))
    return dict(arrays, rois=rois, offset=offset), bad
