"""PyTorch layers over cudeform's functional ops, with torchvision's and mmcv's names,
constructors and initialisation.

``DeformConv2d`` takes torchvision's constructor and parameters, so a state dict of
``torchvision.ops.DeformConv2d`` loads unchanged. The ``...Pack`` layers predict their
own offsets with zero-initialised layers, as in the paper and in mmcv, so each starts
as its offset-free counterpart. The layers hold no math: they call
:mod:`cudeform.adapters.torch`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cudeform._shapes import pair
from cudeform.adapters import torch as _ops

__all__ = [
    "DeformConv2d",
    "DeformConv2dPack",
    "DeformPSRoIPool",
    "DeformPSRoIPoolPack",
    "DeformRoIPool",
    "DeformRoIPoolPack",
    "ModulatedDeformConv2dPack",
    "ModulatedDeformRoIPoolPack",
]


def _zero_(layer):
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DeformConv2d(nn.Module):
    """Deformable convolution with its own ``weight`` and ``bias``; the offset (and mask)
    come from the caller. A drop-in replacement for ``torchvision.ops.DeformConv2d``:
    same constructor, parameter names, shapes and initialisation.

    Args:
        in_channels (int): ``C_in``.
        out_channels (int): ``C_out``.
        kernel_size (int or (int, int)): ``(kh, kw)``.
        stride, padding, dilation (int or (int, int)): as in ``nn.Conv2d``.
        groups (int): weight groups; ``weight`` has shape ``(C_out, C_in/groups, kh, kw)``.
        bias (bool): learn a bias ``(C_out,)``.

    ``forward(input, offset, mask=None)``: ``input (N, C_in, H, W)``, ``offset
    (N, 2*dg*kh*kw, H_out, W_out)`` in the interleaved ``(dy, dx)`` layout of
    torchvision and mmcv, ``mask (N, dg*kh*kw, H_out, W_out)`` (DCNv2); returns
    ``(N, C_out, H_out, W_out)``. ``dg`` is inferred from ``offset``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True):
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups is not valid: expected a positive divisor of "
                             f"in_channels={in_channels} and out_channels={out_channels}, "
                             f"got {groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        self.dilation = pair(dilation, "dilation", minimum=1)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """torchvision's initialisation (that of ``nn.Conv2d``)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input, offset, mask=None):
        return _ops.deform_conv2d(input, offset, self.weight, self.bias, stride=self.stride,
                                  padding=self.padding, dilation=self.dilation, mask=mask)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")


class DeformConv2dPack(DeformConv2d):
    """DCNv1 layer that predicts its own offsets (Dai et al. 2017,
    https://arxiv.org/abs/1703.06211; mmcv's ``DeformConv2dPack``).

    ``conv_offset`` is an ``nn.Conv2d`` from ``in_channels`` to
    ``2*deform_groups*kh*kw`` channels with the same kernel size, stride, padding and
    dilation, its weight and bias zero; its output is the offset in the interleaved
    ``(dy, dx)`` layout. At initialisation the layer is a plain convolution.

    Args: those of :class:`DeformConv2d`, and ``deform_groups`` (int): offset groups.

    ``forward(input)`` returns ``(N, out_channels, H_out, W_out)``.
    """

    mask_channels = 0  # per offset group and tap; 1 in the modulated version

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, deform_groups=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias)
        if deform_groups < 1 or in_channels % deform_groups:
            raise ValueError(f"deform_groups is not valid: expected a positive divisor of "
                             f"in_channels={in_channels}, got {deform_groups}")
        self.deform_groups = deform_groups
        taps = deform_groups * self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = _zero_(nn.Conv2d(
            in_channels, (2 + self.mask_channels) * taps, self.kernel_size, self.stride,
            self.padding, self.dilation, bias=True))

    def forward(self, input):
        return super().forward(input, self.conv_offset(input))


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """DCNv2 layer that predicts its own offsets and mask (Zhu et al. 2019,
    https://arxiv.org/abs/1811.11168; mmcv's ``ModulatedDeformConv2dPack``).

    ``conv_offset`` (zero-initialised, same kernel size, stride, padding, dilation)
    gives ``3*deform_groups*kh*kw`` channels: the first ``2*dg*kh*kw`` are the offset
    in the interleaved ``(dy, dx)`` layout, the sigmoid of the last ``dg*kh*kw`` is the
    mask. At initialisation the offsets are 0 and the mask 0.5: the layer is half a
    plain convolution (bias included).

    Args: those of :class:`DeformConv2dPack`. ``forward(input)`` as there.
    """

    mask_channels = 1

    def forward(self, input):
        out = self.conv_offset(input)
        taps = self.deform_groups * self.kernel_size[0] * self.kernel_size[1]
        offset, mask = out.split([2 * taps, taps], dim=1)
        return DeformConv2d.forward(self, input, offset, torch.sigmoid(mask))


class DeformRoIPool(nn.Module):
    """Deformable RoI pooling with offsets from the caller (paper section 2.2; mmcv's
    ``DeformRoIPool``). See :func:`cudeform.deform_roi_pool`.

    Args:
        output_size (int or (int, int)): ``(ph, pw)``.
        spatial_scale, sampling_ratio, gamma: as in :func:`cudeform.deform_roi_pool`.

    ``forward(input, rois, offset=None)``: ``input (N, C, H, W)``, ``rois (R, 5)`` rows
    ``(batch_index, x1, y1, x2, y2)``, ``offset (R, 2, ph, pw)`` normalised (channel 0
    dx, 1 dy); returns ``(R, C, ph, pw)``. Without offset it is RoIAlign
    (``aligned=True``, average).
    """

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        super().__init__()
        self.output_size = pair(output_size, "output_size", minimum=1)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.gamma = float(gamma)

    def forward(self, input, rois, offset=None):
        return _ops.deform_roi_pool(input, rois, offset, output_size=self.output_size,
                                    spatial_scale=self.spatial_scale,
                                    sampling_ratio=self.sampling_ratio, gamma=self.gamma)

    def extra_repr(self):
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}")


def _fc_branch(in_features, hidden, out_features, depth):
    """Linear/ReLU stack of ``depth`` hidden layers and a zero-initialised last Linear."""
    layers, width = [], in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    return layers + [_zero_(nn.Linear(width, out_features))]


class DeformRoIPoolPack(DeformRoIPool):
    """Deformable RoI pooling that predicts its own offsets (mmcv's ``DeformRoIPoolPack``).

    Wiring: the RoIs are pooled without offsets; ``offset_fc`` (Linear
    ``C*ph*pw -> deform_fc_channels``, ReLU, Linear ``-> deform_fc_channels``, ReLU,
    Linear ``-> 2*ph*pw``, the last one zero-initialised) maps that to the normalised
    offsets ``(R, 2, ph, pw)``, which drive a second pooling. At initialisation it is
    RoIAlign.

    Args:
        output_size (int or (int, int)): ``(ph, pw)``.
        output_channels (int): ``C`` of ``input``.
        deform_fc_channels (int): width of the hidden layers.
        spatial_scale, sampling_ratio, gamma: as in :func:`cudeform.deform_roi_pool`.

    ``forward(input, rois)`` returns ``(R, C, ph, pw)``.
    """

    def __init__(self, output_size, output_channels, deform_fc_channels=1024,
                 spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        self.output_channels = output_channels
        self.deform_fc_channels = deform_fc_channels
        ph, pw = self.output_size
        self.offset_fc = nn.Sequential(*_fc_branch(
            output_channels * ph * pw, deform_fc_channels, 2 * ph * pw, depth=2))

    def _check_channels(self, input):
        if input.shape[1] != self.output_channels:
            raise ValueError(f"input.shape[1] is not valid: expected output_channels="
                             f"{self.output_channels}, got {input.shape[1]}")

    def _pool_and_offset(self, input, rois):
        self._check_channels(input)
        pooled = super().forward(input, rois).flatten(1)
        offset = self.offset_fc(pooled).view(len(rois), 2, *self.output_size)
        return pooled, offset

    def forward(self, input, rois):
        _, offset = self._pool_and_offset(input, rois)
        return super().forward(input, rois, offset)


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """:class:`DeformRoIPoolPack` with a learned mask on the bins (mmcv's
    ``ModulatedDeformRoIPoolPack``).

    A second branch ``mask_fc`` (Linear ``C*ph*pw -> deform_fc_channels``, ReLU, Linear
    ``-> ph*pw`` zero-initialised, Sigmoid) gives a mask ``(R, 1, ph, pw)`` that
    multiplies the pooled features. At initialisation the mask is 0.5 and the offsets
    0: the layer is half of RoIAlign.

    Args and ``forward(input, rois)``: those of :class:`DeformRoIPoolPack`.
    """

    def __init__(self, output_size, output_channels, deform_fc_channels=1024,
                 spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale,
                         sampling_ratio, gamma)
        ph, pw = self.output_size
        self.mask_fc = nn.Sequential(*_fc_branch(
            output_channels * ph * pw, deform_fc_channels, ph * pw, depth=1), nn.Sigmoid())

    def forward(self, input, rois):
        pooled, offset = self._pool_and_offset(input, rois)
        mask = self.mask_fc(pooled).view(len(rois), 1, *self.output_size)
        return DeformRoIPool.forward(self, input, rois, offset) * mask


class DeformPSRoIPool(nn.Module):
    """Deformable position-sensitive RoI pooling with offsets from the caller (R-FCN,
    MXNet's ``DeformablePSROIPooling``). See :func:`cudeform.deform_psroi_pool`.

    Args: ``output_dim``, ``group_size``, ``pooled_size``, ``part_size``,
    ``sample_per_part``, ``spatial_scale``, ``trans_std``, as there.

    ``forward(input, rois, offset=None)``: ``input (N, output_dim*group_size**2, H, W)``,
    ``rois (R, 5)``, ``offset (R, 2*num_classes, part_size, part_size)`` or ``None``;
    returns ``(R, output_dim, pooled_size, pooled_size)``.
    """

    def __init__(self, output_dim, group_size, pooled_size, part_size=None,
                 sample_per_part=4, spatial_scale=1.0, trans_std=0.1):
        super().__init__()
        self.output_dim, self.group_size, self.pooled_size = output_dim, group_size, pooled_size
        self.part_size = part_size
        self.sample_per_part = sample_per_part
        self.spatial_scale, self.trans_std = float(spatial_scale), float(trans_std)

    def forward(self, input, rois, offset=None):
        return _ops.deform_psroi_pool(
            input, rois, offset, output_dim=self.output_dim, group_size=self.group_size,
            pooled_size=self.pooled_size, part_size=self.part_size,
            sample_per_part=self.sample_per_part, spatial_scale=self.spatial_scale,
            trans_std=self.trans_std)

    def extra_repr(self):
        return (f"output_dim={self.output_dim}, group_size={self.group_size}, "
                f"pooled_size={self.pooled_size}, part_size={self.part_size}, "
                f"sample_per_part={self.sample_per_part}, "
                f"spatial_scale={self.spatial_scale}, trans_std={self.trans_std}")


class DeformPSRoIPoolPack(nn.Module):
    """The R-FCN head of Deformable ConvNets, as
    :class:`cudeform.adapters.chainer.DeformPSRoIPoolPack` (MXNet's
    ``resnet_v1_101_rfcn_dcn`` wiring).

    ``conv_offset``, a zero-initialised 1x1 ``nn.Conv2d`` from ``in_channels`` to
    ``2*num_classes*pooled_size**2`` channels, is applied to the features; its output is
    position-sensitively pooled without offsets (``output_dim=2*num_classes``,
    ``group_size=pooled_size``) into the offsets ``(R, 2*num_classes, pooled_size,
    pooled_size)``; those drive the pooling of the score maps with
    ``part_size=pooled_size`` and ``trans_std``. At initialisation the offsets are 0.

    Args:
        in_channels (int): channels of the features the offsets are predicted from.
        output_dim (int): output channels (e.g. the number of classes).
        group_size (int): position-sensitive groups per side of the score maps.
        pooled_size (int): bins per side.
        num_classes (int): offset classes; must divide ``output_dim`` (1: shared).
        sample_per_part, spatial_scale, trans_std: as in :func:`cudeform.deform_psroi_pool`.

    ``forward(features, score_maps, rois)``: ``features (N, in_channels, H, W)``,
    ``score_maps (N, output_dim*group_size**2, H, W)``, ``rois (R, 5)``; returns
    ``(R, output_dim, pooled_size, pooled_size)``.
    """

    def __init__(self, in_channels, output_dim, group_size, pooled_size, num_classes=1,
                 sample_per_part=4, spatial_scale=1.0, trans_std=0.1):
        super().__init__()
        k = pooled_size
        self.conv_offset = _zero_(nn.Conv2d(in_channels, 2 * num_classes * k * k, 1))
        self.offset_pool = DeformPSRoIPool(2 * num_classes, k, k, None, sample_per_part,
                                           spatial_scale, trans_std)
        self.score_pool = DeformPSRoIPool(output_dim, group_size, k, k, sample_per_part,
                                          spatial_scale, trans_std)

    def forward(self, features, score_maps, rois):
        offset = self.offset_pool(self.conv_offset(features), rois)
        return self.score_pool(score_maps, rois, offset)
