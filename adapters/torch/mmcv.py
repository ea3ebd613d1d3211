"""mmcv's deformable ops and layers, by mmcv's names, signatures, defaults, parameter names
and initialisation (``mmcv.ops``), so that mmcv code and checkpoints switch by an import::

    # from mmcv.ops import DeformConv2dPack, ModulatedDeformConv2dPack
    from cudeform.adapters.torch.mmcv import DeformConv2dPack, ModulatedDeformConv2dPack

Functionals, with mmcv's positional order: :func:`deform_conv2d`,
:func:`modulated_deform_conv2d`, :func:`deform_roi_pool`. Layers:
:class:`DeformConv2d` (mmcv's, not torchvision's: no mask, ``deform_groups``, no bias
by default), :class:`DeformConv2dPack`, :class:`ModulatedDeformConv2d`,
:class:`ModulatedDeformConv2dPack`, and the RoI pooling layers of
:mod:`cudeform.adapters.torch.pool_layers`, which already follow mmcv.

``im2col_step`` is accepted and has no effect: cudeform splits the batch under its
workspace limit, so any batch size works. ``groups`` and ``deform_groups``, which
cudeform infers from the shapes, are checked against them. cudeform allows
``bias=True`` where mmcv's ``DeformConv2d`` rejects it; that bias starts at zero.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from cudeform.adapters.torch import functional
from cudeform._layer_arguments import positive_int
from cudeform._shapes import check_declared_groups
from cudeform.adapters.torch._checks import require_tensors
from cudeform.adapters.torch.functional import IntPair
from cudeform.adapters.torch.layers import DeformConvLayer
from cudeform.adapters.torch.pool_layers import (
    DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack,
)

__all__ = [
    "DeformConv2d", "DeformConv2dPack", "DeformRoIPool", "DeformRoIPoolPack",
    "ModulatedDeformConv2d", "ModulatedDeformConv2dPack", "ModulatedDeformRoIPoolPack",
    "deform_conv2d", "deform_roi_pool", "modulated_deform_conv2d",
]


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, stride: IntPair = 1,
                  padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                  deform_groups: int = 1, bias: bool = False,
                  im2col_step: int = 32) -> Tensor:
    """mmcv's ``deform_conv2d`` (DCNv1): the positional order of
    ``mmcv.ops.deform_conv2d``.

    Args:
        input (Tensor[N, C_in, H, W]), offset (Tensor[N, 2*deform_groups*kh*kw, H_out,
            W_out]), weight (Tensor[C_out, C_in/groups, kh, kw]): as in
            :func:`cudeform.adapters.torch.deform_conv2d`.
        stride, padding, dilation (int or (int, int)).
        groups, deform_groups (int): must match the shapes.
        bias (bool): must be False, as in mmcv.
        im2col_step (int): accepted, no effect.

    Returns:
        Tensor[N, C_out, H_out, W_out].

    Example:
        >>> import torch
        >>> from cudeform.adapters.torch import mmcv
        >>> x, weight = torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3)
        >>> mmcv.deform_conv2d(x, torch.zeros(1, 18, 2, 2), weight, 1, 0, 1, 1, 1)[0, 0]
        tensor([[9., 9.],
                [9., 9.]])
    """
    if bias is not False:  # a tensor is a TypeError, True a ValueError
        error = ValueError if isinstance(bias, bool) else TypeError
        given = "None" if bias is None else f"{type(bias).__name__} {bias!r}"
        raise error(f"bias is not valid: mmcv's deform_conv2d takes bias=False only; use "
                    f"modulated_deform_conv2d for a bias tensor, got {given}")
    positive_int(im2col_step, "im2col_step")
    require_tensors(dict(input=input, offset=offset, weight=weight))
    check_declared_groups(input.shape, offset.shape, weight.shape, groups=groups,
                          deform_groups=deform_groups)
    return functional.deform_conv2d(input, offset, weight, None, stride, padding, dilation)


def modulated_deform_conv2d(input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor,
                            bias: Optional[Tensor] = None, stride: IntPair = 1,
                            padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                            deform_groups: int = 1) -> Tensor:
    """mmcv's ``modulated_deform_conv2d`` (DCNv2): the positional order of
    ``mmcv.ops.modulated_deform_conv2d``.

    Args:
        input (Tensor[N, C_in, H, W]), offset (Tensor[N, 2*deform_groups*kh*kw, H_out,
            W_out]), mask (Tensor[N, deform_groups*kh*kw, H_out, W_out]), weight
            (Tensor[C_out, C_in/groups, kh, kw]), bias (Tensor[C_out], optional).
        stride, padding, dilation (int or (int, int)).
        groups, deform_groups (int): must match the shapes.

    Returns:
        Tensor[N, C_out, H_out, W_out].

    Example:
        >>> import torch
        >>> from cudeform.adapters.torch import mmcv
        >>> x, weight, bias = torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3), torch.ones(1)
        >>> mask = torch.full((1, 9, 2, 2), 0.5)  # every tap at half weight
        >>> mmcv.modulated_deform_conv2d(x, torch.zeros(1, 18, 2, 2), mask, weight, bias)[0, 0]
        tensor([[5.5000, 5.5000],
                [5.5000, 5.5000]])
    """
    require_tensors(dict(input=input, offset=offset, mask=mask, weight=weight, bias=bias),
                    optional=("bias",))
    check_declared_groups(input.shape, offset.shape, weight.shape, groups=groups,
                          deform_groups=deform_groups)
    return functional.deform_conv2d(input, offset, weight, bias, stride, padding, dilation,
                                    mask)


def deform_roi_pool(input: Tensor, rois: Tensor, offset: Optional[Tensor],
                    output_size: IntPair, spatial_scale: float = 1.0,
                    sampling_ratio: int = 0, gamma: float = 0.1) -> Tensor:
    """mmcv's ``deform_roi_pool``, positional; see
    :func:`cudeform.adapters.torch.deform_roi_pool`. Returns Tensor[R, C, ph, pw].

    Example:
        >>> import torch
        >>> from cudeform.adapters.torch import mmcv
        >>> x = torch.arange(8.0).repeat(1, 1, 8, 1)  # x[..., i, j] = j
        >>> mmcv.deform_roi_pool(x, torch.tensor([[0.0, 0, 0, 4, 4]]), None, 2)[0, 0]
        tensor([[0.5000, 2.5000],
                [0.5000, 2.5000]])
    """
    return functional.deform_roi_pool(input, rois, offset, output_size=output_size,
                                      spatial_scale=spatial_scale,
                                      sampling_ratio=sampling_ratio, gamma=gamma)


class DeformConv2d(DeformConvLayer):
    """mmcv's ``DeformConv2d`` (DCNv1, offsets from the caller). Not torchvision's
    layer of the same name (:class:`cudeform.adapters.torch.DeformConv2d`): no mask,
    an explicit ``deform_groups``, and no bias by default.

    Args:
        in_channels, out_channels (int), kernel_size (int or (int, int)).
        stride, padding, dilation (int or (int, int)), groups (int): as in ``nn.Conv2d``.
        deform_groups (int): offset groups; must divide ``in_channels``.
        bias (bool): learn a bias (zero-initialised); mmcv rejects True.
        im2col_step (int): accepted, no effect.

    Parameters: ``weight (out_channels, in_channels/groups, kh, kw)``, initialised as
    mmcv does, ``kaiming_uniform_(nonlinearity="relu")``, i.e. U(-b, b) with
    ``b = sqrt(6 / fan_in)``.

    ``forward(x, offset)``: ``x (N, in_channels, H, W)``, ``offset
    (N, 2*deform_groups*kh*kw, H_out, W_out)``; returns ``(N, out_channels, H_out, W_out)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = False,
                 im2col_step: int = 32) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, positive_int(deform_groups, "deform_groups"))
        self.im2col_step = positive_int(im2col_step, "im2col_step")
        self.transposed = False  # nn.Conv2d's attributes, as mmcv sets them
        self.output_padding = (0,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        return self.deform(x, offset)


class DeformConv2dPack(DeformConv2d):
    """mmcv's ``DeformConv2dPack``: DCNv1 that predicts its own offsets (Dai et al. 2017,
    https://arxiv.org/abs/1703.06211).

    ``conv_offset`` is an ``nn.Conv2d`` from ``in_channels`` to
    ``2*deform_groups*kh*kw`` channels with the layer's kernel size, stride, padding
    and dilation, its weight and bias zero; its output is the offset in the interleaved
    ``(dy, dx)`` layout. At initialisation the layer is a plain convolution.

    Args: those of :class:`DeformConv2d` (mmcv's). ``forward(x)`` returns
    ``(N, out_channels, H_out, W_out)``. An mmcv state dict (``weight``,
    ``conv_offset.weight``, ``conv_offset.bias``) loads with ``strict=True``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = False,
                 im2col_step: int = 32) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deform_groups, bias, im2col_step)
        self.conv_offset = nn.Conv2d(self.in_channels, 2 * self.deform_groups * self.taps,
                                     self.kernel_size, self.stride, self.padding,
                                     self.dilation, bias=True)
        self.init_offset()

    def init_offset(self) -> None:
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.deform(x, self.conv_offset(x))


class ModulatedDeformConv2d(DeformConvLayer):
    """mmcv's ``ModulatedDeformConv2d``: DCNv2 with offset and mask from the caller (Zhu
    et al. 2019, https://arxiv.org/abs/1811.11168).

    Args:
        in_channels, out_channels (int), kernel_size (int or (int, int)).
        stride, padding, dilation (int or (int, int)), groups (int): as in ``nn.Conv2d``.
        deform_groups (int): offset groups; must divide ``in_channels``.
        bias (bool): learn a bias.

    Parameters, initialised as mmcv does: ``weight (out_channels, in_channels/groups,
    kh, kw)`` from U(-s, s) with ``s = 1/sqrt(in_channels*kh*kw)`` (all input channels,
    whatever ``groups``), ``bias (out_channels,)`` zero.

    ``forward(x, offset, mask)``: ``x (N, in_channels, H, W)``, ``offset
    (N, 2*deform_groups*kh*kw, H_out, W_out)``, ``mask (N, deform_groups*kh*kw, H_out,
    W_out)``; returns ``(N, out_channels, H_out, W_out)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, positive_int(deform_groups, "deform_groups"))
        self.transposed = False
        self.output_padding = (0,)
        self.init_weights()

    def init_weights(self) -> None:
        bound = 1.0 / math.sqrt(self.in_channels * self.taps)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return self.deform(x, offset, mask)


class ModulatedDeformConv2dPack(ModulatedDeformConv2d):
    """mmcv's ``ModulatedDeformConv2dPack``: DCNv2 that predicts its own offsets and mask.

    ``conv_offset`` (zero-initialised, the layer's kernel size, stride, padding and
    dilation) gives ``3*deform_groups*kh*kw`` channels: the first ``2*dg*kh*kw`` are the
    offset in the interleaved ``(dy, dx)`` layout, the sigmoid of the last ``dg*kh*kw``
    the mask (mmcv's ``chunk(3)`` and ``cat`` of the first two). The bias starts at 0,
    so at initialisation the layer is half a plain convolution without bias.

    Args: those of :class:`ModulatedDeformConv2d`. ``forward(x)`` returns
    ``(N, out_channels, H_out, W_out)``. An mmcv state dict (``weight``, ``bias``,
    ``conv_offset.weight``, ``conv_offset.bias``) loads with ``strict=True``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deform_groups, bias)
        self.conv_offset = nn.Conv2d(self.in_channels, 3 * self.deform_groups * self.taps,
                                     self.kernel_size, self.stride, self.padding,
                                     self.dilation, bias=True)
        self.init_weights()

    def init_weights(self) -> None:
        super().init_weights()
        if hasattr(self, "conv_offset"):  # not yet there when the parent calls this
            nn.init.zeros_(self.conv_offset.weight)
            nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        taps = self.deform_groups * self.taps
        offset, mask = self.conv_offset(x).split([2 * taps, taps], dim=1)
        return self.deform(x, offset, torch.sigmoid(mask))
