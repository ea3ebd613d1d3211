"""Host logic of the CUDA deformable convolution: batch chunking, kernels and GEMMs.

Written against an array module ``xp`` and a ``launch`` function so that the
same code drives the CUDA kernels on CuPy arrays and, in the tests, the same
kernel source compiled for the CPU on NumPy arrays.
"""

from __future__ import annotations

from cudeform._gpu.launch import index_bits
from cudeform._gpu.signatures import (
    ACCUMULATE_DTYPES, DEFORM_COL2IM, DEFORM_COL2IM_COORD, DEFORM_IM2COL,
)
from cudeform._gpu.storage import is_view, narrow, values
from cudeform._workspace import batch_chunks


def _shape_args(g, batch):
    return dict(
        batch=batch, channels=g.in_channels, height=g.height, width=g.width,
        kernel_h=g.kernel_h, kernel_w=g.kernel_w, pad_h=g.pad_h, pad_w=g.pad_w,
        stride_h=g.stride_h, stride_w=g.stride_w, dilation_h=g.dilation_h,
        dilation_w=g.dilation_w, out_h=g.out_h, out_w=g.out_w, offset_groups=g.offset_groups,
    )


def _chunks(g, itemsize):
    # The column buffer of one image: C_in * taps rows of out_h * out_w, of
    # ``itemsize`` bytes per element.
    return batch_chunks(g.batch, g.in_channels * g.taps * g.out_h * g.out_w * itemsize)


def _slice(array, start, stop):
    return None if array is None else array[start:stop]


def _im2col(g, input, offset, mask, start, stop, *, dtype_name, xp, launch):
    """Columns ``(groups, C_in/groups * taps, n * P)`` of images ``start:stop``."""
    n = stop - start
    plane = g.out_h * g.out_w
    columns = xp.empty((g.groups, g.in_channels // g.groups * g.taps, n * plane),
                       dtype=input.dtype)
    bits = index_bits(columns.size, n * g.in_channels * g.height * g.width,
                      n * 2 * g.offset_groups * g.taps * plane)
    launch(DEFORM_IM2COL, dtype_name, bits, g.in_channels * n * plane,
           input=input[start:stop], offset=offset[start:stop],
           mask=_slice(mask, start, stop), columns=columns, **_shape_args(g, n))
    return columns, bits


def _grouped_weight(g, weight):
    return weight.reshape(g.groups, g.out_channels // g.groups, -1)


def forward(input, offset, weight, bias, mask, g, *, dtype_name, xp, launch):
    """``deform_conv2d`` on C-contiguous arrays of one dtype, validated into ``g``.

    bfloat16 held in 16-bit integer views (see :mod:`cudeform._gpu.storage`) runs
    its GEMM and bias in float32 and is rounded once at the end.
    """
    view = is_view(input.dtype, dtype_name)
    output = xp.empty(g.output_shape, dtype=xp.float32 if view else input.dtype)
    weight_g = _grouped_weight(g, values(weight, dtype_name, xp))
    for start, stop in _chunks(g, input.dtype.itemsize + (4 if view else 0)):
        columns, _ = _im2col(g, input, offset, mask, start, stop,
                             dtype_name=dtype_name, xp=xp, launch=launch)
        # (groups, C_out/groups, n * P)
        result = xp.matmul(weight_g, values(columns, dtype_name, xp))
        result = result.reshape(g.out_channels, stop - start, g.out_h, g.out_w)
        output[start:stop] = result.transpose(1, 0, 2, 3)
    if bias is not None:
        output += values(bias, dtype_name, xp).reshape(1, -1, 1, 1)
    return narrow(output, input.dtype, dtype_name, xp)


def backward(grad_output, input, offset, weight, bias, mask, g, *, dtype_name, xp, launch):
    """Gradients ``(input, offset, weight, bias, mask)`` of ``deform_conv2d``.

    The input and weight gradients accumulate in the accumulation dtype (float32
    for 16-bit types) and are cast back at the end.
    """
    dtype = input.dtype
    accumulate = xp.dtype(ACCUMULATE_DTYPES[dtype_name])
    grad_input = xp.zeros(input.shape, dtype=accumulate)
    grad_offset = xp.empty(offset.shape, dtype=dtype)
    grad_mask = None if mask is None else xp.empty(mask.shape, dtype=dtype)
    weight_g = _grouped_weight(g, weight)
    grad_weight = xp.zeros(weight_g.shape, dtype=accumulate)
    plane = g.out_h * g.out_w
    out_per_group = g.out_channels // g.groups

    widen = accumulate != dtype  # 16-bit columns get a float32 copy for the weight GEMM
    view = is_view(dtype, dtype_name)  # bfloat16 bits: every GEMM in float32
    for start, stop in _chunks(g, dtype.itemsize + (accumulate.itemsize if widen else 0)):
        n = stop - start
        columns, bits = _im2col(g, input, offset, mask, start, stop,
                                dtype_name=dtype_name, xp=xp, launch=launch)
        grad_out_g = grad_output[start:stop].reshape(n, g.groups, out_per_group, plane)
        grad_out_g = xp.ascontiguousarray(grad_out_g.transpose(1, 2, 0, 3)).reshape(
            g.groups, out_per_group, n * plane)
        if view:
            grad_out_values = values(grad_out_g, dtype_name, xp)
            grad_weight += xp.matmul(grad_out_values,
                                     values(columns, dtype_name, xp).transpose(0, 2, 1))
            columns[...] = narrow(xp.matmul(values(weight_g, dtype_name, xp).transpose(0, 2, 1),
                                            grad_out_values), dtype, dtype_name, xp)
            grad_columns = columns
        elif widen:  # sum over n * P terms in float32, not float16
            grad_weight += xp.matmul(grad_out_g.astype(accumulate),
                                     columns.astype(accumulate).transpose(0, 2, 1))
            grad_columns = xp.matmul(weight_g.transpose(0, 2, 1), grad_out_g, out=columns)
        else:
            grad_weight += xp.matmul(grad_out_g, columns.transpose(0, 2, 1))
            grad_columns = xp.matmul(weight_g.transpose(0, 2, 1), grad_out_g, out=columns)
        shape = _shape_args(g, n)
        launch(DEFORM_COL2IM, dtype_name, bits, grad_columns.size,
               grad_columns=grad_columns, offset=offset[start:stop],
               mask=_slice(mask, start, stop), grad_input=grad_input[start:stop], **shape)
        launch(DEFORM_COL2IM_COORD, dtype_name, bits, n * g.offset_groups * g.taps * plane,
               grad_columns=grad_columns, input=input[start:stop], offset=offset[start:stop],
               mask=_slice(mask, start, stop), grad_offset=grad_offset[start:stop],
               grad_mask=_slice(grad_mask, start, stop), **shape)

    grad_bias = None
    if bias is not None:
        grad_bias = narrow(values(grad_output, dtype_name, xp).sum(axis=(0, 2, 3),
                                                                   dtype=accumulate),
                           dtype, dtype_name, xp)
    return (narrow(grad_input, dtype, dtype_name, xp), grad_offset,
            narrow(grad_weight.reshape(weight.shape), dtype, dtype_name, xp), grad_bias,
            grad_mask)
