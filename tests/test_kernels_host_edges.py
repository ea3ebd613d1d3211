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


@scatter_modes
@index_widths
@dtypes
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


def _roi_arrays(rng, *, batch, channels, size, output_size, spatial_scale, dtype,
                offset=True, offset_values=(-1.0, -0.5, 0.0, 0.5, 1.0, 2.0)):
    height, width = size
    boxes = _boxes_on_borders(height, width)
    index = numpy.arange(len(boxes)) % batch
    rois = numpy.column_stack([index, (boxes + 0.5) / spatial_scale])
    arrays = dict(
        input=rng.standard_normal((batch, channels, height, width)).astype(dtype),
        rois=rois.astype(dtype),
        offset=(rng.choice(offset_values, size=(len(boxes), 2, *output_size)).astype(dtype)
                if offset else None),
    )
    return arrays


ROI_EDGES = {
    "borders-adaptive": dict(size=(5, 4), output_size=(2, 3), sampling_ratio=0),
    "borders-sampling2-gamma1": dict(size=(5, 4), output_size=(2, 2), sampling_ratio=2,
                                     gamma=1.0),
    "map-1x1": dict(size=(1, 1), output_size=(3, 2), sampling_ratio=0),
    "map-1x1-sampling3-no-offset": dict(size=(1, 1), output_size=(2, 2), sampling_ratio=3,
                                        offset=False),
    "output-larger-than-map": dict(size=(2, 3), output_size=(7, 9), sampling_ratio=0),
    "scale16-sampling9": dict(size=(3, 2), output_size=(1, 2), sampling_ratio=9,
                              spatial_scale=1 / 16),
}


@scatter_modes
@index_widths
@dtypes
@pytest.mark.parametrize("name", ROI_EDGES)
def test_roi_pool_edges(monkeypatch, name, dtype, bits, deterministic):
    rng = numpy.random.default_rng(4100 + list(ROI_EDGES).index(name))
    case = dict(ROI_EDGES[name])
    options = dict(output_size=case.pop("output_size"),
                   sampling_ratio=case.pop("sampling_ratio"),
                   spatial_scale=case.pop("spatial_scale", 1.0), gamma=case.pop("gamma", 0.1))
    arrays = _roi_arrays(rng, batch=2, channels=3, output_size=options["output_size"],
                         spatial_scale=options["spatial_scale"], dtype=dtype, **case)
    _run(ROI_POOL, deform_roi_pool, monkeypatch, rng, arrays, options, bits, deterministic)


# --- deform_psroi_pool ----------------------------------------------------------------------

def _psroi_arrays(rng, *, batch, size, output_dim, group_size, part_size, num_classes, dtype,
                  spatial_scale):
    """RoIs whose rounded corners give whole roi sizes, and offsets in quarters: with
    ``trans_std = 0.25`` every bin moves by a whole or half multiple of the RoI size, so
    samples fall exactly on the skip borders -0.5 and H - 0.5 (W - 0.5)."""
    height, width = size
    boxes = numpy.vstack([_boxes_on_borders(height, width), [(0, 0, width - 1, height - 1),
                                                             (1, 1, 1, 1)]])
    rois = numpy.column_stack([numpy.arange(len(boxes)) % batch, boxes / spatial_scale])
    channels = output_dim * group_size**2
    offset = None
    if num_classes is not None:
        offset = rng.integers(-8, 9, size=(len(boxes), 2 * num_classes, part_size,
                                           part_size)) / 4
    arrays = dict(input=rng.standard_normal((batch, channels, height, width)), rois=rois,
                  offset=offset)
    return {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}


PSROI_EDGES = {
    "borders": dict(size=(5, 4), output_dim=2, group_size=2, pooled_size=3, num_classes=2),
    "map-1x1": dict(size=(1, 1), output_dim=2, group_size=1, pooled_size=3, num_classes=1),
    "map-1x1-no-offset": dict(size=(1, 1), output_dim=3, group_size=2, pooled_size=2,
                              num_classes=None),
    "pooled-larger-than-map": dict(size=(2, 2), output_dim=1, group_size=7, pooled_size=7,
                                   num_classes=1, sample_per_part=1),
    "part-larger-than-pooled-samples9": dict(size=(3, 5), output_dim=2, group_size=1,
                                             pooled_size=2, part_size=5, num_classes=2,
                                             sample_per_part=9),
    "scale16": dict(size=(4, 3), output_dim=2, group_size=3, pooled_size=3, num_classes=1,
                    spatial_scale=1 / 16),
}


@scatter_modes
@index_widths
@dtypes
@pytest.mark.parametrize("name", PSROI_EDGES)
def test_psroi_pool_edges(monkeypatch, name, dtype, bits, deterministic):
    rng = numpy.random.default_rng(4200 + list(PSROI_EDGES).index(name))
    case = dict(PSROI_EDGES[name])
    pooled_size = case.pop("pooled_size")
    part_size = case.pop("part_size", pooled_size)
    options = dict(output_dim=case["output_dim"], group_size=case["group_size"],
                   pooled_size=pooled_size, part_size=part_size,
                   sample_per_part=case.pop("sample_per_part", 2),
                   spatial_scale=case.pop("spatial_scale", 1.0), trans_std=0.25)
    arrays = _psroi_arrays(rng, batch=2, part_size=part_size, dtype=dtype,
                           spatial_scale=options["spatial_scale"], **case)
    _run(PSROI_POOL, deform_psroi_pool, monkeypatch, rng, arrays, options, bits, deterministic)
