"""Public deformable position-sensitive RoI pooling API (R-FCN head; MXNet semantics)."""

from __future__ import annotations

from typing import NamedTuple, Optional

from cudeform import _arrays
from cudeform._cpu import deform_psroi_pool as cpu
from cudeform._gpu import deform_psroi_pool as gpu
from cudeform._shapes import deform_psroi_pool_geometry
from cudeform._typing import Array


class DeformPSRoIPoolGrads(NamedTuple):
    """Gradients of :func:`deform_psroi_pool`; ``offset`` is None when the forward had no
    offset."""

    input: Array
    offset: Optional[Array]


def _prepare(arrays, options):
    def geometry(shapes):
        return deform_psroi_pool_geometry(shapes["input"], shapes["rois"], shapes["offset"], **options)

    return _arrays.prepare(arrays, ("offset",), geometry)


def deform_psroi_pool(input: Array, rois: Array, offset: Optional[Array] = None, *,
                      output_dim: int, group_size: int, pooled_size: int,
                      part_size: Optional[int] = None, sample_per_part: int = 4,
                      spatial_scale: float = 1.0, trans_std: float = 0.1) -> Array:
    r"""Deformable position-sensitive RoI pooling, the R-FCN head of Dai et al. 2017.

    Output bin ``(ph, pw)`` of channel ``ctop`` averages ``sample_per_part**2``
    bilinear samples of input channel ``(ctop*group_size + gh)*group_size + gw``
    (``gh, gw`` the bin's position-sensitive group), inside the bin moved by
    ``trans_std * (offset[r, 2*cls], offset[r, 2*cls+1])`` times the RoI size,
    where ``cls = ctop // (output_dim // num_classes)``
    (https://arxiv.org/abs/1703.06211). ``offset=None`` is MXNet's ``no_trans``.

    Args:
        input (ndarray[N, output_dim*group_size**2, H, W]): score maps.
        rois (ndarray[R, 5]): rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates.
        offset (ndarray[R, 2*num_classes, part_size, part_size], optional): normalised
            offsets, channel ``2*cls`` dx and ``2*cls+1`` dy.
        output_dim (int): output channels.
        group_size (int): position-sensitive groups per side.
        pooled_size (int): output bins per side.
        part_size (int, optional): offset grid per side; defaults to ``pooled_size``.
        sample_per_part (int): samples per bin side.
        spatial_scale (float): image-to-feature-map scale, e.g. 1/16.
        trans_std (float): offset scale, 0.1 in the paper.

    Returns:
        ndarray[R, output_dim, pooled_size, pooled_size] of the input's type and dtype.

    Notes:
        RoI corners are rounded (halves away from zero) before scaling. Samples
        outside ``[-0.5, W-0.5] x [-0.5, H-0.5]`` are skipped and the mean is over
        the remaining ones (0 if none). A RoI whose batch index is not in
        ``[0, N)``, or whose coordinates are NaN, pools to zeros (and gets zero
        gradients); it never reads or writes out of bounds. NumPy arrays run on
        the CPU (float32, float64), CuPy arrays on their GPU (also float16 and
        bfloat16, accumulated in float32).

    Raises:
        TypeError: an array argument that is not an array (None where one is
            required, a list), an unsupported dtype, mixed dtypes or array kinds, or an
            option of the wrong kind (a string, None, a bool or a float where an int
            goes); the message names the argument.
        ValueError: a shape or parameter that breaks the contract, named in the message.

    Example:
        >>> import numpy as np, cudeform
        >>> x = np.ones((1, 4, 6, 6), np.float32) * np.arange(4, dtype=np.float32)[:, None, None]
        >>> rois = np.array([[0, 0, 0, 5, 5]], np.float32)
        >>> # each bin reads its own score map: bin (i, j) reads channel i*2 + j
        >>> cudeform.deform_psroi_pool(x, rois, output_dim=1, group_size=2, pooled_size=2)[0, 0]
        array([[0., 1.],
               [2., 3.]], dtype=float32)
    """
    options = dict(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                   part_size=part_size, sample_per_part=sample_per_part,
                   spatial_scale=spatial_scale, trans_std=trans_std)
    xp, dtype, g, a = _prepare(dict(input=input, rois=rois, offset=offset), options)
    args = (a["input"], a["rois"], a["offset"], g)
    return _arrays.call(xp, dtype, cpu.forward, gpu.forward, args)


def deform_psroi_pool_backward(grad_output: Array, input: Array, rois: Array,
                               offset: Optional[Array] = None, *, output_dim: int,
                               group_size: int, pooled_size: int,
                               part_size: Optional[int] = None, sample_per_part: int = 4,
                               spatial_scale: float = 1.0,
                               trans_std: float = 0.1) -> DeformPSRoIPoolGrads:
    """Gradients of :func:`deform_psroi_pool` with respect to ``input`` and ``offset``.

    Args:
        grad_output (ndarray[R, output_dim, pooled_size, pooled_size]): gradient of
            the loss with respect to the output.
        input, rois, offset, ...: the forward's arguments.

    Returns:
        DeformPSRoIPoolGrads: named tuple ``(input, offset)``; ``offset`` is None
        when the forward had none. ``rois`` gets no gradient.

    Notes:
        The offset gradient is the derivative of the forward expression through
        ``tx, ty``; a clamped sample uses the bilinear slope at its clamped
        position (0 where floor == ceil). On the GPU the input gradient is
        accumulated with float atomics (bit-identical from run to run in
        deterministic mode, :func:`cudeform.set_deterministic`). First order only.

    Example:
        >>> import numpy as np, cudeform
        >>> x = np.ones((1, 4, 6, 6), np.float32)
        >>> rois = np.array([[0, 0, 0, 5, 5]], np.float32)
        >>> g = cudeform.deform_psroi_pool_backward(np.ones((1, 1, 2, 2), np.float32), x, rois,
        ...                                         output_dim=1, group_size=2, pooled_size=2)
        >>> g.input.sum(axis=(0, 2, 3))  # each bin's samples weigh 1 in all, on its channel
        array([1., 1., 1., 1.], dtype=float32)
        >>> g.offset is None
        True
    """
    options = dict(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                   part_size=part_size, sample_per_part=sample_per_part,
                   spatial_scale=spatial_scale, trans_std=trans_std)
    xp, dtype, g, a = _prepare(
        dict(input=input, rois=rois, offset=offset, grad_output=grad_output), options)
    args = (a["grad_output"], a["input"], a["rois"], a["offset"], g)
    return DeformPSRoIPoolGrads(*_arrays.call(xp, dtype, cpu.backward, gpu.backward, args))
