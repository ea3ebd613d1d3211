"""torchvision's ``DeformConv2d`` layer, and the parameters every convolution layer shares.

:class:`DeformConv2d` takes torchvision's constructor, parameter names, shapes and
initialisation, so a state dict of ``torchvision.ops.DeformConv2d`` loads unchanged.
mmcv's layers, one of which is also called ``DeformConv2d``, are in
:mod:`cudeform.adapters.torch.mmcv`. The layers hold no math: they call
:func:`cudeform.adapters.torch.functional.deform_conv2d`.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from cudeform import _layer_arguments as arguments
from cudeform.adapters.torch import functional
from cudeform.adapters.torch._checks import check_tensors, require_tensors
from cudeform.adapters.torch.functional import IntPair

__all__ = ["DeformConv2d", "DeformConvLayer"]


class DeformConvLayer(nn.Module):
    """What the deformable convolution layers share: a validated geometry, ``weight``
    ``(out_channels, in_channels/groups, kh, kw)`` and an optional ``bias``
    ``(out_channels,)``, both uninitialised (each subclass initialises them as the
    library it follows does).

    Args:
        in_channels, out_channels (int): ``C_in``, ``C_out``.
        kernel_size (int or (int, int)): ``(kh, kw)``.
        stride, padding, dilation (int or (int, int)): as in ``nn.Conv2d``.
        groups (int): weight groups; must divide both channel counts.
        bias (bool): learn a bias.
        deform_groups (int, optional): offset groups, which must divide ``in_channels``;
            when given, ``forward`` checks the offset against it. None: inferred from
            the offset, as torchvision does.

    Raises:
        TypeError: an argument of the wrong kind (e.g. a string or a float for an int,
            anything but a bool for ``bias``), naming it.
        ValueError: naming the argument that is not valid.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair, padding: IntPair, dilation: IntPair, groups: int,
                 bias: bool, deform_groups: Optional[int] = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups = arguments.conv_layer(
            in_channels, out_channels, groups)
        geometry = arguments.conv_geometry(kernel_size, stride, padding, dilation)
        self.kernel_size: Tuple[int, int] = geometry[0]
        self.stride, self.padding, self.dilation = geometry[1:]
        self.deform_groups = None if deform_groups is None else arguments.divisor(
            deform_groups, "deform_groups", in_channels=self.in_channels)
        self.weight = nn.Parameter(torch.empty(self.out_channels,
                                               self.in_channels // self.groups,
                                               *self.kernel_size))
        if arguments.flag(bias, "bias"):
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)

    @property
    def taps(self) -> int:
        """Kernel taps ``kh*kw``."""
        return self.kernel_size[0] * self.kernel_size[1]

    def check_input(self, input: Tensor) -> None:
        """What the op would check of ``input``, for a layer that computes its offsets
        from it first: a wrong input fails as in a layer without an offset branch."""
        require_tensors(dict(input=input))
        check_tensors(dict(input=input, weight=self.weight))
        arguments.conv_input(input.shape, self.weight.shape, self.stride, self.padding,
                             self.dilation)

    def deform(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """The deformable convolution of ``input`` with this layer's parameters."""
        if self.deform_groups is not None and isinstance(offset, Tensor):
            arguments.offset_channels(offset.shape, self.deform_groups, self.taps)
        return functional.deform_conv2d(input, offset, self.weight, self.bias, self.stride,
                                        self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        groups = "" if self.deform_groups is None else f", deform_groups={self.deform_groups}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}{groups}, bias={self.bias is not None}")


class DeformConv2d(DeformConvLayer):
    """Deformable convolution whose offset (and mask) come from the caller; a drop-in
    replacement for ``torchvision.ops.DeformConv2d``: same constructor, parameter
    names, shapes and initialisation.

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

    Raises:
        ValueError: in the constructor, naming an argument that is not valid.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation (that of ``nn.Conv2d``)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self.deform(input, offset, mask)
