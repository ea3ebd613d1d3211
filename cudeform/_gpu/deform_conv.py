"""Host logic of the CUDA deformable convolution: batch chunking, kernels and GEMMs.

Written against an array module ``xp``, a ``launch`` function and a ``gemm`` runner
(:mod:`cudeform._gpu.gemm`), so that the same code drives the CUDA kernels and cuBLAS
on CuPy arrays and, in the tests, the same kernel source compiled for the CPU and the
GEMM module's NumPy twin on NumPy arrays.

Per batch chunk of ``n`` images (P output pixels each):

- forward: im2col, then one strided-batched GEMM over the weight groups, with the bias
  added by the GEMM itself (C starts as the bias, beta = 1); or, as
  :mod:`cudeform._gpu.forward_engine` chooses, the fused kernel (no columns);
- backward: im2col; the weight gradient and the bias gradient (against a vector of
  ones) accumulate over chunks through beta = 1 in the accumulation dtype; the column
  gradient overwrites the columns; col2im scatters it into the input gradient (float
  atomics, or fixed point when ``deterministic``); the offset and mask gradients come
  from per-slice partial sums and a fixed-order reduction.
"""

from __future__ import annotations

from cudeform._gpu import fused_forward
from cudeform._gpu.forward_engine import default_engine
from cudeform._gpu.gemm import default_gemm, describe_gemm
from cudeform._gpu.launch import channels_per_run, index_bits
from cudeform._gpu.scatter import scatter_bytes, scatter_sum
from cudeform._gpu.signatures import (
    ACCUMULATE_DTYPES, DEFORM_COL2IM, DEFORM_COL2IM_BOUND, DEFORM_COL2IM_COORD,
    DEFORM_COL2IM_COORD_REDUCE, DEFORM_IM2COL,
)
from cudeform._gpu.storage import narrow, narrow_bytes
from cudeform._workspace import batch_chunks


class _Chunk:
    """Shapes and kernel arguments of images ``start:stop``."""

    def __init__(self, g, start, stop):
        self.start, self.stop, self.n = start, stop, stop - start
        self.plane = g.out_h * g.out_w
        # Sampling tasks: one per (image, offset group, tap, pixel).
        self.tap_count = self.n * g.offset_groups * g.taps * self.plane
        self.group_channels = g.in_channels // g.offset_groups
        self.slice_channels = channels_per_run(self.group_channels, self.tap_count)
        self.runs = self.tap_count * -(-self.group_channels // self.slice_channels)
        self.shape = dict(
            batch=self.n, channels=g.in_channels, height=g.height, width=g.width,
            kernel_h=g.kernel_h, kernel_w=g.kernel_w, pad_h=g.pad_h, pad_w=g.pad_w,
            stride_h=g.stride_h, stride_w=g.stride_w, dilation_h=g.dilation_h,
            dilation_w=g.dilation_w, out_h=g.out_h, out_w=g.out_w,
            offset_groups=g.offset_groups, slice_channels=self.slice_channels)

    def of(self, array):
        return None if array is None else array[self.start:self.stop]


def _partial_components(has_mask):
    return 3 if has_mask else 2  # dy, dx (and dm)


def _accumulate_itemsize(dtype_name):
    return 8 if ACCUMULATE_DTYPES[dtype_name] == "float64" else 4


def workspace_per_image(g, dtype_name, itemsize, *, backward, bias=True, mask=True,
                        deterministic=False):
    """Bytes of the buffers that one image adds to a batch chunk, ``itemsize`` bytes per
    storage element. An upper bound for every chunk size (a larger chunk needs fewer
    slices).

    Forward: the columns and the GEMM's result (C_out x pixels). Backward: the columns
    (reused for their gradient), the output gradient regrouped for the GEMMs, the ones
    of the bias gradient, the offset-gradient partial sums, and the input-gradient
    scatter's buffers (:func:`cudeform._gpu.scatter.scatter_bytes`). The outputs and
    gradients themselves are not workspace.
    """
    one = _Chunk(g, 0, 1)
    columns = g.in_channels * g.taps * one.plane * itemsize
    regrouped = g.out_channels * one.plane * itemsize
    if not backward:
        return columns + regrouped
    ones = one.plane * itemsize if bias else 0
    partials = _partial_components(mask) * one.runs * _accumulate_itemsize(dtype_name)
    scatter = scatter_bytes(dtype_name, itemsize, deterministic) * (
        g.in_channels * g.height * g.width)
    return columns + regrouped + ones + partials + scatter


def workspace_per_call(g, dtype_name, itemsize, *, backward, bias=True):
    """Bytes held across all chunks of a call besides its outputs: for 16-bit types, the
    backward's float32 sums of the weight and bias gradients and their final narrowing
    to the storage type; nothing otherwise."""
    if not backward or ACCUMULATE_DTYPES[dtype_name] == dtype_name:
        return 0
    elements = g.out_channels * g.in_channels // g.groups * g.taps
    elements += g.out_channels if bias else 0
    return elements * (_accumulate_itemsize(dtype_name) + narrow_bytes(dtype_name, itemsize))


def _chunks(g, dtype_name, itemsize, *, backward, **workspace):
    per_call = workspace_per_call(g, dtype_name, itemsize, backward=backward,
                                  bias=workspace.get("bias", True))
    per_image = workspace_per_image(g, dtype_name, itemsize, backward=backward, **workspace)
    return (_Chunk(g, start, stop)
            for start, stop in batch_chunks(g.batch, per_image, reserved=per_call))


def _im2col(chunk, g, input, offset, mask, *, dtype_name, xp, launch):
    """Columns ``(groups, C_in/groups * taps, n * P)`` of the chunk, and the index width."""
    columns = xp.empty((g.groups, g.in_channels // g.groups * g.taps, chunk.n * chunk.plane),
                       dtype=input.dtype)
    bits = index_bits(columns.size, chunk.n * g.in_channels * g.height * g.width,
                      chunk.n * 2 * g.offset_groups * g.taps * chunk.plane,
                      _partial_components(mask is not None) * chunk.runs)
    launch(DEFORM_IM2COL, dtype_name, bits, chunk.runs, input=chunk.of(input),
           offset=chunk.of(offset), mask=chunk.of(mask), columns=columns, **chunk.shape)
    return columns, bits


def _grouped_weight(g, weight):
    return weight.reshape(g.groups, g.out_channels // g.groups, -1)


def forward(input, offset, weight, bias, mask, g, *, dtype_name, xp, launch, gemm=None,
            deterministic=False, engine=None):
    """``deform_conv2d`` on C-contiguous arrays of one dtype, validated into ``g``, by the
    im2col forward or the fused one, as ``engine`` (:mod:`cudeform._gpu.forward_engine`;
    by default ``CUDEFORM_CONV_FORWARD`` on CuPy, im2col on NumPy) chooses. Both are
    deterministic; in ``deterministic`` mode the choice does not depend on timing."""
    engine = engine or default_engine(xp)
    arrays = (input, offset, weight, bias, mask, g)
    return engine.run(g, dtype_name, has_mask=mask is not None, has_bias=bias is not None,
                      deterministic=deterministic,
                      im2col=lambda: im2col_forward(*arrays, dtype_name=dtype_name, xp=xp,
                                                    launch=launch, gemm=gemm),
                      fused=lambda tile, math: fused_forward.forward(
                          *arrays, tile=tile, math=math, dtype_name=dtype_name, xp=xp,
                          launch=launch))


def im2col_forward(input, offset, weight, bias, mask, g, *, dtype_name, xp, launch,
                   gemm=None):
    """``deform_conv2d`` by im2col and one GEMM per chunk of images.

    Every step is a gather or a GEMM, so the result is deterministic in either mode.
    16-bit types (bfloat16 views included) multiply in float32 and are rounded once.
    """
    engine = dict(dtype_name=dtype_name, xp=xp, launch=launch, gemm=gemm or default_gemm(xp))
    output = xp.empty(g.output_shape, dtype=input.dtype)
    for chunk in _chunks(g, dtype_name, input.dtype.itemsize, backward=False):
        _forward_chunk(chunk, g, input, offset, weight, bias, mask, output, **engine)
    return output


def _forward_chunk(chunk, g, input, offset, weight, bias, mask, output, *, dtype_name, xp,
                   launch, gemm):
    """The chunk's images of ``output``; its buffers are freed on return."""
    columns, _ = _im2col(chunk, g, input, offset, mask, dtype_name=dtype_name, xp=xp,
                         launch=launch)
    out_per_group = g.out_channels // g.groups
    if chunk.n == 1:  # (C_out, P) is already the output's layout
        result = output[chunk.start].reshape(g.groups, out_per_group, chunk.plane)
    else:
        result = xp.empty((g.groups, out_per_group, chunk.n * chunk.plane), input.dtype)
    if bias is not None:
        result[...] = bias.reshape(g.groups, out_per_group, 1)
    gemm(describe_gemm(_grouped_weight(g, weight), columns, result, dtype_name=dtype_name,
                       beta=0.0 if bias is None else 1.0))
    if chunk.n > 1:
        output[chunk.start:chunk.stop] = result.reshape(
            g.out_channels, chunk.n, g.out_h, g.out_w).transpose(1, 0, 2, 3)


def _ones(length, dtype, dtype_name, xp):
    """``(1, length, 1)`` ones in the storage dtype (bfloat16 views as their bits, 0x3F80)."""
    if dtype_name == "bfloat16" and dtype.kind in "iu":
        return xp.full((1, length, 1), 0x3F80, dtype=dtype)
    return xp.ones((1, length, 1), dtype=dtype)


def backward(grad_output, input, offset, weight, bias, mask, g, *, dtype_name, xp, launch,
             gemm=None, deterministic=False):
    """Gradients ``(input, offset, weight, bias, mask)`` of ``deform_conv2d``.

    The weight and bias gradients accumulate in the accumulation dtype (float32 for
    16-bit types) and are cast back at the end. The input gradient is a scatter: float
    atomics by default, 64-bit fixed point when ``deterministic`` (then every gradient
    is bit-identical from run to run).
    """
    engine = dict(dtype_name=dtype_name, xp=xp, launch=launch, gemm=gemm or default_gemm(xp))
    dtype = input.dtype
    accumulate = xp.dtype(ACCUMULATE_DTYPES[dtype_name])
    grads = dict(input=xp.empty(input.shape, dtype=dtype),
                 offset=xp.empty(offset.shape, dtype=dtype),
                 mask=None if mask is None else xp.empty(mask.shape, dtype=dtype),
                 weight=xp.zeros(_grouped_weight(g, weight).shape, dtype=accumulate),
                 bias=None if bias is None else xp.zeros(
                     (g.groups, g.out_channels // g.groups, 1), accumulate))
    for chunk in _chunks(g, dtype_name, dtype.itemsize, backward=True, bias=bias is not None,
                         mask=mask is not None, deterministic=deterministic):
        _backward_chunk(chunk, g, grad_output, input, offset, weight, mask, grads,
                        deterministic=deterministic, **engine)
    grad_bias = grads["bias"]
    if grad_bias is not None:
        grad_bias = narrow(grad_bias.reshape(-1), dtype, dtype_name, xp)
    grad_weight = narrow(grads.pop("weight").reshape(weight.shape), dtype, dtype_name, xp)
    return grads["input"], grads["offset"], grad_weight, grad_bias, grads["mask"]


def _backward_chunk(chunk, g, grad_output, input, offset, weight, mask, grads, *,
                    deterministic, dtype_name, xp, launch, gemm):
    """Add the chunk's images to ``grads`` (a dict by name); its buffers are freed on
    return."""
    columns, bits = _im2col(chunk, g, input, offset, mask, dtype_name=dtype_name, xp=xp,
                            launch=launch)
    out_per_group = g.out_channels // g.groups
    grad_out_g = grad_output[chunk.start:chunk.stop].reshape(
        chunk.n, g.groups, out_per_group, chunk.plane)
    grad_out_g = xp.ascontiguousarray(grad_out_g.transpose(1, 2, 0, 3)).reshape(
        g.groups, out_per_group, chunk.n * chunk.plane)
    gemm(describe_gemm(grad_out_g, columns, grads["weight"], dtype_name=dtype_name,
                       transpose_b=True, beta=1.0))
    if grads["bias"] is not None:
        ones = _ones(chunk.n * chunk.plane, input.dtype, dtype_name, xp)
        gemm(describe_gemm(grad_out_g, ones, grads["bias"], dtype_name=dtype_name, beta=1.0))
        del ones
    grad_columns = columns  # the columns are not needed any more
    gemm(describe_gemm(_grouped_weight(g, weight), grad_out_g, grad_columns,
                       dtype_name=dtype_name, transpose_a=True))
    del grad_out_g
    _input_gradient(chunk, g, grad_columns, offset, mask, grads["input"], bits,
                    deterministic=deterministic, dtype_name=dtype_name, xp=xp, launch=launch)
    _offset_and_mask_gradients(chunk, grad_columns, input, offset, mask, grads["offset"],
                               grads["mask"], bits, dtype_name=dtype_name, xp=xp,
                               launch=launch)


def _input_gradient(chunk, g, grad_columns, offset, mask, grad_input, bits, *, deterministic,
                    dtype_name, xp, launch):
    """col2im into ``grad_input``'s images of the chunk. A fixed-point contribution is
    grad_column * mask times a corner weight <= 1, and an input element receives at
    most one from each (tap, pixel) of its image: taps * P."""
    args = dict(grad_columns=grad_columns, offset=chunk.of(offset), mask=chunk.of(mask),
                **chunk.shape)
    bound = (DEFORM_COL2IM_BOUND, chunk.runs,
             dict(grad_columns=grad_columns, mask=chunk.of(mask), **chunk.shape))
    scatter_sum(chunk.of(grad_input), (DEFORM_COL2IM, chunk.runs, args), bound,
                g.taps * chunk.plane, deterministic=deterministic, dtype_name=dtype_name,
                bits=bits, xp=xp, launch=launch)


def _offset_and_mask_gradients(chunk, grad_columns, input, offset, mask, grad_offset,
                               grad_mask, bits, *, dtype_name, xp, launch):
    """Partial sums over slices of channels, then their sum in a fixed order."""
    components = _partial_components(mask is not None)
    partials = xp.empty(components * chunk.runs, dtype=xp.dtype(ACCUMULATE_DTYPES[dtype_name]))
    launch(DEFORM_COL2IM_COORD, dtype_name, bits, chunk.runs, grad_columns=grad_columns,
           input=chunk.of(input), offset=chunk.of(offset), mask=chunk.of(mask),
           partials=partials, **chunk.shape)
    launch(DEFORM_COL2IM_COORD_REDUCE, dtype_name, bits, components * chunk.tap_count,
           partials=partials, mask=chunk.of(mask), grad_offset=chunk.of(grad_offset),
           grad_mask=chunk.of(grad_mask), **chunk.shape)
