"""deform_conv2d on the NumPy path against onnxruntime's DeformConv (opset 19).

onnxruntime implements the same offset layout and border rule independently;
hypothesis draws the configurations (derandomised, so every run is the same).
"""

from __future__ import annotations

import numpy
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cudeform  # noqa: E402
from tests.helpers import TOLERANCES, conv_case, split_case  # noqa: E402
from tests.onnx_oracle import ort_deform_conv2d  # noqa: E402


def noncontiguous(array):
    """The same values in a non-C-contiguous layout."""
    if array is None or array.ndim < 2:
        return None if array is None else array[::-1].copy()[::-1]
    return numpy.swapaxes(numpy.swapaxes(array, -1, -2).copy(), -1, -2)


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2]))
    offset_groups = draw(st.sampled_from([1, 2, 4]))
    in_channels = 4
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    height = draw(st.integers(dilation[0] * (kernel[0] - 1) + 1, 8))
    width = draw(st.integers(dilation[1] * (kernel[1] - 1) + 1, 8))
    return dict(
        batch=draw(st.integers(1, 3)), in_channels=in_channels,
        out_channels=groups * draw(st.integers(1, 3)), groups=groups,
        offset_groups=offset_groups, kernel=kernel, stride=stride, padding=padding,
        dilation=dilation, size=(height, width), mask=draw(st.booleans()),
        bias=draw(st.booleans()), offset_scale=draw(st.sampled_from([0.5, 3.0, 12.0])),
        dtype=draw(st.sampled_from([numpy.float32, numpy.float64])),
    ), draw(st.booleans()), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=80, deadline=None, derandomize=True)
@given(conv_configs())
def test_forward_matches_onnxruntime(config):
    options, make_noncontiguous, seed = config
    case = conv_case(numpy.random.default_rng(seed), **options)
    expected = ort_deform_conv2d(**case)
    if make_noncontiguous:
        arrays, opts = split_case(case)
        case = {**{k: noncontiguous(v) for k, v in arrays.items()}, **opts}
    rtol, atol = TOLERANCES[numpy.dtype(options["dtype"])]
    numpy.testing.assert_allclose(cudeform.deform_conv2d(**case), expected, rtol=rtol, atol=atol)
