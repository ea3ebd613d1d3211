"""Chainer adapter: cudeform's three operators as differentiable Chainer functions,
their links, and converters for the offset layout of Chainer's own sampler.

Each function is a :class:`chainer.FunctionNode` that calls the cudeform forward; its
``backward`` applies a second node (``...Grad``) that calls the cudeform backward, as
``chainer.functions.roi_pooling_2d`` does. The adapter holds no math: it converts,
wraps and registers. NumPy arrays run on the CPU and CuPy arrays on their GPU (the
arrays are handed over as they are, no DLPack). The backward is first order: taking
the gradient of a gradient raises ``NotImplementedError``. ``rois`` gets no gradient.

Arguments follow the core's rules, checked before Chainer sees them: an argument of the
wrong kind or dtype, or an option of the wrong kind, is a ``TypeError`` that names it
by the adapter's name (``x``, ``W``, ``b``, ``pad``, ``dilate``); a shape or value that
breaks the contract is the core's ``ValueError``, whose shape messages name the core's
arguments (``input``, ``weight``, ``bias``).

The links (:class:`DeformConv2d`, :class:`DeformConv2dPack`,
:class:`ModulatedDeformConv2dPack`, :class:`DeformRoIPoolPack`,
:class:`DeformPSRoIPoolPack`) live in ``chainer_links.py`` and are importable from here.

Chainer 7.8.1 needs ``setuptools<81`` (it imports ``pkg_resources``) and, under NumPy 2,
the ``numpy.sctypes`` shim of ``_chainer_compat``, imported below before Chainer. So
import this module before ``chainer``: Chainer fails at its own import under NumPy 2
unless the shim ran first, and no library can run code before the user's
``import chainer`` without a start-up hook in every Python process.
"""

from __future__ import annotations

from cudeform.adapters import _chainer_compat  # noqa: F401  (before chainer)

import chainer  # noqa: E402
import chainer.functions  # noqa: E402
from chainer import function_node  # noqa: E402

from typing import Optional, Union  # noqa: E402

import cudeform  # noqa: E402
from cudeform import _arrays, _options, _shapes  # noqa: E402
from cudeform._typing import Array, IntPair  # noqa: E402

#: What the functions take: a ``chainer.Variable`` or a NumPy/CuPy array.
Input = Union[chainer.Variable, Array]

__all__ = [
    "deform_conv2d", "deform_roi_pool", "deform_psroi_pool",
    "offset_from_chainer_sampler", "offset_to_chainer_sampler",
    "DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack",
    "DeformRoIPoolPack", "DeformPSRoIPoolPack",
]


def _no_double_backward(name):
    raise NotImplementedError(
        f"{name}: cudeform's backward is first order; double backward is not supported")


def check_inputs(inputs, optional=()):
    """The core's rules for array arguments, with the adapter's names, before Chainer
    sees the inputs: each one a Variable or an array (None only where ``optional``),
    NumPy or CuPy but not both, of one dtype the device supports.

    Raises:
        TypeError: naming the argument (and, for a mix, both).
        ValueError: CuPy arrays on different GPUs.
    """
    arrays = {name: value.array if isinstance(value, chainer.Variable) else value
              for name, value in inputs.items()}
    xp = _arrays.array_module(arrays, optional,
                              expected="a chainer.Variable, numpy.ndarray or cupy.ndarray")
    _arrays.common_dtype(arrays, xp)


# --- deformable convolution -----------------------------------------------------------


class DeformConv2dFunction(function_node.FunctionNode):
    """Inputs ``(x, offset, W[, b][, mask])``; output ``y``."""

    def __init__(self, stride, pad, dilate, has_bias, has_mask):
        self.options = _options.conv_options(stride, pad, dilate, names=("stride", "pad",
                                                                         "dilate"))
        self.has_bias, self.has_mask = has_bias, has_mask

    def split(self, inputs):
        """``(x, offset, W, b or None, mask or None)`` from the positional inputs."""
        x, offset, W, *rest = inputs
        b = rest.pop(0) if self.has_bias else None
        mask = rest.pop(0) if self.has_mask else None
        return x, offset, W, b, mask

    def forward(self, inputs):
        self.retain_inputs(tuple(range(len(inputs))))
        x, offset, W, b, mask = self.split(inputs)
        return cudeform.deform_conv2d(x, offset, W, b, mask=mask, **self.options),

    def backward(self, indexes, grad_outputs):
        return DeformConv2dGrad(self).apply(self.get_retained_inputs() + grad_outputs)


class DeformConv2dGrad(function_node.FunctionNode):
    """Inputs ``(x, offset, W[, b][, mask], gy)``; outputs the gradients of the
    forward's inputs, in their order."""

    def __init__(self, forward_node):
        self.forward_node = forward_node

    def forward(self, inputs):
        node = self.forward_node
        x, offset, W, b, mask = node.split(inputs[:-1])
        g = cudeform.deform_conv2d_backward(inputs[-1], x, offset, W, b, mask=mask,
                                            **node.options)
        grads = (g.input, g.offset, g.weight, g.bias, g.mask)
        return tuple(grad for grad in grads if grad is not None)

    def backward(self, indexes, grad_outputs):
        _no_double_backward("deform_conv2d")


def deform_conv2d(x: Input, offset: Input, W: Input, b: Optional[Input] = None,
                  stride: IntPair = 1, pad: IntPair = 0, dilate: IntPair = 1,
                  mask: Optional[Input] = None) -> chainer.Variable:
    r"""Deformable 2-D convolution (DCNv1; DCNv2 with ``mask``) on Chainer variables.

    .. math::
        y(p) = \sum_k W_k \cdot m_k(p) \cdot x(p + p_k + \Delta p_k(p)) + b

    (Dai et al., https://arxiv.org/abs/1703.06211; Zhu et al.,
    https://arxiv.org/abs/1811.11168). Calls :func:`cudeform.deform_conv2d`.

    Args:
        x (Variable or ndarray[N, C_in, H, W]): input.
        offset (Variable or ndarray[N, 2*dg*kh*kw, H_out, W_out]): cudeform's layout:
            channel ``g*2*kh*kw + 2*k`` is dy and the next one dx, ``k = i*kw + j``.
            An offset in the layout of ``chainer.functions.deformable_convolution_2d_sampler``
            converts with :func:`offset_from_chainer_sampler`.
        W (Variable or ndarray[C_out, C_in/groups, kh, kw]): filters (groups inferred).
        b (Variable or ndarray[C_out], optional): bias.
        stride, pad, dilate (int or (int, int)): Chainer's names for stride,
            padding and dilation.
        mask (Variable or ndarray[N, dg*kh*kw, H_out, W_out], optional): DCNv2 mask.

    Returns:
        ~chainer.Variable[N, C_out, H_out, W_out].

    Gradients flow to ``x``, ``offset``, ``W``, ``b`` and ``mask`` (first order only).

    Example:
        >>> import numpy as np
        >>> from cudeform.adapters.chainer import deform_conv2d
        >>> x = np.ones((1, 1, 4, 4), np.float32)
        >>> W = np.ones((1, 1, 3, 3), np.float32)
        >>> deform_conv2d(x, np.zeros((1, 18, 2, 2), np.float32), W).array[0, 0]
        array([[9., 9.],
               [9., 9.]], dtype=float32)
    """
    check_inputs(dict(x=x, offset=offset, W=W, b=b, mask=mask), optional=("b", "mask"))
    node = DeformConv2dFunction(stride, pad, dilate, b is not None, mask is not None)
    inputs = [a for a in (x, offset, W, b, mask) if a is not None]
    return node.apply(inputs)[0]


# --- deformable RoI pooling ---------------------------------------------------------


class _RoIPoolFunction(function_node.FunctionNode):
    """Inputs ``(x, rois[, offset])``; output ``y``. ``rois`` gets no gradient."""

    def __init__(self, has_offset, options):
        self.has_offset, self.options = has_offset, options

    def forward(self, inputs):
        self.retain_inputs(tuple(range(len(inputs))))
        x, rois, offset = (tuple(inputs) + (None,))[:3]
        return self.core_forward(x, rois, offset, **self.options),

    def backward(self, indexes, grad_outputs):
        inputs = self.get_retained_inputs()
        grads = _RoIPoolGrad(self).apply(inputs + grad_outputs)
        return (grads[0], None) + tuple(grads[1:])


class _RoIPoolGrad(function_node.FunctionNode):
    """Inputs ``(x, rois[, offset], gy)``; outputs ``(gx[, goffset])``."""

    def __init__(self, forward_node):
        self.forward_node = forward_node

    def forward(self, inputs):
        node = self.forward_node
        x, rois, offset = (tuple(inputs[:-1]) + (None,))[:3]
        g = node.core_backward(inputs[-1], x, rois, offset, **node.options)
        return (g.input,) if offset is None else (g.input, g.offset)

    def backward(self, indexes, grad_outputs):
        _no_double_backward(self.forward_node.core_forward.__name__)


class DeformRoIPoolFunction(_RoIPoolFunction):
    core_forward = staticmethod(cudeform.deform_roi_pool)
    core_backward = staticmethod(cudeform.deform_roi_pool_backward)


class DeformPSRoIPoolFunction(_RoIPoolFunction):
    core_forward = staticmethod(cudeform.deform_psroi_pool)
    core_backward = staticmethod(cudeform.deform_psroi_pool_backward)


def deform_roi_pool(x: Input, rois: Input, offset: Optional[Input] = None, *,
                    output_size: IntPair, spatial_scale: float = 1.0, sampling_ratio: int = 0,
                    gamma: float = 0.1) -> chainer.Variable:
    """Deformable RoI pooling (RoIAlign average pooling with a learned shift per bin)
    on Chainer variables; calls :func:`cudeform.deform_roi_pool` (mmcv semantics).

    Args:
        x (Variable or ndarray[N, C, H, W]): feature map.
        rois (ndarray[R, 5]): rows ``(batch_index, x1, y1, x2, y2)``, image
            coordinates, of ``x``'s dtype. It gets no gradient.
        offset (Variable or ndarray[R, 2, ph, pw], optional): normalised bin offsets,
            channel 0 dx, channel 1 dy.
        output_size, spatial_scale, sampling_ratio, gamma: as in
            :func:`cudeform.deform_roi_pool`.

    Returns:
        ~chainer.Variable[R, C, ph, pw]. Gradients flow to ``x`` and ``offset``
        (first order only).

    Example:
        >>> import numpy as np
        >>> from cudeform.adapters.chainer import deform_roi_pool
        >>> x = np.tile(np.arange(8, dtype=np.float32), (1, 1, 8, 1))  # x[..., i, j] = j
        >>> rois = np.array([[0, 0, 0, 4, 4]], np.float32)
        >>> deform_roi_pool(x, rois, output_size=2).array[0, 0]  # RoIAlign: mean column
        array([[0.5, 2.5],
               [0.5, 2.5]], dtype=float32)
    """
    check_inputs(dict(x=x, rois=rois, offset=offset), optional=("offset",))
    options = _options.roi_pool_options(output_size, spatial_scale, sampling_ratio, gamma)
    node = DeformRoIPoolFunction(offset is not None, options)
    return node.apply([a for a in (x, rois, offset) if a is not None])[0]


def deform_psroi_pool(x: Input, rois: Input, offset: Optional[Input] = None, *,
                      output_dim: int, group_size: int, pooled_size: int,
                      part_size: Optional[int] = None, sample_per_part: int = 4,
                      spatial_scale: float = 1.0, trans_std: float = 0.1) -> chainer.Variable:
    """Deformable position-sensitive RoI pooling (the R-FCN head) on Chainer variables;
    calls :func:`cudeform.deform_psroi_pool` (MXNet semantics; ``offset=None`` is
    MXNet's ``no_trans``).

    Args:
        x (Variable or ndarray[N, output_dim*group_size**2, H, W]): score maps.
        rois (ndarray[R, 5]): rows ``(batch_index, x1, y1, x2, y2)``, image
            coordinates, of ``x``'s dtype. It gets no gradient.
        offset (Variable or ndarray[R, 2*num_classes, part_size, part_size], optional):
            normalised offsets, channel ``2*cls`` dx and ``2*cls+1`` dy.
        output_dim, group_size, pooled_size, part_size, sample_per_part, spatial_scale, trans_std:
            as in :func:`cudeform.deform_psroi_pool`.

    Returns:
        ~chainer.Variable[R, output_dim, pooled_size, pooled_size]. Gradients flow to
        ``x`` and ``offset`` (first order only).

    Example:
        >>> import numpy as np
        >>> from cudeform.adapters.chainer import deform_psroi_pool
        >>> x = np.ones((1, 4, 6, 6), np.float32) * np.arange(4, dtype=np.float32)[:, None, None]
        >>> rois = np.array([[0, 0, 0, 5, 5]], np.float32)
        >>> # each bin reads its own score map: bin (i, j) reads channel i*2 + j
        >>> deform_psroi_pool(x, rois, output_dim=1, group_size=2, pooled_size=2).array[0, 0]
        array([[0., 1.],
               [2., 3.]], dtype=float32)
    """
    check_inputs(dict(x=x, rois=rois, offset=offset), optional=("offset",))
    options = _options.psroi_pool_options(output_dim, group_size, pooled_size, part_size,
                                         sample_per_part, spatial_scale, trans_std)
    node = DeformPSRoIPoolFunction(offset is not None, options)
    return node.apply([a for a in (x, rois, offset) if a is not None])[0]


# --- offset layout of chainer.functions.deformable_convolution_2d_sampler -------------


def _sampler_offset_shape(offset):
    """The shape of a one-group offset (either layout): 4-D, with an even channel count."""
    check_inputs(dict(offset=offset))
    _shapes.require_ndim(offset.shape, 4, "offset")
    if offset.shape[1] % 2:
        raise ValueError(f"offset.shape[1] is not valid: expected an even number 2*kh*kw, "
                         f"got {offset.shape[1]}")
    return offset.shape


def offset_from_chainer_sampler(offset: Input) -> chainer.Variable:
    """Chainer sampler offsets to cudeform's interleaved ``(dy, dx)`` layout.

    ``chainer.functions.deformable_convolution_2d_sampler`` takes an offset of shape
    ``(N, 2*kh*kw, H_out, W_out)`` whose first ``kh*kw`` channels are dx of tap
    ``k = i*kw + j`` and whose last ``kh*kw`` are dy (one offset group, no dilation,
    no mask). cudeform wants channel ``2*k`` = dy and ``2*k + 1`` = dx. The sampling
    position is the same in both: ``(ho*stride_h - pad_h + i + dy, wo*stride_w - pad_w + j + dx)``.

    Border rule: Chainer zero-pads ``x`` by ``pad``, then its spatial-transformer
    sampler zero-pads one more pixel and clips the coordinate to that frame, and
    zeroes the coordinate gradient of a clipped sample. On the CPU that is the
    bilinear interpolation of the zero-extended map, the rule cudeform uses, so for
    finite offsets the two agree up to rounding: ``tests/test_adapter_chainer.py``
    finds values and every gradient equal to float64 rounding, with samples off
    integer coordinates, both inside the map and across every border. The differences:

    - Chainer normalises coordinates to ``[-1, 1]`` and back, which rounds them (in
      float32 by ~1e-6 px), so a sample on an integer may land on the other side of
      a bilinear kink and get the other one-sided coordinate gradient;
    - a NaN or infinite offset gives NaN in Chainer and 0 (with 0 gradient) in cudeform;
    - on the GPU with cuDNN Chainer uses cuDNN's sampler, whose rule was not checked;
    - Chainer fails (divides by zero) when ``H + 2*pad_h == 1`` or ``W + 2*pad_w == 1``.

    Args:
        offset (Variable or ndarray[N, 2*kh*kw, H_out, W_out]): Chainer's layout.

    Returns:
        ~chainer.Variable of the same shape, cudeform's layout (differentiable).

    Example:
        >>> import numpy as np
        >>> from cudeform.adapters.chainer import offset_from_chainer_sampler
        >>> chainer_offset = np.array([10, 11, 20, 21], np.float32).reshape(1, 4, 1, 1)
        >>> # a 1x2 kernel: dx of taps 0 and 1, then dy of taps 0 and 1
        >>> offset_from_chainer_sampler(chainer_offset).array.ravel()  # (dy, dx) per tap
        array([20., 10., 21., 11.], dtype=float32)
    """
    n, channels, height, width = _sampler_offset_shape(offset)
    dx, dy = chainer.functions.split_axis(offset, 2, axis=1)
    pairs = chainer.functions.stack([dy, dx], axis=2)  # (N, kh*kw, 2, H, W)
    return chainer.functions.reshape(pairs, (n, channels, height, width))


def offset_to_chainer_sampler(offset: Input) -> chainer.Variable:
    """cudeform's interleaved ``(dy, dx)`` offsets (one offset group) to the layout of
    ``chainer.functions.deformable_convolution_2d_sampler``: all dx, then all dy.
    The inverse of :func:`offset_from_chainer_sampler`, whose docstring describes the
    two layouts and border rules.

    Args:
        offset (Variable or ndarray[N, 2*kh*kw, H_out, W_out]): cudeform's layout.

    Returns:
        ~chainer.Variable of the same shape, Chainer's layout (differentiable).

    Example:
        >>> import numpy as np
        >>> from cudeform.adapters.chainer import offset_to_chainer_sampler
        >>> offset = np.array([20, 10, 21, 11], np.float32).reshape(1, 4, 1, 1)  # (dy, dx) per tap
        >>> offset_to_chainer_sampler(offset).array.ravel()  # all dx, then all dy
        array([10., 11., 20., 21.], dtype=float32)
    """
    n, channels, height, width = _sampler_offset_shape(offset)
    pairs = chainer.functions.reshape(offset, (n, channels // 2, 2, height, width))
    dy, dx = chainer.functions.separate(pairs, axis=2)
    return chainer.functions.concat([dx, dy], axis=1)


_LINKS = ("DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack",
          "DeformRoIPoolPack", "DeformPSRoIPoolPack")


def __getattr__(name):
    """The links, from ``chainer_links`` (imported on first use: it imports this module)."""
    if name in _LINKS:
        from cudeform.adapters import chainer_links
        return getattr(chainer_links, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
