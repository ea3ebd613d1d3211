"""The Chainer adapter's argument errors: every array argument and option of its
functions, with Chainer's names (``x``, ``W``, ``b``, ``pad``, ``dilate``), every scalar
argument of every link, and the Pack links' check of their input."""

from __future__ import annotations

import re

import numpy
import pytest

from cudeform.adapters import _chainer_compat  # noqa: F401  (numpy.sctypes, before chainer)

chainer = pytest.importorskip("chainer")

from cudeform.adapters import chainer as adapter  # noqa: E402
from tests.argument_tables import (  # noqa: E402
    WRONG_KIND_OPTIONS, array_cases, call_with, check_layer_argument,
    check_nan_or_negative_option, check_wrong_kind_option, layer_argument_cases,
    option_cases, run_valid_calls,
)

EXPECTED = "a chainer.Variable, numpy.ndarray or cupy.ndarray"


def _conv():
    return dict(x=numpy.zeros((1, 2, 5, 5)), offset=numpy.zeros((1, 18, 3, 3)),
                W=numpy.zeros((2, 2, 3, 3)), b=numpy.zeros(2),
                mask=numpy.zeros((1, 9, 3, 3))), dict(stride=1, pad=0, dilate=1)


def _roi_pool():
    return dict(x=numpy.zeros((1, 2, 5, 5)), rois=numpy.array([[0, 0, 0, 4, 4.]]),
                offset=numpy.zeros((1, 2, 2, 2))), \
        dict(output_size=2, spatial_scale=0.5, sampling_ratio=1, gamma=0.1)


def _psroi_pool():
    return dict(x=numpy.zeros((1, 8, 5, 5)), rois=numpy.array([[0, 0, 0, 4, 4.]]),
                offset=numpy.zeros((1, 2, 2, 2))), \
        dict(output_dim=2, group_size=2, pooled_size=2, part_size=2, sample_per_part=2,
             spatial_scale=0.5, trans_std=0.1)


def _sampler():
    return dict(offset=numpy.zeros((1, 18, 3, 3))), {}


FUNCTIONS = {
    "deform_conv2d": (adapter.deform_conv2d, _conv, ("b", "mask")),
    "deform_roi_pool": (adapter.deform_roi_pool, _roi_pool, ("offset",)),
    "deform_psroi_pool": (adapter.deform_psroi_pool, _psroi_pool, ("offset",)),
    "offset_from_chainer_sampler": (adapter.offset_from_chainer_sampler, _sampler, ()),
    "offset_to_chainer_sampler": (adapter.offset_to_chainer_sampler, _sampler, ()),
}


def test_every_valid_call_runs():
    run_valid_calls(FUNCTIONS)


@pytest.mark.parametrize("function, argument, optional", list(array_cases(FUNCTIONS)))
def test_an_array_of_the_wrong_kind_names_it(function, argument, optional):
    array = FUNCTIONS[function][1]()[0][argument]
    junk = {"list": array.tolist(), "float": 1.0, "str": "x"}
    if not optional:
        junk["NoneType"] = None
    for kind, value in junk.items():
        with pytest.raises(TypeError, match=rf"^{argument} must be {EXPECTED}, got {kind}$"):
            call_with(FUNCTIONS, function, **{argument: value})
    call_with(FUNCTIONS, function, **{argument: chainer.Variable(array)})  # taken as its array


@pytest.mark.parametrize("function, argument, optional", list(array_cases(FUNCTIONS)))
@pytest.mark.parametrize("dtype", [object, numpy.int32, numpy.complex64, numpy.bool_,
                                   numpy.float16])
def test_an_unsupported_dtype_is_named_as_such(function, argument, optional, dtype):
    bad = FUNCTIONS[function][1]()[0][argument].astype(dtype)
    with pytest.raises(TypeError, match=rf"^{argument} has dtype {re.escape(str(bad.dtype))}, "
                                        r"which NumPy \(CPU\) arrays do not support"):
        call_with(FUNCTIONS, function, **{argument: bad})


@pytest.mark.parametrize("function, option", list(option_cases(FUNCTIONS)))
@pytest.mark.parametrize("value", WRONG_KIND_OPTIONS)
def test_an_option_of_the_wrong_kind_names_it(function, option, value):
    check_wrong_kind_option(FUNCTIONS, function, option, value)


@pytest.mark.parametrize("function, option", list(option_cases(FUNCTIONS)))
def test_nan_or_a_negative_option_names_it(function, option):
    check_nan_or_negative_option(FUNCTIONS, function, option)


def test_a_sampler_offset_of_the_wrong_shape_names_it():
    with pytest.raises(ValueError, match=r"^offset is not valid: expected a 4-D array"):
        adapter.offset_from_chainer_sampler(numpy.zeros((18, 3, 3)))
    with pytest.raises(ValueError, match=r"^offset.shape\[1\] is not valid: expected an even "
                                         r"number 2\*kh\*kw, got 9$"):
        adapter.offset_to_chainer_sampler(numpy.zeros((1, 9, 3, 3)))


# --- links ----------------------------------------------------------------------------


LINKS = {
    adapter.DeformConv2d: dict(in_channels=4, out_channels=4, ksize=3),
    adapter.DeformConv2dPack: dict(in_channels=4, out_channels=4, ksize=3),
    adapter.ModulatedDeformConv2dPack: dict(in_channels=4, out_channels=4, ksize=3),
    adapter.DeformRoIPoolPack: dict(output_size=2, in_channels=4, deform_fc_channels=8),
    adapter.DeformPSRoIPoolPack: dict(in_channels=4, output_dim=2, group_size=2,
                                      pooled_size=2),
}
INITIALIZERS = ("initialW", "initial_bias")  # Chainer initializers, not scalar options


@pytest.mark.parametrize("link, required, argument",
                         list(layer_argument_cases(LINKS, skip=INITIALIZERS)))
def test_every_scalar_argument_of_every_link_is_type_checked(link, required, argument):
    check_layer_argument(link, required, argument)


@pytest.mark.parametrize("pack", [adapter.DeformConv2dPack, adapter.ModulatedDeformConv2dPack])
@pytest.mark.parametrize("x, error", [
    (numpy.zeros((1, 8, 2, 2), numpy.float32), ValueError),  # smaller than the kernel
    (numpy.zeros((1, 6, 5, 5), numpy.float32), ValueError),  # other channels
    (numpy.zeros((8, 5, 5), numpy.float32), ValueError),  # not 4-D
    (numpy.zeros((1, 8, 5, 5), numpy.int64), TypeError),
    (numpy.zeros((1, 8, 5, 5), numpy.float64), TypeError),  # not W's dtype
    ([[1.0]], TypeError),
], ids=["small", "channels", "3-D", "int64", "float64", "list"])
def test_pack_links_check_the_input_as_the_plain_link(pack, x, error):
    plain, packed = adapter.DeformConv2d(8, 8, 3), pack(8, 8, 3)
    dtype = x.dtype if isinstance(x, numpy.ndarray) and x.dtype.kind == "f" else numpy.float32
    with pytest.raises(error) as expected:
        plain(x, numpy.zeros((1, 18, 3, 3), dtype))
    with pytest.raises(error) as got:
        packed(x)
    assert str(got.value) == str(expected.value)


def test_pooling_packs_check_their_channels():
    rois = numpy.array([[0, 0, 0, 4, 4.]], numpy.float32)
    with pytest.raises(ValueError, match=r"^x.shape\[1\] is not valid: expected in_channels=4, "
                                         r"got 3$"):
        adapter.DeformRoIPoolPack(2, in_channels=4, deform_fc_channels=8)(
            numpy.zeros((1, 3, 5, 5), numpy.float32), rois)
    with pytest.raises(ValueError, match=r"^features.shape\[1\] is not valid: expected "
                                         r"in_channels=4, got 3$"):
        adapter.DeformPSRoIPoolPack(4, 2, 2, 2)(numpy.zeros((1, 3, 5, 5), numpy.float32),
                                                numpy.zeros((1, 8, 5, 5), numpy.float32), rois)
