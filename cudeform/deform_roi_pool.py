"""Public deformable RoI pooling API (Dai et al. 2017, section 2.2; mmcv semantics)."""

from __future__ import annotations

from typing import NamedTuple, Optional

from cudeform import _arrays
from cudeform._cpu import deform_roi_pool as cpu
from cudeform._gpu import deform_roi_pool as gpu
from cudeform._shapes import deform_roi_pool_geometry
from cudeform._typing import Array, IntPair


class DeformRoIPoolGrads(NamedTuple):
    """Gradients of :func:`deform_roi_pool`; ``offset`` is None when the forward had no
    offset."""

    input: Array
    offset: Optional[Array]


def _prepare(arrays, options):
    def geometry(shapes):
        return deform_roi_pool_geometry(shapes["input"], shapes["rois"], shapes["offset"], **options)

    return _arrays.prepare(arrays, ("offset",), geometry)


def deform_roi_pool(input: Array, rois: Array, offset: Optional[Array] = None, *,
                    output_size: IntPair, spatial_scale: float = 1.0, sampling_ratio: int = 0,
                    gamma: float = 0.1) -> Array:
    r"""Deformable RoI pooling: RoIAlign average pooling with a learned shift per bin.

    Each RoI ``(batch_index, x1, y1, x2, y2)`` is mapped to the feature map with
    ``spatial_scale`` and a half-pixel shift (``x * spatial_scale - 0.5``), cut
    into ``ph x pw`` bins, and bin ``(i, j)`` is moved by
    ``(gamma * roi_w * offset[r, 0, i, j], gamma * roi_h * offset[r, 1, i, j])``
    before its grid of samples is averaged (Dai et al., https://arxiv.org/abs/1703.06211).
    With ``offset=None`` this is RoIAlign with ``aligned=True`` and average pooling.

    Args:
        input (ndarray[N, C, H, W]): feature map.
        rois (ndarray[R, 5]): rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates.
        offset (ndarray[R, 2, ph, pw], optional): normalised bin offsets, channel 0
            dx and channel 1 dy.
        output_size (int or (int, int)): ``(ph, pw)``.
        spatial_scale (float): image-to-feature-map scale, e.g. 1/16.
        sampling_ratio (int): samples per bin side; 0 picks ``ceil(roi_size / bins)``.
        gamma (float): offset scale, 0.1 in the paper.

    Returns:
        ndarray[R, C, ph, pw] of the input's type and dtype.

    Notes:
        A sample outside ``[-1, H] x [-1, W]`` counts as 0. A RoI whose batch index
        is not in ``[0, N)``, or whose coordinates are NaN, pools to zeros (and gets
        zero gradients); it never reads or writes out of bounds. A degenerate RoI
        (``x1 == x2``) with ``sampling_ratio=0`` has no samples and pools to 0.
        Infinite coordinates count as NaN. A bin visits only the samples of its
        grid that can land in ``[-1, H] x [-1, W]`` (the others add 0), so a RoI far
        larger than the map costs about the map's size, however large its grid.
        NumPy arrays run on the CPU (float32, float64), CuPy arrays on their GPU
        (also float16 and bfloat16, accumulated in float32).

    Raises:
        TypeError: an array argument that is not an array (None where one is
            required, a list), an unsupported dtype, mixed dtypes or array kinds, or an
            option of the wrong kind (a string, None, a bool or a float where an int
            goes); the message names the argument.
        ValueError: a shape or parameter that breaks the contract, named in the message.

    Example:
        >>> import numpy as np, cudeform
        >>> x = np.tile(np.arange(8, dtype=np.float32), (1, 1, 8, 1))  # x[..., i, j] = j
        >>> rois = np.array([[0, 0, 0, 4, 4]], np.float32)
        >>> cudeform.deform_roi_pool(x, rois, output_size=2)[0, 0]  # RoIAlign: mean column
        array([[0.5, 2.5],
               [0.5, 2.5]], dtype=float32)
        >>> offset = np.zeros((1, 2, 2, 2), np.float32)
        >>> offset[:, 0] = 0.5  # dx: half a RoI width, times gamma
        >>> cudeform.deform_roi_pool(x, rois, offset, output_size=2, gamma=0.25)[0, 0]
        array([[1., 3.],
               [1., 3.]], dtype=float32)
    """
    options = dict(output_size=output_size, spatial_scale=spatial_scale,
                   sampling_ratio=sampling_ratio, gamma=gamma)
    xp, dtype, g, a = _prepare(dict(input=input, rois=rois, offset=offset), options)
    args = (a["input"], a["rois"], a["offset"], g)
    return _arrays.call(xp, dtype, cpu.forward, gpu.forward, args)


def deform_roi_pool_backward(grad_output: Array, input: Array, rois: Array,
                             offset: Optional[Array] = None, *, output_size: IntPair,
                             spatial_scale: float = 1.0, sampling_ratio: int = 0,
                             gamma: float = 0.1) -> DeformRoIPoolGrads:
    """Gradients of :func:`deform_roi_pool` with respect to ``input`` and ``offset``.

    Args:
        grad_output (ndarray[R, C, ph, pw]): gradient of the loss with respect to
            the output.
        input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma: the
            forward's arguments.

    Returns:
        DeformRoIPoolGrads: named tuple ``(input, offset)``; ``offset`` is None when
        the forward had none. ``rois`` gets no gradient.

    Notes:
        The gradients are the derivatives of the forward expression: a sample
        coordinate clamped by the RoIAlign border rule has zero gradient. On the
        GPU the input gradient is accumulated with float atomics (bit-identical from
        run to run in deterministic mode, :func:`cudeform.set_deterministic`). First
        order only.

    Example:
        >>> import numpy as np, cudeform
        >>> x = np.tile(np.arange(8, dtype=np.float32), (1, 1, 8, 1))  # x[..., i, j] = j
        >>> rois = np.array([[0, 0, 0, 4, 4]], np.float32)
        >>> offset = np.zeros((1, 2, 2, 2), np.float32)
        >>> offset[:, 0] = 0.5  # dx: bins half a RoI width (times gamma) right, inside the map
        >>> g = cudeform.deform_roi_pool_backward(np.ones((1, 1, 2, 2), np.float32), x, rois,
        ...                                       offset, output_size=2, gamma=0.25)
        >>> g.offset[0, 0]  # d/d(dx): gamma * roi_w * slope = 0.25 * 4 * 1
        array([[1., 1.],
               [1., 1.]], dtype=float32)
        >>> float(g.input.sum())  # each of the 4 bins spreads a weight of 1
        4.0
    """
    options = dict(output_size=output_size, spatial_scale=spatial_scale,
                   sampling_ratio=sampling_ratio, gamma=gamma)
    xp, dtype, g, a = _prepare(
        dict(input=input, rois=rois, offset=offset, grad_output=grad_output), options)
    args = (a["grad_output"], a["input"], a["rois"], a["offset"], g)
    return DeformRoIPoolGrads(*_arrays.call(xp, dtype, cpu.backward, gpu.backward, args))
