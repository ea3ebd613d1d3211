"""PyTorch adapter: cudeform's three operators as real ``torch.library`` custom ops.

Each op is a ``torch.library.custom_op`` in the ``cudeform`` namespace (CPU and CUDA)
with a shape-only ``register_fake`` built on :mod:`cudeform._shapes`, and a backward
op that returns every gradient, wired with ``register_autograd``; so ``opcheck``,
``torch.compile(fullgraph=True)`` and ``torch.export`` see ordinary operators. The
schemas (the ONNX export in ``torch_onnx.py`` depends on them)::

    cudeform::deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? bias,
        int[] stride, int[] padding, int[] dilation, Tensor? mask) -> Tensor
    cudeform::deform_conv2d_backward(Tensor grad_output, <the same>)
        -> (Tensor, Tensor, Tensor, Tensor?, Tensor?)
    cudeform::deform_roi_pool(Tensor input, Tensor rois, Tensor? offset,
        int[] output_size, float spatial_scale, int sampling_ratio, float gamma) -> Tensor
    cudeform::deform_roi_pool_backward(Tensor grad_output, <the same>) -> (Tensor, Tensor?)
    cudeform::deform_psroi_pool(Tensor input, Tensor rois, Tensor? offset, int output_dim,
        int group_size, int pooled_size, int part_size, int sample_per_part,
        float spatial_scale, float trans_std) -> Tensor
    cudeform::deform_psroi_pool_backward(Tensor grad_output, <the same>) -> (Tensor, Tensor?)

The optional outputs of the backward ops are None exactly where the forward's
optional input was None. The adapter holds no math: it converts, registers and wraps.

Memory: tensors reach the core without copies through DLPack. CPU tensors become
NumPy arrays (``numpy.from_dlpack``) and the core's NumPy outputs come back with
``torch.from_numpy``; CUDA tensors become CuPy arrays on the tensor's GPU and the
kernels run on torch's current CUDA stream, so no synchronisation is needed.
Non-contiguous tensors are copied by the core. CUDA outputs are allocated by CuPy's
memory pool (not torch's caching allocator) and freed when the tensor is.

Dtypes: float32 and float64 on the CPU; float16, bfloat16, float32 and float64 on
CUDA (16-bit types accumulate in float32). CuPy has no bfloat16, so bfloat16 tensors
travel as int16 views and the core is told their element type
(:func:`cudeform._arrays.bfloat16_views`).

Autocast: under ``torch.autocast("cuda")`` every floating input of an op is cast to
the autocast dtype (``torch.get_autocast_dtype("cuda")``, float16 or bfloat16) and
the kernels accumulate in float32. The NumPy path has no 16-bit types, so under
``torch.autocast("cpu")`` the ops run in float32 (float64 inputs are cast down too,
as autocast does for its float32 ops). ``torch.library.register_autocast`` takes
one fixed dtype, so the CUDA rule, which follows the autocast dtype at call time, is
registered by :func:`_register_autocast` in the same way (a kernel on the
``Autocast<Device>`` dispatch key).

The backward is first order: differentiating a backward op raises RuntimeError
("... double backward is not supported"). ``rois`` gets no gradient.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import numpy
import torch
from torch import Tensor

import cudeform
from cudeform import _arrays
from cudeform._shapes import (
    check_grad_output, deform_conv2d_geometry, deform_psroi_pool_geometry,
    deform_roi_pool_geometry, pair,
)

__all__ = ["deform_conv2d", "deform_roi_pool", "deform_psroi_pool"]

_DEVICE_TYPES = ("cpu", "cuda")
_LIBRARY = torch.library.Library("cudeform", "FRAGMENT")  # the autocast kernels

# --- tensors to arrays and back (DLPack, no copies) --------------------------------------


def _cuda_stream(device_index):
    """torch's current stream on ``device_index`` as a CuPy stream (a context manager)."""
    import cupy

    stream = torch.cuda.current_stream(device_index)
    from_external = getattr(cupy.cuda.Stream, "from_external", None)  # CuPy >= 14
    if from_external is not None and hasattr(stream, "__cuda_stream__"):
        return from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, device_index)


def _to_array(tensor):
    """A NumPy (CPU) or CuPy (CUDA) view of ``tensor``; bfloat16 as an int16 view."""
    if tensor is None:
        return None
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return numpy.from_dlpack(tensor)
    if tensor.device.type == "cuda":
        import cupy

        if tensor.dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16)
        return cupy.from_dlpack(tensor)
    raise TypeError(f"cudeform runs on CPU and CUDA tensors, got a tensor on {tensor.device}")


def _to_tensor(array, bfloat16):
    """The tensor viewing ``array`` (a core output); int16 back to bfloat16 if asked."""
    if array is None:
        return None
    if isinstance(array, numpy.ndarray):
        return torch.from_numpy(array)
    tensor = torch.from_dlpack(array)
    return tensor.view(torch.bfloat16) if bfloat16 and tensor.dtype == torch.int16 else tensor


def _call(function, tensors, **options):
    """``function(**arrays, **options)`` on views of ``tensors`` (a dict by argument
    name); the result, an array or a tuple of arrays and Nones, as tensors."""
    present = [t for t in tensors.values() if t is not None]
    device = present[0].device
    bfloat16 = any(t.dtype == torch.bfloat16 for t in present)
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            import cupy

            stack.enter_context(cupy.cuda.Device(device.index))
            stack.enter_context(_cuda_stream(device.index))
            if bfloat16:
                stack.enter_context(_arrays.bfloat16_views())
        result = function(**{k: _to_array(t) for k, t in tensors.items()}, **options)
        if isinstance(result, tuple):
            return tuple(_to_tensor(a, bfloat16) for a in result)
        return _to_tensor(result, bfloat16)


def _empty_like(tensor):
    return None if tensor is None else torch.empty_like(tensor)


def _shape(tensor):
    return None if tensor is None else tuple(tensor.shape)


def _no_double_backward(name):
    def backward(ctx, *grads):
        raise RuntimeError(f"cudeform::{name}: the backward is first order; "
                           "double backward is not supported")
    return backward


# --- deformable convolution ------------------------------------------------------------

_CONV_ARGS = ("Tensor input, Tensor offset, Tensor weight, Tensor? bias, int[] stride, "
              "int[] padding, int[] dilation, Tensor? mask")


@torch.library.custom_op("cudeform::deform_conv2d", mutates_args=(),
                         device_types=_DEVICE_TYPES, schema=f"({_CONV_ARGS}) -> Tensor")
def _deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                   stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   mask: Optional[Tensor]) -> Tensor:
    return _call(cudeform.deform_conv2d, dict(input=input, offset=offset, weight=weight,
                                              bias=bias, mask=mask),
                 stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation))


@torch.library.custom_op(
    "cudeform::deform_conv2d_backward", mutates_args=(), device_types=_DEVICE_TYPES,
    schema=f"(Tensor grad_output, {_CONV_ARGS}) -> (Tensor, Tensor, Tensor, Tensor?, Tensor?)")
def _deform_conv2d_backward(grad_output, input, offset, weight, bias, stride, padding,
                            dilation, mask):
    return _call(cudeform.deform_conv2d_backward,
                 dict(grad_output=grad_output, input=input, offset=offset, weight=weight,
                      bias=bias, mask=mask),
                 stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation))


def _conv_geometry(input, offset, weight, bias, stride, padding, dilation, mask):
    return deform_conv2d_geometry(input.shape, offset.shape, weight.shape, _shape(bias),
                                  _shape(mask), stride=tuple(stride), padding=tuple(padding),
                                  dilation=tuple(dilation))


@_deform_conv2d.register_fake
def _(input, offset, weight, bias, stride, padding, dilation, mask):
    g = _conv_geometry(input, offset, weight, bias, stride, padding, dilation, mask)
    return input.new_empty(g.output_shape)


@_deform_conv2d_backward.register_fake
def _(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
    g = _conv_geometry(input, offset, weight, bias, stride, padding, dilation, mask)
    check_grad_output(grad_output.shape, g.output_shape)
    return tuple(_empty_like(t) for t in (input, offset, weight, bias, mask))


def _conv_setup_context(ctx, inputs, output):
    input, offset, weight, bias, stride, padding, dilation, mask = inputs
    ctx.save_for_backward(input, offset, weight, bias, mask)
    ctx.options = (stride, padding, dilation)


def _conv_backward(ctx, grad_output):
    input, offset, weight, bias, mask = ctx.saved_tensors
    grads = _deform_conv2d_backward(grad_output, input, offset, weight, bias, *ctx.options,
                                    mask)
    grad_input, grad_offset, grad_weight, grad_bias, grad_mask = grads
    return grad_input, grad_offset, grad_weight, grad_bias, None, None, None, grad_mask


_deform_conv2d.register_autograd(_conv_backward, setup_context=_conv_setup_context)
_deform_conv2d_backward.register_autograd(_no_double_backward("deform_conv2d_backward"))


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                  mask=None):
    r"""Deformable 2-D convolution (DCNv1; DCNv2 when ``mask`` is given), torchvision's
    arguments and offset layout (``torchvision.ops.deform_conv2d``).

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
        Tensor[N, C_out, H_out, W_out]. Gradients flow to input, offset, weight, bias
        and mask (first order only). On CUDA the input gradient uses atomicAdd.

    Raises:
        TypeError: mixed devices, mixed dtypes or an unsupported dtype.
        ValueError: a shape or value that breaks the contract (the core's message).
    """
    stride = list(pair(stride, "stride", minimum=1))
    padding = list(pair(padding, "padding", minimum=0))
    dilation = list(pair(dilation, "dilation", minimum=1))
    return _deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


# --- RoI pooling (both kinds share the wiring) -----------------------------------------

_ROI_ARGS = ("Tensor input, Tensor rois, Tensor? offset, int[] output_size, "
             "float spatial_scale, int sampling_ratio, float gamma")
_PSROI_ARGS = ("Tensor input, Tensor rois, Tensor? offset, int output_dim, int group_size, "
               "int pooled_size, int part_size, int sample_per_part, float spatial_scale, "
               "float trans_std")


def _roi_options(output_size, spatial_scale, sampling_ratio, gamma):
    return dict(output_size=tuple(output_size), spatial_scale=spatial_scale,
                sampling_ratio=sampling_ratio, gamma=gamma)


def _psroi_options(output_dim, group_size, pooled_size, part_size, sample_per_part,
                   spatial_scale, trans_std):
    return dict(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                part_size=part_size, sample_per_part=sample_per_part,
                spatial_scale=spatial_scale, trans_std=trans_std)


def _define_pool(name, arguments, options_of, geometry, forward, backward):
    """Register ``cudeform::<name>`` and ``cudeform::<name>_backward`` (inputs
    ``(input, rois, offset, *options)``) with fakes and autograd; return the forward."""

    def forward_impl(input, rois, offset, *options):
        return _call(forward, dict(input=input, rois=rois, offset=offset),
                     **options_of(*options))

    def backward_impl(grad_output, input, rois, offset, *options):
        return _call(backward, dict(grad_output=grad_output, input=input, rois=rois,
                                    offset=offset), **options_of(*options))

    forward_op = torch.library.custom_op(
        f"cudeform::{name}", forward_impl, mutates_args=(), device_types=_DEVICE_TYPES,
        schema=f"({arguments}) -> Tensor")
    backward_op = torch.library.custom_op(
        f"cudeform::{name}_backward", backward_impl, mutates_args=(),
        device_types=_DEVICE_TYPES,
        schema=f"(Tensor grad_output, {arguments}) -> (Tensor, Tensor?)")

    def fake_forward(input, rois, offset, *options):
        g = geometry(input.shape, rois.shape, _shape(offset), **options_of(*options))
        return input.new_empty(g.output_shape)

    def fake_backward(grad_output, input, rois, offset, *options):
        g = geometry(input.shape, rois.shape, _shape(offset), **options_of(*options))
        check_grad_output(grad_output.shape, g.output_shape)
        return torch.empty_like(input), _empty_like(offset)

    def setup_context(ctx, inputs, output):
        input, rois, offset, *options = inputs
        ctx.save_for_backward(input, rois, offset)
        ctx.options = options

    def autograd_backward(ctx, grad_output):
        input, rois, offset = ctx.saved_tensors
        grad_input, grad_offset = backward_op(grad_output, input, rois, offset, *ctx.options)
        return (grad_input, None, grad_offset) + (None,) * len(ctx.options)

    forward_op.register_fake(fake_forward)
    backward_op.register_fake(fake_backward)
    forward_op.register_autograd(autograd_backward, setup_context=setup_context)
    backward_op.register_autograd(_no_double_backward(f"{name}_backward"))
    return forward_op, backward_op


_deform_roi_pool, _deform_roi_pool_backward = _define_pool(
    "deform_roi_pool", _ROI_ARGS, _roi_options, deform_roi_pool_geometry,
    cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward)
_deform_psroi_pool, _deform_psroi_pool_backward = _define_pool(
    "deform_psroi_pool", _PSROI_ARGS, _psroi_options, deform_psroi_pool_geometry,
    cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward)


def _real(value):
    """A Python float for the schema's ``float``; other values go on to fail there."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else value


def deform_roi_pool(input, rois, offset=None, *, output_size, spatial_scale=1.0,
                    sampling_ratio=0, gamma=0.1):
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
        Tensor[R, C, ph, pw]. Gradients flow to input and offset (first order only).
    """
    output_size = list(pair(output_size, "output_size", minimum=1))
    return _deform_roi_pool(input, rois, offset, output_size, _real(spatial_scale),
                            sampling_ratio, _real(gamma))


def deform_psroi_pool(input, rois, offset=None, *, output_dim, group_size, pooled_size,
                      part_size=None, sample_per_part=4, spatial_scale=1.0, trans_std=0.1):
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
        Tensor[R, output_dim, pooled_size, pooled_size]. Gradients flow to input and
        offset (first order only).
    """
    part_size = pooled_size if part_size is None else part_size
    return _deform_psroi_pool(input, rois, offset, output_dim, group_size, pooled_size,
                              part_size, sample_per_part, _real(spatial_scale),
                              _real(trans_std))


# --- autocast --------------------------------------------------------------------------


def _register_autocast(op, device_type, dtype_of):
    """Run ``op`` under ``torch.autocast(device_type)`` with every floating input on
    ``device_type`` cast to ``dtype_of()`` (what ``torch.library.register_autocast``
    does, with the dtype chosen at call time)."""
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def cast(value, dtype):
        if isinstance(value, Tensor) and value.is_floating_point() \
                and value.device.type == device_type:
            return value.to(dtype)
        return value

    def kernel(keyset, *args):
        dtype = dtype_of()
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op._opoverload(*(cast(a, dtype) for a in args))

    _LIBRARY.impl(op._name, kernel, key, with_keyset=True)


_OPS = (_deform_conv2d, _deform_conv2d_backward, _deform_roi_pool, _deform_roi_pool_backward,
        _deform_psroi_pool, _deform_psroi_pool_backward)
for _op in _OPS:
    _register_autocast(_op, "cpu", lambda: torch.float32)
    _register_autocast(_op, "cuda", lambda: torch.get_autocast_dtype("cuda"))

# The layers live in torch_layers.py, which imports the functional ops above;
# they are re-exported lazily so that either module can be imported first.
_LAYERS = ("DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack", "DeformRoIPool",
           "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack", "DeformPSRoIPool",
           "DeformPSRoIPoolPack")
__all__ += list(_LAYERS)


def __getattr__(name):
    if name in _LAYERS:
        from cudeform.adapters import torch_layers

        return getattr(torch_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
