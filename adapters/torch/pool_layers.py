"""The RoI pooling layers: mmcv's ``DeformRoIPool`` family and the R-FCN head of
Deformable ConvNets (MXNet semantics).

Each ``...Pack`` predicts its own offsets with zero-initialised layers, as in the paper
and in mmcv, so it starts as its offset-free counterpart. Constructors validate their
arguments. The layers hold no math: they call :mod:`cudeform.adapters.torch.functional`.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from cudeform._layer_arguments import (
    divisor, input_channels, positive_int, psroi_pool_layer, roi_pool_layer,
)
from cudeform._typing import IntPair
from cudeform.adapters.torch import functional
from cudeform.adapters.torch._checks import require_tensors

__all__ = ["DeformPSRoIPool", "DeformPSRoIPoolPack", "DeformRoIPool", "DeformRoIPoolPack",
           "ModulatedDeformRoIPoolPack"]


def _zero_(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


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

    Raises:
        ValueError: in the constructor, naming an argument that is not valid.
    """

    def __init__(self, output_size: IntPair, spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, gamma: float = 0.1) -> None:
        super().__init__()
        options = roi_pool_layer(output_size, spatial_scale, sampling_ratio, gamma)
        self.output_size, self.spatial_scale = options["output_size"], options["spatial_scale"]
        self.sampling_ratio, self.gamma = options["sampling_ratio"], options["gamma"]

    def forward(self, input: Tensor, rois: Tensor, offset: Optional[Tensor] = None) -> Tensor:
        return functional.deform_roi_pool(
            input, rois, offset, output_size=self.output_size,
            spatial_scale=self.spatial_scale, sampling_ratio=self.sampling_ratio,
            gamma=self.gamma)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}")


def _fc_branch(in_features: int, hidden: int, out_features: int, depth: int) -> list:
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
    RoIAlign. mmcv's state dict keys: ``offset_fc.{0,2,4}.{weight,bias}``.

    Args:
        output_size (int or (int, int)): ``(ph, pw)``.
        output_channels (int): ``C`` of ``input``.
        deform_fc_channels (int): width of the hidden layers.
        spatial_scale, sampling_ratio, gamma: as in :func:`cudeform.deform_roi_pool`.

    ``forward(input, rois)`` returns ``(R, C, ph, pw)``.
    """

    def __init__(self, output_size: IntPair, output_channels: int,
                 deform_fc_channels: int = 1024, spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, gamma: float = 0.1) -> None:
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        self.output_channels = positive_int(output_channels, "output_channels")
        self.deform_fc_channels = positive_int(deform_fc_channels, "deform_fc_channels")
        ph, pw = self.output_size
        self.offset_fc = nn.Sequential(*_fc_branch(
            output_channels * ph * pw, deform_fc_channels, 2 * ph * pw, depth=2))

    def _pool_and_offset(self, input: Tensor, rois: Tensor):
        require_tensors(dict(input=input, rois=rois))
        input_channels(input.shape, self.output_channels, "output_channels")
        pooled = super().forward(input, rois).flatten(1)
        offset = self.offset_fc(pooled).view(rois.shape[0], 2, *self.output_size)
        return pooled, offset

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        _, offset = self._pool_and_offset(input, rois)
        return super().forward(input, rois, offset)


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """:class:`DeformRoIPoolPack` with a learned mask on the bins (mmcv's
    ``ModulatedDeformRoIPoolPack``).

    A second branch ``mask_fc`` (Linear ``C*ph*pw -> deform_fc_channels``, ReLU, Linear
    ``-> ph*pw`` zero-initialised, Sigmoid) gives a mask ``(R, 1, ph, pw)`` that
    multiplies the pooled features. At initialisation the mask is 0.5 and the offsets
    0: the layer is half of RoIAlign. mmcv's state dict keys: those of
    :class:`DeformRoIPoolPack` and ``mask_fc.{0,2}.{weight,bias}``.

    Args and ``forward(input, rois)``: those of :class:`DeformRoIPoolPack`.
    """

    def __init__(self, output_size: IntPair, output_channels: int,
                 deform_fc_channels: int = 1024, spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, gamma: float = 0.1) -> None:
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale,
                         sampling_ratio, gamma)
        ph, pw = self.output_size
        self.mask_fc = nn.Sequential(*_fc_branch(
            output_channels * ph * pw, deform_fc_channels, ph * pw, depth=1), nn.Sigmoid())

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        pooled, offset = self._pool_and_offset(input, rois)
        mask = self.mask_fc(pooled).view(rois.shape[0], 1, *self.output_size)
        return DeformRoIPool.forward(self, input, rois, offset) * mask


class DeformPSRoIPool(nn.Module):
    """Deformable position-sensitive RoI pooling with offsets from the caller (R-FCN,
    MXNet's ``DeformablePSROIPooling``). See :func:`cudeform.deform_psroi_pool`.

    Args: ``output_dim``, ``group_size``, ``pooled_size``, ``part_size`` (None:
    ``pooled_size``), ``sample_per_part``, ``spatial_scale``, ``trans_std``, as there.

    ``forward(input, rois, offset=None)``: ``input (N, output_dim*group_size**2, H, W)``,
    ``rois (R, 5)``, ``offset (R, 2*num_classes, part_size, part_size)`` or ``None``;
    returns ``(R, output_dim, pooled_size, pooled_size)``.

    Raises:
        ValueError: in the constructor, naming an argument that is not valid.
    """

    def __init__(self, output_dim: int, group_size: int, pooled_size: int,
                 part_size: Optional[int] = None, sample_per_part: int = 4,
                 spatial_scale: float = 1.0, trans_std: float = 0.1) -> None:
        super().__init__()
        for name, value in psroi_pool_layer(output_dim, group_size, pooled_size, part_size,
                                            sample_per_part, spatial_scale, trans_std).items():
            setattr(self, name, value)

    def forward(self, input: Tensor, rois: Tensor, offset: Optional[Tensor] = None) -> Tensor:
        return functional.deform_psroi_pool(
            input, rois, offset, output_dim=self.output_dim, group_size=self.group_size,
            pooled_size=self.pooled_size, part_size=self.part_size,
            sample_per_part=self.sample_per_part, spatial_scale=self.spatial_scale,
            trans_std=self.trans_std)

    def extra_repr(self) -> str:
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

    Raises:
        ValueError: in the constructor, naming an argument that is not valid, e.g. a
            ``num_classes`` that does not divide ``output_dim``.
    """

    def __init__(self, in_channels: int, output_dim: int, group_size: int,
                 pooled_size: int, num_classes: int = 1, sample_per_part: int = 4,
                 spatial_scale: float = 1.0, trans_std: float = 0.1) -> None:
        super().__init__()
        in_channels = positive_int(in_channels, "in_channels")
        output_dim = positive_int(output_dim, "output_dim")
        num_classes = divisor(num_classes, "num_classes", output_dim=output_dim)
        k = positive_int(pooled_size, "pooled_size")
        self.in_channels = in_channels
        self.conv_offset = _zero_(nn.Conv2d(in_channels, 2 * num_classes * k * k, 1))
        self.offset_pool = DeformPSRoIPool(2 * num_classes, k, k, None, sample_per_part,
                                           spatial_scale, trans_std)
        self.score_pool = DeformPSRoIPool(output_dim, group_size, k, k, sample_per_part,
                                          spatial_scale, trans_std)

    def forward(self, features: Tensor, score_maps: Tensor, rois: Tensor) -> Tensor:
        require_tensors(dict(features=features, score_maps=score_maps, rois=rois))
        input_channels(features.shape, self.in_channels, "in_channels", name="features")
        offset = self.offset_pool(self.conv_offset(features), rois)
        return self.score_pool(score_maps, rois, offset)
