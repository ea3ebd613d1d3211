"""Deformable convolution in vectorised NumPy.

The images of a call are processed in chunks, and the output pixels of a chunk in
blocks split over the cores (see :mod:`cudeform._cpu.conv_blocks` for the layouts).
One GEMM per weight group writes a block's outputs straight into the NCHW result,
so neither the full column matrix nor a transposed output is stored; when the
weight is the larger GEMM operand (:mod:`cudeform._cpu.columns`), the chunk's
columns are built first and the GEMM is split by output channels. The backward is
the transpose of each step: two GEMMs read the NCHW output gradient in place, and
the input gradient is scattered back onto the rows by
:func:`cudeform._cpu.scatter.sums_by_key`.
"""

from __future__ import annotations

import functools

import numpy

from cudeform._cpu import conv_blocks
from cudeform._cpu import parallel
from cudeform._cpu.bilinear import PAD_BEFORE, coordinate_gradients, padded_size
from cudeform._cpu.columns import ColumnOrder
from cudeform._cpu.scatter import sums_by_key


def grid_positions(g, ho, wo, dtype):
    """Regular-grid positions ``(y, x)``, each ``(..., taps)``, of the taps of output
    pixels ``(ho, wo)`` (arrays of one shape, possibly fractional); the offsets add to them.

    The only copy of the sampling formula on the NumPy path.
    """
    i = numpy.arange(g.taps) // g.kernel_w
    j = numpy.arange(g.taps) % g.kernel_w
    ho, wo = numpy.asarray(ho)[..., None], numpy.asarray(wo)[..., None]
    return ((ho * g.stride_h - g.pad_h + i * g.dilation_h).astype(dtype),
            (wo * g.stride_w - g.pad_w + j * g.dilation_w).astype(dtype))


def _plane_grid(g, dtype):
    """:func:`grid_positions` of every output pixel of a plane, each ``(P, taps)``."""
    return grid_positions(g, *numpy.divmod(numpy.arange(g.out_h * g.out_w), g.out_w), dtype)


def _forward_part(g, order, grid, chunk, gemm_weight, bias, output, part):
    """The outputs ``output (n, C_out, H_out, W_out)`` of the pixels ``part`` of a chunk."""
    block_columns = conv_blocks.BlockColumns(g, chunk.data, order)
    for block in conv_blocks.pixel_blocks(g, part, chunk.data.dtype.itemsize):
        sampling = conv_blocks.block_sampling(g, grid, block, chunk.offsets, chunk.modulation,
                                              derivatives=False)
        _, columns = block_columns(sampling)
        out = order.grouped(block.of(output))
        numpy.matmul(gemm_weight, columns.transpose(0, 2, 1), out=out)
        if bias is not None:
            out += bias


def _columns_part(g, order, grid, chunk, columns, part):
    """The GEMM columns ``columns (groups, n*P, K)`` of the pixels ``part`` of a chunk."""
    block_columns = conv_blocks.BlockColumns(g, chunk.data, order)
    for block in conv_blocks.pixel_blocks(g, part, chunk.data.dtype.itemsize):
        sampling = conv_blocks.block_sampling(g, grid, block, chunk.offsets, chunk.modulation,
                                              derivatives=False)
        block_columns(sampling, out=columns[:, block.pixels])


def _output_channels_part(g, gemm_weight, columns, bias, output, part):
    """The output channels ``part`` (of each group) of every image of a chunk."""
    plane = g.out_h * g.out_w
    for image in range(output.shape[0]):
        out = output[image].reshape(g.groups, -1, plane)[:, part]
        numpy.matmul(gemm_weight[:, part],
                     columns[:, image * plane:(image + 1) * plane].transpose(0, 2, 1), out=out)
        if bias is not None:
            out += bias[:, part]


def forward(input, offset, weight, bias, mask, g):
    """``deform_conv2d`` on C-contiguous NumPy arrays of one dtype, validated into ``g``."""
    output = numpy.empty(g.output_shape, dtype=input.dtype)
    order = ColumnOrder(g, weight)
    gemm_weight = order.weight()
    bias = None if bias is None else bias.reshape(g.groups, -1, 1)
    grid = _plane_grid(g, input.dtype)
    for start, stop in conv_blocks.image_chunks(g, input.dtype.itemsize, backward=False):
        chunk = conv_blocks.chunk_layouts(g, input, offset, mask, start, stop)
        pixels = chunk.offsets.shape[0]
        if order.tap_major:
            parallel.split(pixels, functools.partial(
                _forward_part, g, order, grid, chunk, gemm_weight, bias, output[start:stop]))
            continue
        # The weight is the larger operand: all the chunk's columns (smaller than the
        # weight), then the GEMM split by output channels.
        columns = numpy.empty((g.groups, pixels, gemm_weight.shape[2]), dtype=input.dtype)
        parallel.split(pixels, functools.partial(_columns_part, g, order, grid, chunk, columns))
        parallel.split(gemm_weight.shape[1], functools.partial(
            _output_channels_part, g, gemm_weight, columns, bias, output[start:stop]))
    return output


def _scatter(grad_rows, sampling, grad_columns):
    """Add each point's column gradient, times its corner weights, onto its corner rows.

    ``grad_columns`` has one row per point and a zero row after them. Points
    outside the map (zero weights, all on one padding row) are left out.
    """
    live = numpy.flatnonzero(sampling.corners.inside)
    rows, sums = sums_by_key(sampling.rows[live], grad_columns, live, sampling.weights[live])
    for q, step in enumerate(sampling.row_steps):
        grad_rows[rows + step] += sums[:, q]


def _point_gradients(values, grad_columns, sampling):
    """Gradients ``(pixels, taps, dg)`` of the sampling positions (dy, dx) and of the mask.

    ``values (points, 4, C/dg)`` are the corner values, ``grad_columns`` the
    points' column gradients.
    """
    corners = sampling.corners
    corner_grads = numpy.matmul(values, grad_columns[:, :, None]).reshape(
        corners.weight.shape)  # d loss / d (corner weight), per corner
    grad_y, grad_x = coordinate_gradients(corner_grads, corners)
    grad_m = numpy.einsum("...q,...q->...", corner_grads, corners.weight)
    if sampling.modulation is not None:
        grad_y *= sampling.modulation
        grad_x *= sampling.modulation
    return grad_y, grad_x, grad_m


def _backward_part(g, order, grid, chunk, gemm_weight, grad_output, grad_offsets,
                   grad_modulation, part):
    """Gradients of the pixels ``part`` of a chunk: the position and mask gradients
    are written into ``grad_offsets`` and ``grad_modulation`` (pixel-major); returns
    this part's input-row and weight gradients, summed by the caller."""
    block_columns = conv_blocks.BlockColumns(g, chunk.data, order)
    grad_rows = numpy.zeros_like(chunk.data)
    grad_weight = numpy.zeros_like(gemm_weight)
    block_grad_weight = numpy.empty_like(gemm_weight)
    grad_columns = numpy.empty((block_columns.columns.shape[0] + 1, chunk.data.shape[1]),
                               chunk.data.dtype)
    for block in conv_blocks.pixel_blocks(g, part, chunk.data.dtype.itemsize):
        sampling = conv_blocks.block_sampling(g, grid, block, chunk.offsets, chunk.modulation,
                                              derivatives=True)
        values, columns = block_columns(sampling)
        block_grad_output = order.grouped(block.of(grad_output))
        numpy.matmul(block_grad_output, columns, out=block_grad_weight)
        grad_weight += block_grad_weight
        points = sampling.rows.size
        order.point_gradients(block_grad_output, gemm_weight, grad_columns[:points])
        grad_columns[points] = 0
        grad_y, grad_x, grad_modulation[block.pixels] = _point_gradients(
            values, grad_columns[:points], sampling)
        grad_offsets[block.pixels, ..., 0] = grad_y
        grad_offsets[block.pixels, ..., 1] = grad_x
        _scatter(grad_rows, sampling, grad_columns[:points + 1])
    return grad_rows, grad_weight


def _phase_columns(g, order, grid, chunk, columns, values, part):
    """Columns and corner values of the pixels ``part`` of a chunk; returns their
    blocks and samplings."""
    block_columns = conv_blocks.BlockColumns(g, chunk.data, order)
    samplings = []
    for block in conv_blocks.pixel_blocks(g, part, chunk.data.dtype.itemsize):
        sampling = conv_blocks.block_sampling(g, grid, block, chunk.offsets, chunk.modulation,
                                              derivatives=True)
        block_columns(sampling, out=columns[:, block.pixels], values=values[block.points(g)])
        samplings.append((block, sampling))
    return part.start, samplings


def _phase_grad_weight(g, grad_output, columns, grad_gemm_weight, first_chunk, part):
    """The weight gradient's output channels ``part`` (of each group): written by the
    first image of the first chunk, added in by the others."""
    plane = g.out_h * g.out_w
    for image in range(grad_output.shape[0]):
        grad = grad_output[image].reshape(g.groups, -1, plane)[:, part]
        image_columns = columns[:, image * plane:(image + 1) * plane]
        if first_chunk and image == 0:
            numpy.matmul(grad, image_columns, out=grad_gemm_weight[:, part])
        else:
            grad_gemm_weight[:, part] += numpy.matmul(grad, image_columns)


def _phase_grad_columns(g, grad_output, gemm_weight, grad_columns, part):
    """Columns ``part`` (of K) of the column gradients of every pixel of a chunk."""
    plane = g.out_h * g.out_w
    for image in range(grad_output.shape[0]):
        grad = grad_output[image].reshape(g.groups, -1, plane).transpose(0, 2, 1)
        numpy.matmul(grad, gemm_weight[:, :, part],
                     out=grad_columns[:, image * plane:(image + 1) * plane, part])


def _phase_points(g, order, chunk, samplings, values, grad_columns, grad_offsets,
                  grad_modulation, part):
    """Position, mask and input gradients of the pixels ``part``, as in
    :func:`_backward_part`; returns the part's input-row gradients."""
    grad_rows = numpy.zeros_like(chunk.data)
    points = g.taps * g.offset_groups * conv_blocks.block_pixels(g, chunk.data.dtype.itemsize)
    point_grads = numpy.empty((points + 1, chunk.data.shape[1]), chunk.data.dtype)
    for block, sampling in samplings[part.start]:
        count = sampling.rows.size
        order.points(grad_columns[:, block.pixels], point_grads[:count])
        point_grads[count] = 0
        grad_y, grad_x, grad_modulation[block.pixels] = _point_gradients(
            values[block.points(g)], point_grads[:count], sampling)
        grad_offsets[block.pixels, ..., 0] = grad_y
        grad_offsets[block.pixels, ..., 1] = grad_x
        _scatter(grad_rows, sampling, point_grads[:count + 1])
    return grad_rows


def _backward_in_phases(g, order, grid, chunk, gemm_weight, grad_output, grad_gemm_weight,
                        first_chunk, grad_offsets, grad_modulation):
    """The backward of a chunk when the weight is the larger GEMM operand: the
    chunk's columns and corner values (smaller than the weight) first, then the
    weight gradient split by output channels and the column gradients by columns,
    so that each worker reads and writes only its part of the weight; then the
    points' gradients by pixels. Returns the workers' input-row gradients."""
    pixels, dtype = chunk.offsets.shape[0], chunk.data.dtype
    columns = numpy.empty((g.groups, pixels, gemm_weight.shape[2]), dtype=dtype)
    values = numpy.empty((pixels * g.taps * g.offset_groups, 4, chunk.data.shape[1]), dtype)
    samplings = dict(parallel.split(pixels, functools.partial(
        _phase_columns, g, order, grid, chunk, columns, values)))
    parallel.split(gemm_weight.shape[1], functools.partial(
        _phase_grad_weight, g, grad_output, columns, grad_gemm_weight, first_chunk))
    grad_columns = columns  # the columns are not needed any more
    parallel.split(gemm_weight.shape[2], functools.partial(
        _phase_grad_columns, g, grad_output, gemm_weight, grad_columns))
    return parallel.split(pixels, functools.partial(
        _phase_points, g, order, chunk, samplings, values, grad_columns, grad_offsets,
        grad_modulation))


def backward(grad_output, input, offset, weight, bias, mask, g):
    """Gradients ``(input, offset, weight, bias, mask)`` of ``deform_conv2d``."""
    dtype = input.dtype
    height, width = g.height, g.width
    grad_input = numpy.empty(input.shape, dtype=dtype)
    grad_offset = numpy.empty(offset.shape, dtype=dtype)
    grad_mask = None if mask is None else numpy.empty(mask.shape, dtype=dtype)
    order = ColumnOrder(g, weight)
    gemm_weight = order.weight()
    grad_gemm_weight = numpy.zeros_like(gemm_weight)
    grid = _plane_grid(g, dtype)

    for start, stop in conv_blocks.image_chunks(g, dtype.itemsize, backward=True):
        n = stop - start
        chunk = conv_blocks.chunk_layouts(g, input, offset, mask, start, stop)
        grad_offsets = numpy.empty_like(chunk.offsets)
        grad_modulation = numpy.empty(chunk.offsets.shape[:-1], dtype=dtype)
        if order.tap_major:
            # Each worker sums its own input and weight gradients: no shared writes.
            partial_grads = parallel.split(chunk.offsets.shape[0], functools.partial(
                _backward_part, g, order, grid, chunk, gemm_weight, grad_output[start:stop],
                grad_offsets, grad_modulation))
            for _, weight_part in partial_grads:
                grad_gemm_weight += weight_part
            partial_rows = [rows for rows, _ in partial_grads]
        else:
            partial_rows = _backward_in_phases(
                g, order, grid, chunk, gemm_weight, grad_output[start:stop], grad_gemm_weight,
                start == 0, grad_offsets, grad_modulation)
        grad_rows = partial_rows[0]
        for rows in partial_rows[1:]:
            grad_rows += rows

        grad_padded = grad_rows.reshape(n, padded_size(height), padded_size(width), -1)
        grad_input[start:stop] = grad_padded[
            :, PAD_BEFORE:PAD_BEFORE + height, PAD_BEFORE:PAD_BEFORE + width].transpose(0, 3, 1, 2)
        grad_offset[start:stop] = conv_blocks.from_pixel_major(g, grad_offsets, offset.shape[1])
        if grad_mask is not None:
            grad_mask[start:stop] = conv_blocks.from_pixel_major(g, grad_modulation, mask.shape[1])

    grad_weight = order.natural_weight(grad_gemm_weight)
    grad_bias = None if bias is None else grad_output.sum(axis=(0, 2, 3)).astype(dtype)
    return grad_input, grad_offset, grad_weight, grad_bias, grad_mask
