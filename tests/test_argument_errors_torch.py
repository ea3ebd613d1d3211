"""The PyTorch adapter's argument errors: every tensor argument and option of its
functions (torchvision's, the RoI poolings' and mmcv's), every scalar argument of every
layer, and the Pack layers' check of their input."""

from __future__ import annotations

import inspect
import re

import numpy
import pytest

torch = pytest.importorskip("torch")

from cudeform.adapters import torch as adapter  # noqa: E402
from cudeform.adapters.torch import functional, mmcv  # noqa: E402


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


def _tensors():
    for name, (_, valid, optional) in FUNCTIONS.items():
        for argument in valid()[0]:
            yield name, argument, argument in optional


def _options():
    for name, (_, valid, _) in FUNCTIONS.items():
        for option in valid()[1]:
            yield name, option


def test_every_valid_call_runs():
    for run, valid, _ in FUNCTIONS.values():
        arrays, options = valid()
        run(**arrays, **options)


@pytest.mark.parametrize("function, argument, optional", list(_tensors()))
def test_a_tensor_argument_of_the_wrong_kind_names_it(function, argument, optional):
    run, valid, _ = FUNCTIONS[function]
    arrays, options = valid()
    junk = {"list": arrays[argument].tolist(), "numpy.ndarray": arrays[argument].numpy(),
            "float": 1.0, "str": "input"}
    if not optional:
        junk["NoneType"] = None
    for kind, value in junk.items():
        with pytest.raises(TypeError, match=rf"^{argument} must be a torch.Tensor, got {kind}$"):
            run(**{**arrays, argument: value}, **options)


@pytest.mark.parametrize("function, argument, optional", list(_tensors()))
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool,
                                   torch.complex64])
def test_an_unsupported_dtype_is_named_as_such(function, argument, optional, dtype):
    run, valid, _ = FUNCTIONS[function]
    arrays, options = valid()
    with pytest.raises(TypeError, match=rf"^{argument} has dtype {dtype}, which cudeform does "
                                        r"not support for tensors; expected one of "):
        run(**{**arrays, argument: arrays[argument].to(dtype)}, **options)


@pytest.mark.parametrize("function, option", list(_options()))
@pytest.mark.parametrize("value", ["0.5", None])
def test_an_option_of_the_wrong_kind_names_it(function, option, value):
    run, valid, _ = FUNCTIONS[function]
    arrays, options = valid()
    if option == "part_size" and value is None:
        value = "2"  # None is part_size's default
    given = "None" if value is None else f"str {value!r}"
    with pytest.raises(TypeError, match=rf"^{option} is not valid: .*, got "
                                        rf"{re.escape(given)}$"):
        run(**arrays, **{**options, option: value})


@pytest.mark.parametrize("function, option", [
    (name, option) for name, option in _options() if option != "bias"])
def test_nan_or_a_negative_option_names_it(function, option):
    run, valid, _ = FUNCTIONS[function]
    arrays, options = valid()
    value = float("nan") if option in ("spatial_scale", "gamma", "trans_std") else -1
    with pytest.raises(ValueError, match=rf"^{option} is not valid: expected "):
        run(**arrays, **{**options, option: value})


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


def _layer_arguments():
    for layer, required in LAYERS.items():
        for name in inspect.signature(layer).parameters:
            yield pytest.param(layer, required, name, id=f"{layer.__qualname__}-{name}")


@pytest.mark.parametrize("layer, required, argument", list(_layer_arguments()))
def test_every_scalar_argument_of_every_layer_is_type_checked(layer, required, argument):
    layer(**required)
    for value in ("1", b"1", object()):
        with pytest.raises(TypeError, match=rf"^{argument} is not valid: expected "):
            layer(**{**required, argument: value})
    if inspect.signature(layer).parameters[argument].default is not None:
        with pytest.raises(TypeError, match=rf"^{argument} is not valid: expected .*, got None$"):
            layer(**{**required, argument: None})


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
