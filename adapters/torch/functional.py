"""The functional ops on tensors: torchvision's ``deform_conv2d`` signature, and the two
RoI poolings with the core's keyword arguments.

Each checks that its tensor arguments are tensors, turns its options into the
schema's types and calls ``torch.ops.cudeform.<op>``; inside ``torch.onnx.export``
``deform_conv2d`` records ONNX ``DeformConv`` instead (``_onnx.py``). mmcv's
positional signatures are in :mod:`cudeform.adapters.torch.mmcv`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from cudeform import _options
from cudeform._typing import IntPair
from cudeform.adapters.torch import _onnx
from cudeform.adapters.torch._checks import require_tensors

__all__ = ["IntPair", "deform_conv2d", "deform_psroi_pool", "deform_roi_pool"]


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor,
                  bias: Optional[Tensor] = None, stride: IntPair = 1, padding: IntPair = 0,
                  dilation: IntPair = 1, mask: Optional[Tensor] = None) -> Tensor:
    r"""Deformable 2-D convolution (DCNv1; DCNv2 when ``mask`` is given), with
    torchvision's arguments, positional order and offset layout
    (``torchvision.ops.deform_conv2d``).

    .. math::
        y(p) = \sum_k w_k \cdot m_k(p) \cdot x(p + p_k + \Delta p_k(p)) + b

    (Dai et al., https://arxiv.org/abs/1703.06211; Zhu et al.,
    https://arxiv.org/abs/1811.11168). Calls ``torch.ops.cudeform.deform_conv2d``.

    Args:
        input (Tensor[N, C_in, H, W]): input feature map.
        offset (Tensor[N, 2*dg*kh*kw, H_out, W_out]): channel ``g*2*kh*kw + 2*k`` is dy
            of tap ``k = i*kw + j`` of offset group ``g``, the next one dx.
        weight (Tensor[C_out, C_in/groups, kh, kw]): filters; groups are inferred.
        bias (Tensor[C_out], optional): bias.
        stride, padding, dilation (int or (int, int)).
        mask (Tensor[N, dg*kh*kw, H_out, W_out], optional): DCNv2 modulation.

    Returns:
        Tensor[N, C_out, H_out, W_out], C-contiguous, of the inputs' dtype. Gradients
        flow to input, offset, weight, bias and mask (first order only). On CUDA the
        input gradient uses float atomics, unless
        ``torch.use_deterministic_algorithms(True)`` or
        :func:`cudeform.set_deterministic` asks for bit-identical gradients. A sample exactly on the ``-1`` border gets a 0
        coordinate gradient (mmcv's rule; torchvision differentiates from above there).

    Raises:
        TypeError: a tensor argument that is not a tensor, mixed devices, mixed dtypes,
            an unsupported dtype, or an option of the wrong kind (a string, None, a
            bool or a float where an int is expected).
        ValueError: a shape or value that breaks the contract (the core's message).

    Example:
        >>> import torch
        >>> from cudeform.adapters.torch import deform_conv2d
        >>> x = torch.ones(1, 1, 4, 4)
        >>> weight = torch.ones(1, 1, 3, 3)
        >>> offset = torch.zeros(1, 18, 2, 2, requires_grad=True)
        >>> y = deform_conv2d(x, offset, weight)
        >>> y.detach()[0, 0]
        tensor([[9., 9.],
                [9., 9.]])
        >>> y.sum().backward()
        >>> offset.grad.shape
        torch.Size([1, 18, 2, 2])
    """
    require_tensors(dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask),
                    optional=("bias", "mask"))
    stride, padding, dilation = (list(pair) for pair in
                                 _options.conv_options(stride, padding, dilation).values())
    if _onnx.exporting_to_onnx():
        return _onnx.deform_conv2d_node(input, offset, weight, bias, stride, padding,
                                        dilation, mask)
    return torch.ops.cudeform.deform_conv2d(input, offset, weight, bias, stride, padding,
                                            dilation, mask)


def deform_roi_pool(input: Tensor, rois: Tensor, offset: Optional[Tensor] = None, *,
                    output_size: IntPair, spatial_scale: float = 1.0,
                    sampling_ratio: int = 0, gamma: float = 0.1) -> Tensor:
    """Deformable RoI pooling (RoIAlign average pooling with a learned shift per bin,
    mmcv semantics); calls ``torch.ops.cudeform.deform_roi_pool``.

    Args:
        input (Tensor[N, C, H, W]): feature map.
        rois (Tensor[R, 5]): rows ``(batch_index, x1, y1, x2, y2)`` in image
            coordinates, of ``input``'s dtype. It gets no gradient.
        offset (Tensor[R, 2, ph, pw], optional): normalised bin offsets, channel 0 dx,
            channel 1 dy.
        output_size (int or (int, int)), spatial_scale, sampling_ratio, gamma: as in
            :func:`cudeform.deform_roi_pool`.

    Returns:
        Tensor[R, C, ph, pw], C-contiguous. Gradients flow to input and offset (first
        order only).

    Raises:
        TypeError: a tensor argument that is not a tensor, mixed devices, mixed dtypes,
            an unsupported dtype, or an option of the wrong kind (e.g. a string).
        ValueError: a shape or option value that breaks the contract.
        RuntimeError: inside ``torch.onnx.export``, which has no such operator.

    Example:
        >>> import torch
        >>> from cudeform.adapters.torch import deform_roi_pool
        >>> x = torch.arange(8.0).repeat(1, 1, 8, 1)  # x[..., i, j] = j
        >>> rois = torch.tensor([[0.0, 0, 0, 4, 4]])
        >>> deform_roi_pool(x, rois, output_size=2)[0, 0]  # RoIAlign: mean column
        tensor([[0.5000, 2.5000],
                [0.5000, 2.5000]])
    """
    require_tensors(dict(input=input, rois=rois, offset=offset), optional=("offset",))
    _onnx.refuse_export("deform_roi_pool", "deformable RoI pooling")
    options = _options.roi_pool_options(output_size, spatial_scale, sampling_ratio, gamma)
    options["output_size"] = list(options["output_size"])
    return torch.ops.cudeform.deform_roi_pool(input, rois, offset, **options)


def deform_psroi_pool(input: Tensor, rois: Tensor, offset: Optional[Tensor] = None, *,
                      output_dim: int, group_size: int, pooled_size: int,
                      part_size: Optional[int] = None, sample_per_part: int = 4,
                      spatial_scale: float = 1.0, trans_std: float = 0.1) -> Tensor:
    """Deformable position-sensitive RoI pooling (the R-FCN head, MXNet semantics;
    ``offset=None`` is MXNet's ``no_trans``); calls ``torch.ops.cudeform.deform_psroi_pool``.

    Args:
        input (Tensor[N, output_dim*group_size**2, H, W]): score maps.
        rois (Tensor[R, 5]): rows ``(batch_index, x1, y1, x2, y2)``, of ``input``'s
            dtype. It gets no gradient.
        offset (Tensor[R, 2*num_classes, part_size, part_size], optional): normalised
            offsets, channel ``2*cls`` dx and ``2*cls+1`` dy.
        output_dim, group_size, pooled_size, part_size (defaults to ``pooled_size``),
        sample_per_part, spatial_scale, trans_std: as in :func:`cudeform.deform_psroi_pool`.

    Returns:
        Tensor[R, output_dim, pooled_size, pooled_size], C-contiguous. Gradients flow
        to input and offset (first order only).

    Raises:
        TypeError: a tensor argument that is not a tensor, mixed devices, mixed dtypes,
            an unsupported dtype, or an option of the wrong kind (e.g. a string).
        ValueError: a shape or option value that breaks the contract.
        RuntimeError: inside ``torch.onnx.export``, which has no such operator.

    Example:
        >>> import torch
        >>> from cudeform.adapters.torch import deform_psroi_pool
        >>> x = torch.arange(4.0).view(1, 4, 1, 1) * torch.ones(1, 4, 6, 6)
        >>> rois = torch.tensor([[0.0, 0, 0, 5, 5]])
        >>> # each bin reads its own score map: bin (i, j) reads channel i*2 + j
        >>> deform_psroi_pool(x, rois, output_dim=1, group_size=2, pooled_size=2)[0, 0]
        tensor([[0., 1.],
                [2., 3.]])
    """
    require_tensors(dict(input=input, rois=rois, offset=offset), optional=("offset",))
    _onnx.refuse_export("deform_psroi_pool", "deformable position-sensitive RoI pooling")
    options = _options.psroi_pool_options(output_dim, group_size, pooled_size, part_size,
                                         sample_per_part, spatial_scale, trans_std)
    if options["part_size"] is None:
        options["part_size"] = options["pooled_size"]
    return torch.ops.cudeform.deform_psroi_pool(input, rois, offset, **options)
