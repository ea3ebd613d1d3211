"""mmcv compatibility of :mod:`cudeform.adapters.torch.mmcv`: signatures and defaults,
state dicts with mmcv's keys and shapes (built by hand from mmcv's parameter names),
mmcv's initialisation, ``im2col_step`` without a divisibility rule, and mmcv's
functionals. mmcv itself is not a dependency: the oracles are its documented wiring,
written out here with torch's own layers and cudeform's NumPy core.

Skipped when PyTorch cannot be imported (install the ``torch`` extra).
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import cudeform  # noqa: E402
from cudeform.adapters import torch as adapter  # noqa: E402
from cudeform.adapters.torch import mmcv  # noqa: E402
from tests.helpers import assert_close  # noqa: E402

CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
        "groups", "deform_groups", "bias")
ROI_PACK = ("output_size", "output_channels", "deform_fc_channels", "spatial_scale",
            "sampling_ratio", "gamma")
# mmcv.ops signatures: (parameter names, defaults of the trailing ones)
SIGNATURES = {
    mmcv.DeformConv2d: (CONV + ("im2col_step",), (1, 0, 1, 1, 1, False, 32)),
    mmcv.DeformConv2dPack: (CONV + ("im2col_step",), (1, 0, 1, 1, 1, False, 32)),
    mmcv.ModulatedDeformConv2d: (CONV, (1, 0, 1, 1, 1, True)),
    mmcv.ModulatedDeformConv2dPack: (CONV, (1, 0, 1, 1, 1, True)),
    mmcv.DeformRoIPool: (("output_size", "spatial_scale", "sampling_ratio", "gamma"),
                         (1.0, 0, 0.1)),
    mmcv.DeformRoIPoolPack: (ROI_PACK, (1024, 1.0, 0, 0.1)),
    mmcv.ModulatedDeformRoIPoolPack: (ROI_PACK, (1024, 1.0, 0, 0.1)),
    mmcv.deform_conv2d: (("input", "offset", "weight", "stride", "padding", "dilation",
                          "groups", "deform_groups", "bias", "im2col_step"),
                         (1, 0, 1, 1, 1, False, 32)),
    mmcv.modulated_deform_conv2d: (("input", "offset", "mask", "weight", "bias", "stride",
                                    "padding", "dilation", "groups", "deform_groups"),
                                   (None, 1, 0, 1, 1, 1)),
    mmcv.deform_roi_pool: (("input", "rois", "offset", "output_size", "spatial_scale",
                            "sampling_ratio", "gamma"), (1.0, 0, 0.1)),
}
FORWARDS = {mmcv.DeformConv2d: ("x", "offset"), mmcv.DeformConv2dPack: ("x",),
            mmcv.ModulatedDeformConv2d: ("x", "offset", "mask"),
            mmcv.ModulatedDeformConv2dPack: ("x",)}


@pytest.mark.parametrize("target", list(SIGNATURES), ids=lambda t: t.__name__)
def test_signatures_and_defaults_are_mmcvs(target):
    names, defaults = SIGNATURES[target]
    function = target.__init__ if inspect.isclass(target) else target
    parameters = list(inspect.signature(function).parameters.values())
    parameters = parameters[1:] if inspect.isclass(target) else parameters
    assert tuple(p.name for p in parameters) == names
    assert all(p.kind == p.POSITIONAL_OR_KEYWORD for p in parameters)
    assert tuple(p.default for p in parameters if p.default is not p.empty) == defaults
    if target in FORWARDS:
        forward = list(inspect.signature(target.forward).parameters)[1:]
        assert tuple(forward) == FORWARDS[target]


def test_names_shared_with_torchvision():
    """``cudeform.adapters.torch.DeformConv2d`` is torchvision's layer (mask, bias by
    default); mmcv's is ``cudeform.adapters.torch.mmcv.DeformConv2d``. The other mmcv
    names are the same classes in both modules."""
    assert adapter.DeformConv2d is not mmcv.DeformConv2d
    assert adapter.DeformConv2d(4, 4, 3).bias is not None
    assert mmcv.DeformConv2d(4, 4, 3).bias is None
    assert "mask" in inspect.signature(adapter.DeformConv2d.forward).parameters
    for name in ("DeformConv2dPack", "ModulatedDeformConv2d", "ModulatedDeformConv2dPack",
                 "DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack"):
        assert getattr(adapter, name) is getattr(mmcv, name)
    layer = mmcv.DeformConv2dPack(4, 6, 3, 2, 1, 1, 2, 2, True, 8)  # positional, mmcv's order
    assert (layer.stride, layer.padding, layer.groups, layer.deform_groups) == \
        ((2, 2), (1, 1), 2, 2)
    assert layer.bias is not None and layer.im2col_step == 8
    assert layer.transposed is False and layer.output_padding == (0,)


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def conv_offset_state(in_channels, channels, kernel):
    return {"conv_offset.weight": 0.1 * randn(channels, in_channels, *kernel),
            "conv_offset.bias": 0.1 * randn(channels)}


def mmcv_conv_state(layer_type, in_channels, out_channels, kernel, groups, deform_groups):
    """A state dict with the keys and shapes of the mmcv layer ``layer_type``."""
    taps = kernel[0] * kernel[1]
    state = OrderedDict(weight=randn(out_channels, in_channels // groups, *kernel))
    if layer_type in (mmcv.ModulatedDeformConv2d, mmcv.ModulatedDeformConv2dPack):
        state["bias"] = randn(out_channels)
    if layer_type is mmcv.DeformConv2dPack:
        state.update(conv_offset_state(in_channels, 2 * deform_groups * taps, kernel))
    if layer_type is mmcv.ModulatedDeformConv2dPack:
        state.update(conv_offset_state(in_channels, 3 * deform_groups * taps, kernel))
    return state


def core(x, offset, state, mask=None, **options):
    bias = state.get("bias")
    return cudeform.deform_conv2d(
        x.numpy(), offset.detach().numpy(), state["weight"].numpy(),
        None if bias is None else bias.numpy(),
        mask=None if mask is None else mask.detach().numpy(), **options)


@pytest.mark.parametrize("layer_type", list(FORWARDS), ids=lambda t: t.__name__)
def test_mmcv_state_dict_loads_and_computes_mmcvs_wiring(layer_type):
    torch.manual_seed(80)
    kernel, options = (3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    state = mmcv_conv_state(layer_type, 4, 6, kernel, groups=2, deform_groups=2)
    layer = layer_type(4, 6, kernel, **options, groups=2, deform_groups=2).double()
    layer.load_state_dict(state, strict=True)
    assert {k: v.shape for k, v in layer.state_dict().items()} == \
        {k: v.shape for k, v in state.items()}
    x = randn(2, 4, 9, 8)
    taps = 2 * kernel[0] * kernel[1]  # deform_groups * kh * kw
    conv_options = dict(stride=options["stride"], padding=options["padding"],
                        dilation=options["dilation"])
    with torch.no_grad():
        if "conv_offset.weight" in state:
            predicted = F.conv2d(x, state["conv_offset.weight"], state["conv_offset.bias"],
                                 **conv_options)
        else:
            predicted = 0.5 * randn(2, 3 * taps, 5, 6)  # the output's size
        if layer_type in (mmcv.DeformConv2d, mmcv.DeformConv2dPack):
            offset, mask = predicted[:, :2 * taps], None
        else:  # mmcv: chunk into three, offset = cat(first two), mask = sigmoid(third)
            o1, o2, m = torch.chunk(predicted, 3, dim=1)
            offset, mask = torch.cat((o1, o2), dim=1), torch.sigmoid(m)
        arguments = {mmcv.DeformConv2d: (x, offset),
                     mmcv.ModulatedDeformConv2d: (x, offset, mask)}.get(layer_type, (x,))
        assert_close(layer(*arguments).numpy(), core(x, offset, state, mask, **conv_options))


def roi_pack_state(layer_type, output_size, channels, hidden):
    ph, pw = output_size
    state = OrderedDict()
    for i, (rows, columns) in zip((0, 2, 4), ((hidden, channels * ph * pw), (hidden, hidden),
                                              (2 * ph * pw, hidden))):
        state[f"offset_fc.{i}.weight"] = 0.05 * randn(rows, columns)
        state[f"offset_fc.{i}.bias"] = 0.05 * randn(rows)
    if layer_type is mmcv.ModulatedDeformRoIPoolPack:
        for i, (rows, columns) in zip((0, 2), ((hidden, channels * ph * pw), (ph * pw, hidden))):
            state[f"mask_fc.{i}.weight"] = 0.05 * randn(rows, columns)
            state[f"mask_fc.{i}.bias"] = 0.05 * randn(rows)
    return state


@pytest.mark.parametrize("layer_type", [mmcv.DeformRoIPoolPack,
                                        mmcv.ModulatedDeformRoIPoolPack],
                         ids=lambda t: t.__name__)
def test_mmcv_roi_pool_state_dict_loads(layer_type):
    torch.manual_seed(81)
    state = roi_pack_state(layer_type, (2, 3), channels=4, hidden=8)
    layer = layer_type((2, 3), 4, 8, spatial_scale=0.5, sampling_ratio=2).double()
    layer.load_state_dict(state, strict=True)
    x = randn(2, 4, 9, 8)
    rois = torch.tensor([[0, 1, 1, 12, 10], [1, 2, 0, 9, 14], [1, 0, 3, 15, 15.]],
                        dtype=torch.float64)
    options = dict(output_size=(2, 3), spatial_scale=0.5, sampling_ratio=2, gamma=0.1)
    pooled = torch.from_numpy(cudeform.deform_roi_pool(x.numpy(), rois.numpy(), **options))
    flat = pooled.view(3, -1)
    hidden = F.relu(F.linear(flat, state["offset_fc.0.weight"], state["offset_fc.0.bias"]))
    hidden = F.relu(F.linear(hidden, state["offset_fc.2.weight"], state["offset_fc.2.bias"]))
    offset = F.linear(hidden, state["offset_fc.4.weight"], state["offset_fc.4.bias"])
    expected = cudeform.deform_roi_pool(x.numpy(), rois.numpy(),
                                        offset.view(3, 2, 2, 3).numpy(), **options)
    if layer_type is mmcv.ModulatedDeformRoIPoolPack:
        hidden = F.relu(F.linear(flat, state["mask_fc.0.weight"], state["mask_fc.0.bias"]))
        mask = torch.sigmoid(F.linear(hidden, state["mask_fc.2.weight"],
                                      state["mask_fc.2.bias"]))
        expected = expected * mask.view(3, 1, 2, 3).numpy()
    with torch.no_grad():
        assert_close(layer(x, rois).numpy(), expected)


def test_initialisation_is_mmcvs():
    """mmcv's sequence of draws, written out: the same seed gives the same weights."""
    kernel, fan_in = (3, 2), 2 * 3 * 2  # in_channels / groups * kh * kw
    torch.manual_seed(82)
    layer = mmcv.DeformConv2dPack(4, 6, kernel, groups=2)
    torch.manual_seed(82)
    bound = math.sqrt(6 / fan_in)  # kaiming_uniform_(nonlinearity="relu")
    assert torch.equal(layer.weight, torch.empty(6, 2, *kernel).uniform_(-bound, bound))
    assert layer.bias is None and not layer.conv_offset.weight.any() \
        and not layer.conv_offset.bias.any()

    torch.manual_seed(83)
    layer = mmcv.ModulatedDeformConv2dPack(4, 6, kernel, groups=2, deform_groups=2)
    torch.manual_seed(83)
    bound = 1 / math.sqrt(4 * 3 * 2)  # mmcv counts every input channel, whatever groups
    torch.empty(6, 2, *kernel).uniform_(-bound, bound)  # the parent's init_weights
    nn.Conv2d(4, 3 * 2 * 6, kernel)  # conv_offset is built (and drawn) before it is zeroed
    assert torch.equal(layer.weight, torch.empty(6, 2, *kernel).uniform_(-bound, bound))
    assert torch.equal(layer.bias, torch.zeros(6))
    assert not layer.conv_offset.weight.any() and not layer.conv_offset.bias.any()


@pytest.mark.parametrize("im2col_step", [1, 2, 32])
def test_im2col_step_has_no_effect(im2col_step):
    """Any batch size works with any ``im2col_step`` (mmcv requires a divisor); every
    sample's output is that of the sample alone."""
    torch.manual_seed(84)
    layer = mmcv.DeformConv2dPack(3, 4, 3, padding=1, im2col_step=im2col_step)
    with torch.no_grad():
        layer.double().conv_offset.weight.normal_(0, 0.3)
        x = randn(5, 3, 6, 6)
        together = layer(x)
        alone = torch.cat([layer(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-12)  # sums reordered


def test_functionals_take_mmcvs_positional_order():
    torch.manual_seed(85)
    x, weight = randn(2, 4, 7, 6), randn(6, 2, 3, 3)
    offset, mask, bias = randn(2, 2 * 2 * 9, 5, 4), torch.rand(2, 2 * 9, 5, 4).double(), \
        randn(6)
    y = mmcv.deform_conv2d(x, offset, weight, 1, 0, 1, 2, 2, False, 4)
    state = {"weight": weight}
    assert_close(y.numpy(), core(x, offset, state))
    y = mmcv.modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 0, 1, 2, 2)
    assert_close(y.numpy(), core(x, offset, {"weight": weight, "bias": bias}, mask))
    rois = torch.tensor([[0, 1, 1, 5, 6], [1, 0, 2, 4, 4.]], dtype=torch.float64)
    pool_offset = 0.3 * randn(2, 2, 2, 2)
    y = mmcv.deform_roi_pool(x, rois, pool_offset, 2, 0.5, 2, 0.2)
    assert_close(y.numpy(), cudeform.deform_roi_pool(
        x.numpy(), rois.numpy(), pool_offset.numpy(), output_size=2, spatial_scale=0.5,
        sampling_ratio=2, gamma=0.2))

    with pytest.raises(ValueError, match=r"^groups is not valid: expected input.shape\[1\] // "
                                         r"weight.shape\[1\] = 4 // 2 = 2, got 1$"):
        mmcv.deform_conv2d(x, offset, weight, 1, 0, 1, 1, 2)
    with pytest.raises(ValueError, match=r"^deform_groups is not valid: expected "
                                         r"offset.shape\[1\] // \(2\*kh\*kw\) = 36 // 18 = 2, "
                                         r"got 1$"):
        mmcv.modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 0, 1, 2, 1)
    with pytest.raises(ValueError, match="^bias is not valid: mmcv's deform_conv2d takes "
                                         "bias=False only"):
        mmcv.deform_conv2d(x, offset, weight, 1, 0, 1, 2, 2, True)
    with pytest.raises(ValueError, match=r"^offset.shape\[1\] is not valid: expected "
                                         r"2\*deform_groups\*kh\*kw=18, got 36$"):
        mmcv.DeformConv2d(4, 6, 3, groups=2).double()(x, offset)
