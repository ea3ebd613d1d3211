"""The PyTorch layers: shapes, constructors that validate their arguments, torchvision
compatibility (constructor, initialisation, state dict), every ``...Pack`` starting
offset-free, and training. mmcv compatibility is in ``test_adapter_torch_mmcv.py``.

Skipped when PyTorch cannot be imported (install the ``torch`` extra).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import cudeform  # noqa: E402
from cudeform.adapters import torch_layers as layers  # noqa: E402
from tests.helpers import assert_close  # noqa: E402

ROIS = [[0, 1, 1, 6, 7], [1, 0, 2, 5, 5], [1, 2.5, 0.5, 7.5, 8]]


@pytest.fixture
def seeded():
    torch.manual_seed(20)


def features(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def rois(dtype=torch.float32):
    return torch.tensor(ROIS, dtype=dtype)


def test_deform_conv2d_shapes(seeded):
    conv = layers.DeformConv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2),
                               groups=2)
    assert conv.weight.shape == (6, 2, 3, 2) and conv.bias.shape == (6,)
    assert (conv.stride, conv.padding, conv.dilation) == ((2, 1), (1, 1), (1, 2))
    x = features(2, 4, 9, 8)
    offset = torch.zeros(2, 2 * 2 * 6, 5, 8)  # 2 offset groups
    assert conv(x, offset).shape == (2, 6, 5, 8)
    assert conv(x, offset, torch.ones(2, 2 * 6, 5, 8)).shape == (2, 6, 5, 8)
    assert layers.DeformConv2d(4, 6, 3, bias=False).bias is None
    with pytest.raises(ValueError, match="groups is not valid.*got 3"):
        layers.DeformConv2d(4, 6, 3, groups=3)


def test_pack_shapes(seeded):
    x = features(2, 4, 9, 8)
    for layer_type, parts in ((layers.DeformConv2dPack, 2),
                              (layers.ModulatedDeformConv2dPack, 3)):
        layer = layer_type(4, 6, 3, stride=2, padding=1, deform_groups=2)
        assert layer.conv_offset.weight.shape == (parts * 2 * 9, 4, 3, 3)
        assert layer.conv_offset.stride == (2, 2) and layer.conv_offset.padding == (1, 1)
        assert layer(x).shape == (2, 6, 5, 4)
    with pytest.raises(ValueError, match="deform_groups is not valid.*got 3"):
        layers.DeformConv2dPack(4, 6, 3, deform_groups=3)

    pool = layers.DeformRoIPool((2, 3), spatial_scale=0.5, sampling_ratio=2)
    assert pool(x, rois()).shape == (3, 4, 2, 3)
    assert pool(x, rois(), torch.zeros(3, 2, 2, 3)).shape == (3, 4, 2, 3)
    for layer_type in (layers.DeformRoIPoolPack, layers.ModulatedDeformRoIPoolPack):
        pack = layer_type((2, 3), 4, deform_fc_channels=16)
        assert pack.offset_fc[0].in_features == 4 * 2 * 3
        assert pack.offset_fc[-1].out_features == 2 * 2 * 3
        assert pack(x, rois()).shape == (3, 4, 2, 3)
        with pytest.raises(ValueError, match=r"input.shape\[1\] is not valid.*got 5"):
            pack(features(2, 5, 9, 8), rois())
    assert pack.mask_fc[-2].out_features == 2 * 3

    ps = layers.DeformPSRoIPool(output_dim=3, group_size=2, pooled_size=3)
    scores = features(2, 3 * 4, 9, 8)
    assert ps(scores, rois()).shape == (3, 3, 3, 3)
    assert ps(scores, rois(), torch.zeros(3, 2 * 3, 3, 3)).shape == (3, 3, 3, 3)
    head = layers.DeformPSRoIPoolPack(4, output_dim=3, group_size=2, pooled_size=3,
                                      num_classes=3)
    assert head.conv_offset.weight.shape == (2 * 3 * 9, 4, 1, 1)
    assert head(x, scores, rois()).shape == (3, 3, 3, 3)


def torchvision_state_dict(in_channels, out_channels, kernel_size, groups, bias):
    """A state dict with the key names and shapes of ``torchvision.ops.DeformConv2d``
    (torchvision itself is not a dependency)."""
    state = OrderedDict(weight=torch.randn(out_channels, in_channels // groups, *kernel_size))
    if bias:
        state["bias"] = torch.randn(out_channels)
    return state


@pytest.mark.parametrize("bias", [True, False])
def test_torchvision_state_dict_loads(seeded, bias):
    state = torchvision_state_dict(6, 4, (3, 2), groups=2, bias=bias)
    conv = layers.DeformConv2d(6, 4, (3, 2), padding=1, groups=2, bias=bias)
    conv.load_state_dict(state, strict=True)
    assert list(conv.state_dict()) == list(state)
    for name, value in state.items():
        assert torch.equal(getattr(conv, name), value)
    x, offset = features(2, 6, 5, 5), 0.3 * features(2, 2 * 6, 5, 6)
    expected = cudeform.deform_conv2d(x.numpy(), offset.numpy(), state["weight"].numpy(),
                                      state["bias"].numpy() if bias else None, padding=1)
    assert_close(conv(x, offset).detach().numpy(), expected, numpy.float32)


def test_torchvision_initialisation(seeded):
    """torchvision (and ``nn.Conv2d``) draw the weight from kaiming_uniform_(a=sqrt(5)),
    i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the bias from the same bound."""
    torch.manual_seed(3)
    conv = layers.DeformConv2d(8, 32, 3, groups=2)
    torch.manual_seed(3)
    reference = nn.Conv2d(8, 32, 3, groups=2)
    assert torch.equal(conv.weight, reference.weight)
    assert torch.equal(conv.bias, reference.bias)
    bound = 1 / math.sqrt(4 * 3 * 3)
    assert conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound


def test_conv_packs_start_offset_free(seeded):
    x = features(2, 4, 9, 8)
    options = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    pack = layers.DeformConv2dPack(4, 6, (3, 2), groups=2, deform_groups=2, **options)
    assert pack.bias is None  # mmcv's default
    plain = nn.Conv2d(4, 6, (3, 2), groups=2, bias=False, **options)
    plain.load_state_dict({"weight": pack.weight})
    with torch.no_grad():
        assert_close(pack(x).numpy(), plain(x).numpy(), numpy.float32)
    modulated = layers.ModulatedDeformConv2dPack(4, 6, (3, 2), **options)
    assert torch.equal(modulated.bias, torch.zeros(6))  # mmcv's initialisation
    with torch.no_grad():
        modulated.bias.normal_()
    plain = nn.Conv2d(4, 6, (3, 2), **options)
    plain.load_state_dict({"weight": modulated.weight, "bias": modulated.bias})
    with torch.no_grad():  # mask sigmoid(0) = 0.5 scales the samples, not the bias
        expected = 0.5 * (plain(x) - plain.bias[:, None, None]) + plain.bias[:, None, None]
        assert_close(modulated(x).numpy(), expected.numpy(), numpy.float32)


def test_pooling_packs_start_offset_free(seeded):
    x = features(2, 4, 9, 8)
    options = dict(output_size=2, spatial_scale=0.5, sampling_ratio=2)
    plain = cudeform.deform_roi_pool(x.numpy(), rois().numpy(), **options)
    with torch.no_grad():
        pool = layers.DeformRoIPoolPack(2, 4, 8, spatial_scale=0.5, sampling_ratio=2)
        numpy.testing.assert_array_equal(pool(x, rois()).numpy(), plain)
        pool = layers.ModulatedDeformRoIPoolPack(2, 4, 8, spatial_scale=0.5, sampling_ratio=2)
        numpy.testing.assert_array_equal(pool(x, rois()).numpy(), 0.5 * plain)  # sigmoid(0)
        head = layers.DeformPSRoIPoolPack(4, output_dim=1, group_size=2, pooled_size=2)
        numpy.testing.assert_array_equal(
            head(x, x, rois()).numpy(),
            cudeform.deform_psroi_pool(x.numpy(), rois().numpy(), output_dim=1,
                                       group_size=2, pooled_size=2))


def test_pooling_packs_learn_offsets(seeded):
    x = features(2, 4, 9, 8)
    for pool in (layers.DeformRoIPoolPack(2, 4, 8), layers.ModulatedDeformRoIPoolPack(2, 4, 8)):
        (pool(x, rois()) ** 2).sum().backward()
        assert pool.offset_fc[-1].weight.grad.abs().max() > 0
    assert pool.mask_fc[-2].weight.grad.abs().max() > 0
    head = layers.DeformPSRoIPoolPack(4, output_dim=1, group_size=2, pooled_size=2)
    (head(x, x, rois()) ** 2).sum().backward()
    assert head.conv_offset.weight.grad.abs().max() > 0


@pytest.mark.parametrize("layer_type", [layers.DeformConv2dPack,
                                        layers.ModulatedDeformConv2dPack])
def test_conv_pack_trains(seeded, layer_type):
    x, target = features(4, 3, 8, 8), features(4, 2, 8, 8)
    model = nn.Sequential(layer_type(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(15):
        loss = nn.functional.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert model[0].conv_offset.weight.abs().max() > 0  # the offsets are learned too


@pytest.mark.parametrize("build, message", [
    (lambda: layers.DeformPSRoIPoolPack(4, output_dim=2, group_size=2, pooled_size=3,
                                        num_classes=3),
     r"^num_classes is not valid: expected a divisor of output_dim=2, got 3$"),
    (lambda: layers.DeformPSRoIPoolPack(4, output_dim=2, group_size=2, pooled_size=0),
     r"^pooled_size is not valid: expected an int >= 1, got 0$"),
    (lambda: layers.DeformPSRoIPoolPack(4, output_dim=2, group_size=2, pooled_size=3,
                                        trans_std=float("nan")),
     r"^trans_std is not valid: expected a finite number, got nan$"),
    (lambda: layers.DeformPSRoIPool(output_dim=2, group_size=2, pooled_size=3,
                                    sample_per_part=0),
     r"^sample_per_part is not valid: expected an int >= 1, got 0$"),
    (lambda: layers.DeformRoIPoolPack(2, output_channels=0),
     r"^output_channels is not valid: expected an int >= 1, got 0$"),
    (lambda: layers.ModulatedDeformRoIPoolPack(2, 4, spatial_scale=0),
     r"^spatial_scale is not valid: expected a positive number, got 0$"),
    (lambda: layers.DeformRoIPool(2, sampling_ratio=-1),
     r"^sampling_ratio is not valid: expected an int >= 0, got -1$"),
    (lambda: layers.DeformConv2dPack(4, 6, 3, deform_groups=3),
     r"^deform_groups is not valid: expected a divisor of in_channels=4, got 3$"),
    (lambda: layers.ModulatedDeformConv2dPack(4, 6, (3, 0)),
     r"^kernel_size is not valid: expected values >= 1, got \(3, 0\)$"),
    (lambda: layers.DeformConv2d(4, 6, 3, groups=4),
     r"^groups is not valid: expected a divisor of in_channels=4 and out_channels=6, got 4$"),
    (lambda: layers.DeformConv2d(0, 6, 3), r"^in_channels is not valid"),
], ids=["psroi-pack-num-classes", "psroi-pack-pooled-size", "psroi-pack-trans-std",
        "psroi-sample-per-part", "roi-pack-channels", "modulated-roi-pack-scale",
        "roi-sampling-ratio", "pack-deform-groups", "modulated-pack-kernel", "groups",
        "in-channels"])
def test_constructors_validate_their_arguments(build, message):
    """A bad argument fails in ``__init__``, by its own name, not later in ``forward``
    with a message about a tensor the user never passed."""
    with pytest.raises(ValueError, match=message):
        build()
