"""Chainer links over cudeform's functions, in Chainer's conventions (``ksize``,
``stride``, ``pad``, ``dilate``, ``nobias``, ``initialW``, ``initial_bias``).

Import them from :mod:`cudeform.adapters.chainer`. The offset-predicting layers are
zero-initialised, so every ``...Pack`` link starts as its offset-free counterpart,
as in the paper and in mmcv.
"""

from __future__ import annotations

from cudeform.adapters import _chainer_compat  # noqa: F401  (before chainer)

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
from chainer import initializers  # noqa: E402

from typing import Optional, Union  # noqa: E402

from cudeform import _layer_arguments as arguments  # noqa: E402
from cudeform._typing import Array, IntPair  # noqa: E402
from cudeform.adapters import chainer as functions  # noqa: E402
from cudeform.adapters.chainer import Input, check_inputs  # noqa: E402

#: What ``initialW`` and ``initial_bias`` take, as in ``chainer.links.Convolution2D``.
Initializer = Optional[Union[chainer.Initializer, Array, float]]


class DeformConv2d(chainer.Chain):
    """Deformable convolution with its own ``W`` and ``b``; the offset (and mask) come
    from the caller. See :func:`cudeform.adapters.chainer.deform_conv2d`.

    Args:
        in_channels (int): ``C_in``.
        out_channels (int): ``C_out``.
        ksize (int or (int, int)): ``(kh, kw)``.
        stride, pad, dilate (int or (int, int)): as in ``chainer.links.Convolution2D``.
        groups (int): weight groups; ``W`` has shape ``(C_out, C_in/groups, kh, kw)``.
        nobias (bool): no bias.
        initialW, initial_bias: initializers or arrays, as in
            ``chainer.links.Convolution2D`` (default LeCunNormal and 0).

    ``forward(x, offset, mask=None)``: ``x (N, C_in, H, W)``, ``offset
    (N, 2*dg*kh*kw, H_out, W_out)`` in cudeform's interleaved ``(dy, dx)`` layout,
    ``mask (N, dg*kh*kw, H_out, W_out)``; returns ``(N, C_out, H_out, W_out)``.
    """

    def __init__(self, in_channels: int, out_channels: int, ksize: IntPair, stride: IntPair = 1,
                 pad: IntPair = 0, dilate: IntPair = 1, groups: int = 1, nobias: bool = False,
                 initialW: Initializer = None, initial_bias: Initializer = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups = arguments.conv_layer(
            in_channels, out_channels, groups)
        self.ksize, self.stride, self.pad, self.dilate = arguments.conv_geometry(
            ksize, stride, pad, dilate, names=("ksize", "stride", "pad", "dilate"))
        nobias = arguments.flag(nobias, "nobias")
        with self.init_scope():
            self.W = chainer.Parameter(initializers._get_initializer(initialW),
                                       (out_channels, in_channels // groups, *self.ksize))
            self.b = None if nobias else chainer.Parameter(
                initializers._get_initializer(0 if initial_bias is None else initial_bias),
                (out_channels,))

    def forward(self, x: Input, offset: Input, mask: Optional[Input] = None) -> chainer.Variable:
        return functions.deform_conv2d(x, offset, self.W, self.b, self.stride, self.pad,
                                       self.dilate, mask=mask)


class DeformConv2dPack(DeformConv2d):
    """DCNv1 layer that predicts its own offsets (Dai et al. 2017; mmcv's
    ``DeformConv2dPack``).

    ``conv_offset`` is a ``chainer.links.Convolution2D`` from ``in_channels`` to
    ``2*deform_groups*kh*kw`` channels with the same ``ksize``, ``stride``, ``pad``
    and ``dilate``, its weight and bias initialised to zero; its output is the offset
    in cudeform's interleaved ``(dy, dx)`` layout. At initialisation the offsets are
    zero, so the layer is a plain convolution with ``W`` and ``b``.

    Args: those of :class:`DeformConv2d`, and ``deform_groups`` (int): offset groups.

    ``forward(x)`` returns ``(N, out_channels, H_out, W_out)``.
    """

    mask_channels = 0  # per offset group and tap; 1 in the modulated version

    def __init__(self, in_channels: int, out_channels: int, ksize: IntPair, stride: IntPair = 1,
                 pad: IntPair = 0, dilate: IntPair = 1, groups: int = 1, nobias: bool = False,
                 initialW: Initializer = None, initial_bias: Initializer = None,
                 deform_groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, ksize, stride, pad, dilate, groups,
                         nobias, initialW, initial_bias)
        self.deform_groups = arguments.divisor(deform_groups, "deform_groups",
                                               in_channels=self.in_channels)
        taps = self.deform_groups * self.ksize[0] * self.ksize[1]
        with self.init_scope():
            self.conv_offset = L.Convolution2D(
                in_channels, (2 + self.mask_channels) * taps, self.ksize, self.stride,
                self.pad, initialW=0, initial_bias=0, dilate=self.dilate)

    def check_input(self, x: Input) -> None:
        """What the op would check of ``x``, before ``conv_offset`` sees it: a wrong
        input fails as in :class:`DeformConv2d`."""
        check_inputs(dict(x=x, W=self.W))
        arguments.conv_input(x.shape, self.W.shape, self.stride, self.pad, self.dilate)

    def forward(self, x: Input) -> chainer.Variable:
        self.check_input(x)
        return super().forward(x, self.conv_offset(x))


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """DCNv2 layer that predicts its own offsets and mask (Zhu et al. 2019,
    https://arxiv.org/abs/1811.11168; mmcv's ``ModulatedDeformConv2dPack``).

    ``conv_offset`` (zero-initialised, same ``ksize``, ``stride``, ``pad``, ``dilate``)
    gives ``3*deform_groups*kh*kw`` channels: the first ``2*dg*kh*kw`` are the offset
    in cudeform's interleaved ``(dy, dx)`` layout, the last ``dg*kh*kw`` go through a
    sigmoid and are the mask. At initialisation the offsets are 0 and the mask 0.5.

    Args: those of :class:`DeformConv2dPack`. ``forward(x)`` as there.
    """

    mask_channels = 1

    def forward(self, x: Input) -> chainer.Variable:
        self.check_input(x)
        out = self.conv_offset(x)
        taps = self.deform_groups * self.ksize[0] * self.ksize[1]
        offset, mask = F.split_axis(out, [2 * taps], axis=1)
        return DeformConv2d.forward(self, x, offset, F.sigmoid(mask))


class DeformRoIPoolPack(chainer.Chain):
    """Deformable RoI pooling that predicts its own offsets (paper section 2.2; mmcv's
    ``DeformRoIPoolPack``).

    Wiring: ``pooled = deform_roi_pool(x, rois)`` without offsets; ``offset_fc``
    (Linear ``C*ph*pw -> deform_fc_channels``, ReLU, Linear ``-> deform_fc_channels``,
    ReLU, Linear ``-> 2*ph*pw``, the last one zero-initialised) maps it to the
    normalised offsets ``(R, 2, ph, pw)`` (channel 0 dx, 1 dy); the result is
    ``deform_roi_pool(x, rois, offset)``. At initialisation it is RoIAlign.

    Args:
        output_size (int or (int, int)): ``(ph, pw)``.
        spatial_scale, sampling_ratio, gamma: as in :func:`cudeform.deform_roi_pool`.
        in_channels (int): ``C`` of ``x`` (keyword).
        deform_fc_channels (int): width of the hidden layers.

    ``forward(x, rois)``: ``x (N, C, H, W)``, ``rois (R, 5)``; returns ``(R, C, ph, pw)``.
    """

    def __init__(self, output_size: IntPair, spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, gamma: float = 0.1, *, in_channels: int,
                 deform_fc_channels: int = 1024) -> None:
        super().__init__()
        self.options = arguments.roi_pool_layer(output_size, spatial_scale, sampling_ratio,
                                                gamma)
        self.output_size = self.options["output_size"]
        in_channels = self.in_channels = arguments.positive_int(in_channels, "in_channels")
        deform_fc_channels = arguments.positive_int(deform_fc_channels, "deform_fc_channels")
        ph, pw = self.output_size
        with self.init_scope():
            self.offset_fc = chainer.Sequential(
                L.Linear(in_channels * ph * pw, deform_fc_channels), F.relu,
                L.Linear(deform_fc_channels, deform_fc_channels), F.relu,
                L.Linear(deform_fc_channels, 2 * ph * pw, initialW=0, initial_bias=0))

    def forward(self, x: Input, rois: Input) -> chainer.Variable:
        check_inputs(dict(x=x, rois=rois))
        arguments.input_channels(x.shape, self.in_channels, "in_channels", name="x")
        pooled = functions.deform_roi_pool(x, rois, **self.options)
        offset = self.offset_fc(F.reshape(pooled, (len(rois), -1)))
        offset = F.reshape(offset, (len(rois), 2, *self.output_size))
        return functions.deform_roi_pool(x, rois, offset, **self.options)


class DeformPSRoIPoolPack(chainer.Chain):
    """The R-FCN head of Deformable ConvNets: position-sensitive pooling of score maps,
    with offsets predicted from the features (MXNet's ``DeformablePSROIPooling``
    wiring in the original ``resnet_v1_101_rfcn_dcn`` network).

    Wiring: ``conv_offset``, a zero-initialised 1x1 ``chainer.links.Convolution2D``
    from ``in_channels`` to ``2*num_classes*pooled_size**2`` channels, is applied to
    the features; its output is position-sensitively pooled without offsets
    (``output_dim=2*num_classes``, ``group_size=pooled_size``,
    ``pooled_size=pooled_size``) into the offsets ``(R, 2*num_classes, pooled_size,
    pooled_size)``; those drive ``deform_psroi_pool`` of the score maps with
    ``part_size=pooled_size`` and ``trans_std``. At initialisation the offsets are 0.

    Args:
        in_channels (int): channels of the features the offsets are predicted from.
        output_dim (int): output channels (e.g. the number of classes).
        group_size (int): position-sensitive groups per side of the score maps.
        pooled_size (int): bins per side.
        num_classes (int): offset classes; must divide ``output_dim`` (1: shared).
        sample_per_part, spatial_scale, trans_std: as in
            :func:`cudeform.deform_psroi_pool`.

    ``forward(features, score_maps, rois)``: ``features (N, in_channels, H, W)``,
    ``score_maps (N, output_dim*group_size**2, H, W)``, ``rois (R, 5)``; returns
    ``(R, output_dim, pooled_size, pooled_size)``.
    """

    def __init__(self, in_channels: int, output_dim: int, group_size: int, pooled_size: int,
                 num_classes: int = 1, sample_per_part: int = 4, spatial_scale: float = 1.0,
                 trans_std: float = 0.1) -> None:
        super().__init__()
        options = arguments.psroi_pool_layer(output_dim, group_size, pooled_size, None,
                                             sample_per_part, spatial_scale, trans_std,
                                             num_classes)
        self.output_dim, self.group_size = options["output_dim"], options["group_size"]
        self.pooled_size, self.num_classes = options["pooled_size"], num_classes
        self.sample_per_part = options["sample_per_part"]
        self.spatial_scale, self.trans_std = options["spatial_scale"], options["trans_std"]
        in_channels = self.in_channels = arguments.positive_int(in_channels, "in_channels")
        with self.init_scope():
            self.conv_offset = L.Convolution2D(
                in_channels, 2 * num_classes * self.pooled_size**2, 1, initialW=0,
                initial_bias=0)

    def forward(self, features: Input, score_maps: Input, rois: Input) -> chainer.Variable:
        check_inputs(dict(features=features, score_maps=score_maps, rois=rois))
        arguments.input_channels(features.shape, self.in_channels, "in_channels",
                                 name="features")
        k = self.pooled_size
        common = dict(pooled_size=k, sample_per_part=self.sample_per_part,
                      spatial_scale=self.spatial_scale)
        offset = functions.deform_psroi_pool(
            self.conv_offset(features), rois, output_dim=2 * self.num_classes,
            group_size=k, **common)
        return functions.deform_psroi_pool(
            score_maps, rois, offset, output_dim=self.output_dim,
            group_size=self.group_size, part_size=k, trans_std=self.trans_std, **common)
