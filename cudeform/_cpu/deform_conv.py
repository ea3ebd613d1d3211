"""Deformable convolution in vectorised NumPy.

Layout: the input is stored channels-last with zero borders and viewed as rows
of ``C_in / dg`` channels, one row per (image, padded pixel, offset group).
Every sampling point then gathers four contiguous channel vectors, and the
column matrix comes out as ``(n * P, taps * C_in)`` rows, so one GEMM per
weight group against the weight gives the output. The input gradient is the
transpose of that gather, reduced with a sort and ``numpy.add.reduceat``.
"""

from __future__ import annotations

import numpy

from cudeform._cpu.bilinear import PAD_BEFORE, padded_size, zero_padded_corners
from cudeform._workspace import batch_chunks

# Column-sized buffers alive at once, so that the workspace limit bounds the
# NumPy path's memory too.
_FORWARD_BUFFERS = 2
_BACKWARD_BUFFERS = 6
# Bytes of gathered corner values processed at a time.
_BLOCK_BYTES = 4 * 2**20


def _padded_rows(images, offset_groups):
    """``images (n, C, H, W)`` as zero-bordered channel-last rows ``(n*Hp*Wp*dg, C/dg)``."""
    n, channels, height, width = images.shape
    padded = numpy.zeros((n, padded_size(height), padded_size(width), channels),
                         dtype=images.dtype)
    padded[:, PAD_BEFORE:PAD_BEFORE + height, PAD_BEFORE:PAD_BEFORE + width] = (
        images.transpose(0, 2, 3, 1))
    return padded.reshape(-1, channels // offset_groups)


def _sampling(g, offset, mask):
    """Corners, row indices and mask of every (image, pixel, tap, offset group)."""
    n = offset.shape[0]
    taps, dg, plane = g.taps, g.offset_groups, g.out_h * g.out_w
    # (n, dg, taps, 2, P) -> dy, dx as (n, P, taps, dg)
    pairs = offset.reshape(n, dg, taps, 2, plane).transpose(3, 0, 4, 2, 1)
    dy, dx = pairs[0], pairs[1]
    # Regular grid: the only copy of the sampling formula on the NumPy path.
    ho = numpy.arange(plane) // g.out_w
    wo = numpy.arange(plane) % g.out_w
    i = numpy.arange(taps) // g.kernel_w
    j = numpy.arange(taps) % g.kernel_w
    base_y = (ho[:, None] * g.stride_h - g.pad_h + i[None, :] * g.dilation_h).astype(offset.dtype)
    base_x = (wo[:, None] * g.stride_w - g.pad_w + j[None, :] * g.dilation_w).astype(offset.dtype)
    y = base_y[None, :, :, None] + dy
    x = base_x[None, :, :, None] + dx
    corners = zero_padded_corners(y, x, g.height, g.width)

    padded_plane = padded_size(g.height) * padded_size(g.width)
    image = numpy.arange(n, dtype=numpy.int64).reshape(n, 1, 1, 1)
    group = numpy.arange(dg, dtype=numpy.int64).reshape(1, 1, 1, dg)
    rows = (image * padded_plane + corners.index) * dg + group
    row_steps = tuple(step * dg for step in corners.steps)
    modulation = None
    if mask is not None:
        modulation = mask.reshape(n, dg, taps, plane).transpose(0, 3, 2, 1)
    return corners, rows, row_steps, modulation


def _neighbourhoods(data, row_steps):
    """Each row's 2x2 neighbourhood: ``out[r, q] = data[r + row_steps[q]]``.

    One gather from this array fetches all four corners of a point as one
    contiguous block, which is much faster than four gathers.
    """
    count = data.shape[0] - row_steps[-1]
    out = numpy.empty((count, 4, data.shape[1]), dtype=data.dtype)
    for q, step in enumerate(row_steps):
        out[:, q] = data[step:step + count]
    return out


def _point_blocks(count, neighbourhoods):
    """Slices of points whose gathered corners take about ``_BLOCK_BYTES``.

    Blocks keep the gathered corner values in cache instead of materialising
    four column-sized buffers.
    """
    step = max(1, _BLOCK_BYTES // neighbourhoods[0].nbytes)
    return (slice(start, min(count, start + step)) for start in range(0, count, step))


def _gather_corners(neighbourhoods, rows):
    """Corner values ``(points, 4, C/dg)`` of the points at ``rows`` (1-D)."""
    # Rows are in bounds by construction (see bilinear.py); mode="clip" avoids
    # the buffered copy that take() makes with out= in its default mode.
    return numpy.take(neighbourhoods, rows, axis=0, mode="clip")


def _point_weights(weights, modulation):
    """Per-point corner weights ``(points, 1, 4)``, modulated by the mask if any."""
    if modulation is not None:
        weights = weights * modulation
    return numpy.ascontiguousarray(weights.reshape(4, -1).T)[:, None, :]


def _columns(neighbourhoods, corners, rows, modulation):
    """Sampled (and modulated) values ``(n, P, taps, dg, C/dg)``."""
    flat = rows.reshape(-1)
    weights = _point_weights(corners.weight, modulation)
    columns = numpy.empty((flat.size, 1, neighbourhoods.shape[2]), dtype=neighbourhoods.dtype)
    for block in _point_blocks(flat.size, neighbourhoods):
        corner_values = _gather_corners(neighbourhoods, flat[block])
        numpy.matmul(weights[block], corner_values, out=columns[block])
    return columns.reshape(rows.shape + neighbourhoods.shape[2:])


def _grouped(g, columns):
    """Columns as ``(groups, n*P, taps * C_in/groups)`` for one GEMM per weight group."""
    rows = columns.shape[0] * columns.shape[1]
    split = columns.reshape(rows, g.taps, g.groups, g.in_channels // g.groups)
    return numpy.ascontiguousarray(split.transpose(2, 0, 1, 3)).reshape(g.groups, rows, -1)


def _ungrouped(g, grouped, n):
    """Inverse of :func:`_grouped`, back to ``(n, P, taps, dg, C/dg)``."""
    split = grouped.reshape(g.groups, -1, g.taps, g.in_channels // g.groups)
    columns = numpy.ascontiguousarray(split.transpose(1, 2, 0, 3))
    return columns.reshape(n, g.out_h * g.out_w, g.taps, g.offset_groups, -1)


def _gemm_weight(g, weight):
    """Weight as ``(groups, taps * C_in/groups, C_out/groups)``, matching :func:`_grouped`."""
    per_group = weight.reshape(g.groups, g.out_channels // g.groups,
                               g.in_channels // g.groups, g.taps)
    return numpy.ascontiguousarray(per_group.transpose(0, 3, 2, 1)).reshape(
        g.groups, g.taps * (g.in_channels // g.groups), -1)


def _column_bytes(g, itemsize):
    return g.in_channels * g.taps * g.out_h * g.out_w * itemsize


def forward(input, offset, weight, bias, mask, g):
    """``deform_conv2d`` on C-contiguous NumPy arrays of one dtype, validated into ``g``."""
    output = numpy.empty(g.output_shape, dtype=input.dtype)
    weight_gemm = _gemm_weight(g, weight)
    chunk_bytes = _FORWARD_BUFFERS * _column_bytes(g, input.dtype.itemsize)
    for start, stop in batch_chunks(g.batch, chunk_bytes):
        n = stop - start
        data = _padded_rows(input[start:stop], g.offset_groups)
        chunk_mask = None if mask is None else mask[start:stop]
        corners, rows, row_steps, modulation = _sampling(g, offset[start:stop], chunk_mask)
        neighbourhoods = _neighbourhoods(data, row_steps)
        columns = _grouped(g, _columns(neighbourhoods, corners, rows, modulation))
        result = numpy.matmul(columns, weight_gemm)  # (groups, n*P, C_out/groups)
        result = result.reshape(g.groups, n, g.out_h * g.out_w, -1).transpose(1, 0, 3, 2)
        output[start:stop] = result.reshape(n, g.out_channels, g.out_h, g.out_w)
    if bias is not None:
        output += bias.reshape(1, -1, 1, 1)
    return output


def _scatter_rows(grad_rows, grad_columns, corners, rows, row_steps, modulation):
    """Add ``grad_columns`` into the padded input rows through the bilinear weights.

    All four corners of a point are shifts of its first corner, so one sort of
    the first-corner rows groups every corner's duplicates.
    """
    flat_rows = rows.reshape(-1)
    order = numpy.argsort(flat_rows, kind="stable")
    sorted_rows = flat_rows[order]
    starts = numpy.flatnonzero(numpy.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    unique_rows = sorted_rows[starts]
    sorted_grad = grad_columns.reshape(flat_rows.size, -1)[order]
    weights = corners.weight if modulation is None else corners.weight * modulation
    for q, step in enumerate(row_steps):
        contributions = sorted_grad * weights[q].reshape(-1)[order][:, None]
        grad_rows[unique_rows + step] += numpy.add.reduceat(contributions, starts, axis=0)


def _coordinate_grads(neighbourhoods, grad_columns, corners, rows, modulation):
    """Gradients of the sampling positions (dy, dx) and of the mask."""
    flat = rows.reshape(-1)
    grad_flat = grad_columns.reshape(flat.size, -1, 1)
    # Per point and corner: sum over the group's channels of grad * corner value.
    dots = numpy.empty((flat.size, 4, 1), dtype=neighbourhoods.dtype)
    for block in _point_blocks(flat.size, neighbourhoods):
        corner_values = _gather_corners(neighbourhoods, flat[block])
        numpy.matmul(corner_values, grad_flat[block], out=dots[block])
    dots = dots.reshape(-1, 4).T.reshape((4,) + rows.shape)
    grad_y = numpy.einsum("q...,q...->...", dots, corners.weight_dy)
    grad_x = numpy.einsum("q...,q...->...", dots, corners.weight_dx)
    grad_m = numpy.einsum("q...,q...->...", dots, corners.weight)
    if modulation is not None:
        grad_y *= modulation
        grad_x *= modulation
    return grad_y, grad_x, grad_m


def backward(grad_output, input, offset, weight, bias, mask, g):
    """Gradients ``(input, offset, weight, bias, mask)`` of ``deform_conv2d``."""
    dtype = input.dtype
    height, width, dg = g.height, g.width, g.offset_groups
    taps, plane = g.taps, g.out_h * g.out_w
    grad_input = numpy.empty(input.shape, dtype=dtype)
    grad_offset = numpy.empty(offset.shape, dtype=dtype)
    grad_mask = None if mask is None else numpy.empty(mask.shape, dtype=dtype)
    weight_gemm = _gemm_weight(g, weight)
    grad_weight_gemm = numpy.zeros_like(weight_gemm)
    chunk_bytes = _BACKWARD_BUFFERS * _column_bytes(g, dtype.itemsize)

    for start, stop in batch_chunks(g.batch, chunk_bytes):
        n = stop - start
        data = _padded_rows(input[start:stop], dg)
        chunk_mask = None if mask is None else mask[start:stop]
        corners, rows, row_steps, modulation = _sampling(g, offset[start:stop], chunk_mask)
        neighbourhoods = _neighbourhoods(data, row_steps)
        columns = _grouped(g, _columns(neighbourhoods, corners, rows, modulation))
        grad_out = grad_output[start:stop].reshape(n, g.groups, -1, plane).transpose(1, 0, 3, 2)
        grad_out = numpy.ascontiguousarray(grad_out).reshape(g.groups, n * plane, -1)
        grad_weight_gemm += numpy.matmul(columns.transpose(0, 2, 1), grad_out)
        grad_columns = _ungrouped(g, numpy.matmul(grad_out, weight_gemm.transpose(0, 2, 1)), n)

        grad_rows = numpy.zeros_like(data)
        _scatter_rows(grad_rows, grad_columns, corners, rows, row_steps, modulation)
        grad_padded = grad_rows.reshape(n, padded_size(height), padded_size(width), -1)
        grad_input[start:stop] = grad_padded[
            :, PAD_BEFORE:PAD_BEFORE + height, PAD_BEFORE:PAD_BEFORE + width].transpose(0, 3, 1, 2)

        grad_y, grad_x, grad_m = _coordinate_grads(neighbourhoods, grad_columns, corners,
                                                   rows, modulation)
        # (n, P, taps, dg) -> (n, dg, taps, 2, P)
        grad_pairs = numpy.stack([grad_y, grad_x]).transpose(1, 4, 3, 0, 2)
        grad_offset[start:stop] = grad_pairs.reshape(n, 2 * dg * taps, g.out_h, g.out_w)
        if grad_mask is not None:
            grad_mask[start:stop] = grad_m.transpose(0, 3, 2, 1).reshape(
                n, dg * taps, g.out_h, g.out_w)

    grad_weight = grad_weight_gemm.reshape(
        g.groups, taps, g.in_channels // g.groups, -1).transpose(0, 3, 2, 1)
    grad_weight = numpy.ascontiguousarray(grad_weight).reshape(weight.shape)
    grad_bias = None if bias is None else grad_output.sum(axis=(0, 2, 3)).astype(dtype)
    return grad_input, grad_offset, grad_weight, grad_bias, grad_mask
