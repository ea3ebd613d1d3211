"""Property-based tests: on random valid problems the host-run kernels agree with the
NumPy path, and the NumPy path keeps the contract's rules for what lies outside.

Hypothesis draws the geometry (shapes, groups, offset groups, stride, padding,
dilation, kernel sizes up to the input size, masks, bias; RoI pooling's output
sizes, sampling and scales), the index width (32 or 64 bits) and a seed; the
arrays are built from the seed with the kinds of values in tests/corner_cases.py:
offsets on whole and quarter pixels, exactly on -1 and H, NaN, infinite and huge;
RoIs empty, inverted, outside, NaN, infinite and huge. Every test runs in both
scatter modes. The profile (tests/conftest.py, ``HYPOTHESIS_PROFILE``) sets how
many problems each test draws.
"""

from __future__ import annotations

import contextlib
import math
from unittest import mock

import numpy
import pytest

from cudeform._gpu import deform_conv, deform_psroi_pool, deform_roi_pool
from tests.corner_cases import (
    OFFSET_KINDS, ROI_KINDS, landing_offsets, mixed_rois, mixed_values,
)
from tests.helpers import assert_outside_taps_get_zero_gradients
from tests.host.compare import scatter_modes
from tests.host.loader import compiler

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.test_kernels_host import CONV  # noqa: E402
from tests.test_kernels_host_psroi_pool import PSROI_POOL  # noqa: E402
from tests.test_kernels_host_roi_pool import ROI_POOL  # noqa: E402

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")

DTYPES = st.sampled_from([numpy.float32, numpy.float64])
SEEDS = st.integers(0, 2**32 - 1)
KINDS_OF_OFFSETS = st.lists(st.sampled_from(OFFSET_KINDS), min_size=1, max_size=3, unique=True)
KINDS_OF_ROIS = st.lists(st.sampled_from(ROI_KINDS), min_size=1, max_size=4, unique=True)


@contextlib.contextmanager
def index_width(gpu_module, wide):
    """Within this context, ``gpu_module`` launches with 64-bit indices if ``wide``."""
    if not wide:
        yield
        return
    with mock.patch.object(gpu_module, "index_bits", lambda *sizes: 64):
        yield


def _in_dtype(arrays, dtype):
    return {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}


def _assert_host_matches_numpy(op, gpu_module, problem, wide, deterministic):
    arrays, options = problem
    with index_width(gpu_module, wide):
        op.assert_matches_numpy(arrays, options,
                                op.grad_output(numpy.random.default_rng(0), arrays, options),
                                deterministic=deterministic)


# --- deform_conv2d ------------------------------------------------------------------------

@st.composite
def conv_axes(draw, size):
    """``(kernel, stride, padding, dilation)`` of one axis of a map ``size`` long,
    with at least one output: the padding grows with the dilated kernel when needed."""
    kernel = draw(st.integers(1, size))
    dilation = draw(st.sampled_from([1, 1, 2, 3, 64]))
    stride = draw(st.sampled_from([1, 1, 2, 3, 1000]))
    reach = dilation * (kernel - 1) + 1
    padding = max(0, -(-(reach - size) // 2)) + draw(st.integers(0, 2))
    return kernel, stride, padding, dilation


@st.composite
def conv_problems(draw, offset_kinds=KINDS_OF_OFFSETS):
    """``(arrays, options)`` of a random valid ``deform_conv2d`` call, with offsets of
    the kinds drawn from ``offset_kinds``."""
    groups, offset_groups = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    in_channels = math.lcm(groups, offset_groups) * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    height, width = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    (kh, sh, ph, dh), (kw, sw, pw, dw) = draw(conv_axes(height)), draw(conv_axes(width))
    batch = draw(st.integers(0, 3))
    has_mask, has_bias = draw(st.booleans()), draw(st.booleans())
    kinds, dtype, seed = draw(offset_kinds), draw(DTYPES), draw(SEEDS)

    rng = numpy.random.default_rng(seed)
    options = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw))
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    input_shape = (batch, in_channels, height, width)
    weight_shape = (out_channels, in_channels // groups, kh, kw)
    offset_shape = (batch, 2 * offset_groups * kh * kw, out_h, out_w)
    landing = landing_offsets(rng, input_shape, offset_shape, weight_shape, options)
    arrays = dict(
        input=rng.standard_normal(input_shape),
        offset=mixed_values(rng, offset_shape, kinds, 3.0, landing),
        weight=rng.standard_normal(weight_shape),
        bias=rng.standard_normal(out_channels) if has_bias else None,
        mask=(rng.uniform(-0.5, 1.5, (batch, offset_groups * kh * kw, out_h, out_w))
              if has_mask else None),
    )
    return _in_dtype(arrays, dtype), options


@scatter_modes
@given(problem=conv_problems(), wide=st.booleans())
def test_fuzz_conv_host_matches_numpy(problem, wide, deterministic):
    _assert_host_matches_numpy(CONV, deform_conv, problem, wide, deterministic)


@given(problem=conv_problems(st.sampled_from([["special"], ["special", "uniform"],
                                              ["special", "landing"]])))
def test_fuzz_conv_numpy_samples_outside_for_non_finite_offsets(problem):
    # The oracle itself: a tap whose offset is NaN, infinite or huge samples 0 and gets
    # zero offset and mask gradients (OPS_SPEC section 4). An offset of 2**31 puts a
    # sample far outside every map drawn here, whatever its stride or dilation.
    arrays, options = problem
    offset = arrays["offset"]
    hypothesis.assume(not (numpy.abs(offset) < 2.0**31).all())
    if arrays["mask"] is None:
        arrays = dict(arrays, mask=numpy.ones(CONV.geometry(arrays, options).mask_shape,
                                              offset.dtype))
    g = CONV.geometry(arrays, options)
    grads = CONV.cpu.backward(CONV.grad_output(numpy.random.default_rng(0), arrays, options),
                              *CONV.operands(arrays), g)
    assert_outside_taps_get_zero_gradients(offset, grads[1], grads[4], far=2.0**31)


# --- deform_roi_pool ----------------------------------------------------------------------

@st.composite
def roi_pool_problems(draw):
    """``(arrays, options)`` of a random valid ``deform_roi_pool`` call."""
    batch, channels = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    height, width = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    output_size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    options = dict(output_size=output_size,
                   spatial_scale=draw(st.sampled_from([1.0, 0.5, 1 / 16])),
                   sampling_ratio=draw(st.integers(0, 4)),
                   gamma=draw(st.sampled_from([0.0, 0.1, 1.0, -0.5])))
    count, has_offset = draw(st.integers(0, 8)), draw(st.booleans())
    roi_kinds, offset_kinds = draw(KINDS_OF_ROIS), draw(KINDS_OF_OFFSETS)
    dtype, seed = draw(DTYPES), draw(SEEDS)

    rng = numpy.random.default_rng(seed)
    arrays = dict(
        input=rng.standard_normal((batch, channels, height, width)),
        rois=mixed_rois(rng, count, roi_kinds, batch=batch, height=height, width=width,
                        spatial_scale=options["spatial_scale"]),
        offset=(mixed_values(rng, (count, 2, *output_size), offset_kinds, 1.0)
                if has_offset else None),
    )
    return _in_dtype(arrays, dtype), options


@scatter_modes
@given(problem=roi_pool_problems(), wide=st.booleans())
def test_fuzz_roi_pool_host_matches_numpy(problem, wide, deterministic):
    _assert_host_matches_numpy(ROI_POOL, deform_roi_pool, problem, wide, deterministic)


# --- deform_psroi_pool --------------------------------------------------------------------

@st.composite
def psroi_pool_problems(draw):
    """``(arrays, options)`` of a random valid ``deform_psroi_pool`` call."""
    group_size, pooled_size = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    num_classes = draw(st.sampled_from([None, 1, 2]))
    output_dim = (num_classes or 1) * draw(st.integers(1, 2))
    part_size = draw(st.sampled_from([None, 1, 2, 4]))
    batch, height, width = draw(st.integers(1, 2)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    options = dict(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                   part_size=part_size, sample_per_part=draw(st.integers(1, 4)),
                   spatial_scale=draw(st.sampled_from([1.0, 0.5, 1 / 16])),
                   trans_std=draw(st.sampled_from([0.0, 0.1, 0.25, 1.0])))
    count = draw(st.integers(0, 8))
    roi_kinds, offset_kinds = draw(KINDS_OF_ROIS), draw(KINDS_OF_OFFSETS)
    if num_classes is not None:
        # The offset gradient of a RoI 1e30 wide is rounding noise times 1e29: two
        # implementations that sum in different orders cannot agree on it.
        roi_kinds = [kind for kind in roi_kinds if kind != "huge"] or ["inside"]
    dtype, seed = draw(DTYPES), draw(SEEDS)

    rng = numpy.random.default_rng(seed)
    part = pooled_size if part_size is None else part_size
    arrays = dict(
        input=rng.standard_normal((batch, output_dim * group_size**2, height, width)),
        rois=mixed_rois(rng, count, roi_kinds, batch=batch, height=height, width=width,
                        spatial_scale=options["spatial_scale"]),
        offset=(mixed_values(rng, (count, 2 * num_classes, part, part), offset_kinds, 1.0)
                if num_classes is not None else None),
    )
    return _in_dtype(arrays, dtype), options


@scatter_modes
@given(problem=psroi_pool_problems(), wide=st.booleans())
def test_fuzz_psroi_pool_host_matches_numpy(problem, wide, deterministic):
    _assert_host_matches_numpy(PSROI_POOL, deform_psroi_pool, problem, wide, deterministic)
