"""Host run of all three ops on the corners of the input space, against the NumPy path.

Out-of-bounds accesses in deformable ops come from these corners: samples exactly on
-1 and on H (W), RoIs of zero or negative size, 1 x 1 maps, kernels as large as the
input, huge strides and dilations. Every case runs forward and backward, in both
scatter modes, with 32- and 64-bit indices; the guard zones of the host run check
every write, and the sanitized run (test_kernels_sanitized.py) runs this module under
AddressSanitizer and UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

import numpy
import pytest

from cudeform._gpu import deform_conv, deform_psroi_pool, deform_roi_pool
from tests.corner_cases import landing_offsets
from tests.helpers import conv_case, dtypes, force_64_bit_indices, split_case
from tests.host.compare import scatter_modes
from tests.host.loader import compiler
from tests.test_kernels_host import CONV
from tests.test_kernels_host_psroi_pool import PSROI_POOL
from tests.test_kernels_host_roi_pool import ROI_POOL

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")

index_widths = pytest.mark.parametrize("bits", [32, 64], ids=["i32", "i64"])


def every_variant(test):
    """Run ``test`` in both scatter modes, with both index widths, in both dtypes."""
    return scatter_modes(index_widths(dtypes(test)))


def _run(op, gpu_module, monkeypatch, rng, arrays, options, bits, deterministic):
    if bits == 64:
        force_64_bit_indices(monkeypatch, gpu_module)
    return op.assert_matches_numpy(arrays, options, op.grad_output(rng, arrays, options),
                                   deterministic=deterministic)


# --- deform_conv2d ------------------------------------------------------------------------

CONV_EDGES = {
    # Every sample exactly on or half a pixel from a border, -1 and H included.
    "landing-on-borders": dict(size=(5, 4), kernel=(3, 3), stride=(2, 1), padding=(1, 2),
                               dilation=(1, 2), offset_groups=2, landing=True),
    "map-1x1": dict(size=(1, 1), kernel=(1, 1), padding=(0, 0), offset_groups=4,
                    landing=True),
    "map-1x1-kernel3-padding1": dict(size=(1, 1), kernel=(3, 3), padding=(1, 1)),
    "kernel-as-large-as-input": dict(size=(4, 5), kernel=(4, 5), padding=(0, 0),
                                     landing=True),
    "kernel-as-large-as-input-padded": dict(size=(3, 4), kernel=(3, 4), padding=(1, 2),
                                            stride=(1, 2)),
    "huge-stride": dict(size=(6, 5), kernel=(2, 2), stride=(1000, 2**20), padding=(3, 3),
                        landing=True),
    # Most taps fall 100 or 1000 pixels outside; the landing offsets bring them back.
    "huge-dilation": dict(size=(5, 4), kernel=(3, 3), dilation=(100, 1000),
                          padding=(100, 1000), landing=True),
    "huge-dilation-random": dict(size=(5, 4), kernel=(2, 3), dilation=(7, 2**20),
                                 padding=(7, 2**20), offset_scale=8.0),
}


@every_variant
@pytest.mark.parametrize("name", CONV_EDGES)
def test_conv_edges(monkeypatch, name, dtype, bits, deterministic):
    rng = numpy.random.default_rng(4000 + list(CONV_EDGES).index(name))
    case = dict(CONV_EDGES[name])
    landing = case.pop("landing", False)
    arrays, options = split_case(conv_case(rng, dtype=dtype, batch=2, in_channels=4,
                                           out_channels=2, **case))
    if landing:
        arrays["offset"] = landing_offsets(rng, arrays["input"].shape, arrays["offset"].shape,
                                           arrays["weight"].shape, options).astype(dtype)
    _run(CONV, deform_conv, monkeypatch, rng, arrays, options, bits, deterministic)


# --- deform_roi_pool ------------------------------------------------------------------------

def _boxes_on_borders(height, width):
    """Feature-map boxes ``(x1, y1, x2, y2)`` of zero, negative and border-touching size."""
    return numpy.array([
        (0.0, 0.0, 0.0, 0.0),                      # a point on the first pixel
        (-1.0, -1.0, -1.0, -1.0),                  # a point exactly on (-1, -1)
        (width, height, width, height),            # a point exactly on (W, H)
        (-1.0, height, width, -1.0),               # inverted in y, from -1 to H
        (width, -1.0, -1.0, height),               # inverted in x
        (2.5, 1.0, 2.5, 3.0),                      # zero width
        (-1.0, -1.0, width, height),               # exactly the sampled range
        (-1.5, -1.5, width + 0.5, height + 0.5),   # half a pixel beyond it
        (width - 0.25, height - 0.25, width + 4.0, height + 4.0),  # mostly outside
    ])


def _roi_arrays(rng, options, dtype, *, size, offset=True):
    height, width = size
    boxes = _boxes_on_borders(height, width)
    index = numpy.arange(len(boxes)) % 2
    rois = numpy.column_stack([index, (boxes + 0.5) / options["spatial_scale"]])
    offsets = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0],
                         size=(len(boxes), 2, *options["output_size"]))
    arrays = dict(input=rng.standard_normal((2, 3, height, width)), rois=rois,
                  offset=offsets if offset else None)
    return {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}


def _roi_options(output_size, sampling_ratio, spatial_scale=1.0, gamma=0.1):
    return dict(output_size=output_size, sampling_ratio=sampling_ratio,
                spatial_scale=spatial_scale, gamma=gamma)


# name: (the arrays' keyword arguments, the options)
ROI_EDGES = {
    "borders-adaptive": (dict(size=(5, 4)), _roi_options((2, 3), 0)),
    "borders-sampling2-gamma1": (dict(size=(5, 4)), _roi_options((2, 2), 2, gamma=1.0)),
    "map-1x1": (dict(size=(1, 1)), _roi_options((3, 2), 0)),
    "map-1x1-sampling3-no-offset": (dict(size=(1, 1), offset=False), _roi_options((2, 2), 3)),
    "output-larger-than-map": (dict(size=(2, 3)), _roi_options((7, 9), 0)),
    "scale16-sampling9": (dict(size=(3, 2)), _roi_options((1, 2), 9, spatial_scale=1 / 16)),
}


@every_variant
@pytest.mark.parametrize("name", ROI_EDGES)
def test_roi_pool_edges(monkeypatch, name, dtype, bits, deterministic):
    rng = numpy.random.default_rng(4100 + list(ROI_EDGES).index(name))
    shapes, options = ROI_EDGES[name]
    arrays = _roi_arrays(rng, options, dtype, **shapes)
    _run(ROI_POOL, deform_roi_pool, monkeypatch, rng, arrays, options, bits, deterministic)


# --- deform_psroi_pool ----------------------------------------------------------------------

def _psroi_arrays(rng, options, dtype, *, size, num_classes):
    """RoIs whose rounded corners give whole roi sizes, and offsets in quarters: with
    ``trans_std = 0.25`` every bin moves by a whole or half multiple of the RoI size, so
    samples fall exactly on the skip borders -0.5 and H - 0.5 (W - 0.5)."""
    height, width = size
    boxes = numpy.vstack([_boxes_on_borders(height, width), [(0, 0, width - 1, height - 1),
                                                             (1, 1, 1, 1)]])
    rois = numpy.column_stack([numpy.arange(len(boxes)) % 2, boxes / options["spatial_scale"]])
    channels = options["output_dim"] * options["group_size"]**2
    part = options["part_size"]
    offset = None
    if num_classes is not None:
        offset = rng.integers(-8, 9, size=(len(boxes), 2 * num_classes, part, part)) / 4
    arrays = dict(input=rng.standard_normal((2, channels, height, width)), rois=rois,
                  offset=offset)
    return {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}


def _psroi_options(output_dim, group_size, pooled_size, part_size=None, sample_per_part=2,
                   spatial_scale=1.0):
    return dict(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                part_size=pooled_size if part_size is None else part_size,
                sample_per_part=sample_per_part, spatial_scale=spatial_scale, trans_std=0.25)


PSROI_EDGES = {
    "borders": (dict(size=(5, 4), num_classes=2), _psroi_options(2, 2, 3)),
    "map-1x1": (dict(size=(1, 1), num_classes=1), _psroi_options(2, 1, 3)),
    "map-1x1-no-offset": (dict(size=(1, 1), num_classes=None), _psroi_options(3, 2, 2)),
    "pooled-larger-than-map": (dict(size=(2, 2), num_classes=1),
                               _psroi_options(1, 7, 7, sample_per_part=1)),
    "part-larger-than-pooled-samples9": (dict(size=(3, 5), num_classes=2),
                                         _psroi_options(2, 1, 2, part_size=5,
                                                        sample_per_part=9)),
    "scale16": (dict(size=(4, 3), num_classes=1), _psroi_options(2, 3, 3, spatial_scale=1 / 16)),
}


@every_variant
@pytest.mark.parametrize("name", PSROI_EDGES)
def test_psroi_pool_edges(monkeypatch, name, dtype, bits, deterministic):
    rng = numpy.random.default_rng(4200 + list(PSROI_EDGES).index(name))
    shapes, options = PSROI_EDGES[name]
    arrays = _psroi_arrays(rng, options, dtype, **shapes)
    _run(PSROI_POOL, deform_psroi_pool, monkeypatch, rng, arrays, options, bits, deterministic)
