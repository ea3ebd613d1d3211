"""The PyTorch adapter's argument errors: every tensor argument and option of its
functions (torchvision's, the RoI poolings' and mmcv's), every scalar argument of every
layer, and the Pack layers' check of their input."""

from __future__ import annotations

import numpy
import pytest

torch = pytest.importorskip("torch")

from cudeform.adapters import torch as adapter  # noqa: E402
from cudeform.adapters.torch import functional, mmcv  # noqa: E402
from tests.argument_tables import (  # noqa: E402
    WRONG_KIND_OPTIONS, array_cases, call_with, check_layer_argument,
    check_nan_or_negative_option, check_wrong_kind_option, layer_argument_cases,
    option_cases, run_valid_calls,
)


def _conv():
    return dict(input=torch.zeros(1, 2, 5, 5), offset=torch.zeros(1, 18, 3, 3),
                weight=torch.zeros(2, 2, 3, 3), bias=torch.zeros(2),
                mask=torch.zeros(1, 9, 3, 3)), dict(stride=1, padding=0, dilation=1)


def _roi_pool():
    return dict(input=torch.zeros(1, 2, 5, 5), rois=torch.tensor([[0, 0, 0, 4, 4.]]),
                offset=torch.zeros(1, 2, 2, 2)), \
        dict(output_size=2, spatial_scale=0.5, sampling_ratio=1, gamma=0.1)


def _psroi_pool():
    return dict(input=torch.zeros(1, 8, 5, 5), rois=torch.tensor([[0, 0, 0, 4, 4.]]),
                offset=torch.zeros(1, 2, 2, 2)), \
        dict(output_dim=2, group_size=2, pooled_size=2, part_size=2, sample_per_part=2,
             spatial_scale=0.5, trans_std=0.1)


def _mmcv_conv():
    arrays, options = _conv()
    del arrays["bias"], arrays["mask"]
    return arrays, dict(options, groups=1, deform_groups=1, bias=False, im2col_step=32)


def _mmcv_modulated():
    arrays, options = _conv()
    return arrays, dict(options, groups=1, deform_groups=1)


FUNCTIONS = {
    "deform_conv2d": (functional.deform_conv2d, _conv, ("bias", "mask")),
    "deform_roi_pool": (functional.deform_roi_pool, _roi_pool, ("offset",)),
    "deform_psroi_pool": (functional.deform_psroi_pool, _psroi_pool, ("offset",)),
    "mmcv.deform_conv2d": (mmcv.deform_conv2d, _mmcv_conv, ()),
    "mmcv.modulated_deform_conv2d": (mmcv.modulated_deform_conv2d, _mmcv_modulated, ("bias",)),
    "mmcv.deform_roi_pool": (mmcv.deform_roi_pool, _roi_pool, ("offset",)),
}


def test_every_valid_call_runs():
    run_valid_calls(FUNCTIONS)


@pytest.mark.parametrize("function, argument, optional", list(array_cases(FUNCTIONS)))
def test_a_tensor_argument_of_the_wrong_kind_names_it(function, argument, optional):
    tensor = FUNCTIONS[function][1]()[0][argument]
    junk = {"list": tensor.tolist(), "numpy.ndarray": tensor.numpy(), "float": 1.0,
            "str": "input"}
    if not optional:
        junk["NoneType"] = None
    for kind, value in junk.items():
        with pytest.raises(TypeError, match=rf"^{argument} must be a torch.Tensor, got {kind}$"):
            call_with(FUNCTIONS, function, **{argument: value})


@pytest.mark.parametrize("function, argument, optional", list(array_cases(FUNCTIONS)))
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool,
                                   torch.complex64])
def test_an_unsupported_dtype_is_named_as_such(function, argument, optional, dtype):
    bad = FUNCTIONS[function][1]()[0][argument].to(dtype)
    with pytest.raises(TypeError, match=rf"^{argument} has dtype {dtype}, which cudeform does "
                                        r"not support for tensors; expected one of "):
        call_with(FUNCTIONS, function, **{argument: bad})


@pytest.mark.parametrize("function, option", list(option_cases(FUNCTIONS)))
@pytest.mark.parametrize("value", WRONG_KIND_OPTIONS)
def test_an_option_of_the_wrong_kind_names_it(function, option, value):
    check_wrong_kind_option(FUNCTIONS, function, option, value)


@pytest.mark.parametrize("function, option", [
    (name, option) for name, option in option_cases(FUNCTIONS) if option != "bias"])
def test_nan_or_a_negative_option_names_it(function, option):
    check_nan_or_negative_option(FUNCTIONS, function, option)


# --- layers ---------------------------------------------------------------------------


LAYERS = {
    adapter.DeformConv2d: dict(in_channels=4, out_channels=4, kernel_size=3),
    mmcv.DeformConv2d: dict(in_channels=4, out_channels=4, kernel_size=3),
    mmcv.DeformConv2dPack: dict(in_channels=4, out_channels=4, kernel_size=3),
    mmcv.ModulatedDeformConv2d: dict(in_channels=4, out_channels=4, kernel_size=3),
    mmcv.ModulatedDeformConv2dPack: dict(in_channels=4, out_channels=4, kernel_size=3),
    adapter.DeformRoIPool: dict(output_size=2),
    adapter.DeformRoIPoolPack: dict(output_size=2, output_channels=4),
    adapter.ModulatedDeformRoIPoolPack: dict(output_size=2, output_channels=4),
    adapter.DeformPSRoIPool: dict(output_dim=2, group_size=2, pooled_size=2),
    adapter.DeformPSRoIPoolPack: dict(in_channels=4, output_dim=2, group_size=2,
                                      pooled_size=2),
}


@pytest.mark.parametrize("layer, required, argument", list(layer_argument_cases(LAYERS)))
def test_every_scalar_argument_of_every_layer_is_type_checked(layer, required, argument):
    check_layer_argument(layer, required, argument)


# --- Pack layers: the input checks of the layers without an offset branch ---------------


@pytest.mark.parametrize("pack, plain, extra", [
    (mmcv.DeformConv2dPack, mmcv.DeformConv2d, ()),
    (mmcv.ModulatedDeformConv2dPack, mmcv.ModulatedDeformConv2d, ("mask",)),
], ids=["DeformConv2dPack", "ModulatedDeformConv2dPack"])
@pytest.mark.parametrize("input, error", [
    (torch.randn(1, 8, 2, 2), ValueError),  # smaller than the kernel
    (torch.randn(1, 8, 4, 1), ValueError),
    (torch.randn(1, 6, 5, 5), ValueError),  # other channels
    (torch.randn(8, 5, 5), ValueError),  # not 4-D
    (torch.ones(1, 8, 5, 5, dtype=torch.int64), TypeError),
    (torch.randn(1, 8, 5, 5, dtype=torch.float64), TypeError),  # not the weight's dtype
    (numpy.zeros((1, 8, 5, 5), numpy.float32), TypeError),
], ids=["small", "narrow", "channels", "3-D", "int64", "float64", "numpy"])
def test_pack_layers_check_the_input_as_the_plain_layers(pack, plain, extra, input, error):
    kwargs = dict(in_channels=8, out_channels=8, kernel_size=3)
    plain_layer, pack_layer = plain(**kwargs), pack(**kwargs)
    # The plain layer gets the offset (and mask) the op would want for this input.
    dtype = input.dtype if isinstance(input, torch.Tensor) and input.is_floating_point() \
        else torch.float32
    others = dict(offset=torch.zeros(1, 18, 3, 3, dtype=dtype),
                  mask=torch.zeros(1, 9, 3, 3, dtype=dtype))
    with pytest.raises(error) as expected:
        plain_layer(input, *(others[name] for name in ("offset", *extra)))
    with pytest.raises(error) as got:
        pack_layer(input)
    assert str(got.value) == str(expected.value)


def test_the_issue_example_is_the_documented_value_error():
    with pytest.raises(ValueError, match=r"^input.shape is not valid: with kernel \(3, 3\), "
                                         r"stride \(1, 1\), padding \(0, 0\) and dilation "
                                         r"\(1, 1\) the output would be 0x0; got input shape "
                                         r"\(1, 8, 2, 2\)$"):
        mmcv.DeformConv2dPack(8, 8, 3)(torch.randn(1, 8, 2, 2))


def test_mmcv_groups_messages_say_the_count_the_shapes_give():
    x, weight = torch.zeros(1, 8, 5, 5), torch.zeros(8, 8, 3, 3)
    offset = torch.zeros(1, 18, 3, 3)
    with pytest.raises(ValueError, match=r"^groups is not valid: expected input.shape\[1\] // "
                                         r"weight.shape\[1\] = 8 // 8 = 1, got 2$"):
        mmcv.deform_conv2d(x, offset, weight, groups=2)
    with pytest.raises(ValueError, match=r"^deform_groups is not valid: expected "
                                         r"offset.shape\[1\] // \(2\*kh\*kw\) = 18 // 18 = 1, "
                                         r"got 3$"):
        mmcv.modulated_deform_conv2d(x, offset, torch.zeros(1, 9, 3, 3), weight,
                                     deform_groups=3)
