"""Public deformable convolution API (DCNv1, and DCNv2 with a mask)."""

from __future__ import annotations

from typing import NamedTuple, Optional

from cudeform import _arrays
from cudeform._cpu import deform_conv as cpu
from cudeform._gpu import deform_conv as gpu
from cudeform._shapes import deform_conv2d_geometry
from cudeform._typing import Array, IntPair


class DeformConv2dGrads(NamedTuple):
    """Gradients of :func:`deform_conv2d`.

    ``bias`` is None when the forward had no bias, ``mask`` None when it had no mask."""

    input: Array
    offset: Array
    weight: Array
    bias: Optional[Array]
    mask: Optional[Array]


def _prepare(arrays, stride, padding, dilation):
    def geometry(shapes):
        return deform_conv2d_geometry(shapes["input"], shapes["offset"], shapes["weight"],
                                      shapes["bias"], shapes["mask"], stride=stride,
                                      padding=padding, dilation=dilation)

    return _arrays.prepare(arrays, ("bias", "mask"), geometry)


def deform_conv2d(input: Array, offset: Array, weight: Array, bias: Optional[Array] = None, *,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                  mask: Optional[Array] = None) -> Array:
    r"""Deformable 2-D convolution (DCNv1; DCNv2 when ``mask`` is given).

    .. math::
        y(p) = \sum_k w_k \cdot m_k(p) \cdot x(p + p_k + \Delta p_k(p)) + b

    where :math:`x(\cdot)` is sampled bilinearly, 0 outside the map (Dai et al.,
    https://arxiv.org/abs/1703.06211; Zhu et al., https://arxiv.org/abs/1811.11168).

    Args:
        input (ndarray[N, C_in, H, W]): input feature map.
        offset (ndarray[N, 2*dg*kh*kw, H_out, W_out]): sampling offsets; for
            offset group ``g`` and tap ``k = i*kw + j`` channel ``g*2*kh*kw + 2*k``
            holds dy and the next one dx (torchvision/mmcv/ONNX layout).
        weight (ndarray[C_out, C_in/groups, kh, kw]): filters; ``groups`` is inferred.
        bias (ndarray[C_out], optional): added to every output pixel.
        stride, padding, dilation (int or (int, int)): as in a plain convolution.
        mask (ndarray[N, dg*kh*kw, H_out, W_out], optional): DCNv2 modulation.

    Returns:
        ndarray[N, C_out, H_out, W_out] of the input's type (NumPy or CuPy) and dtype.

    Notes:
        NumPy arrays run on the CPU (float32, float64); CuPy arrays run on their
        GPU (float16, bfloat16, float32, float64; 16-bit types accumulate in float32).
        The batch is processed in chunks whose column buffer stays under
        :func:`cudeform.workspace_limit`, so any batch size works.

    Raises:
        TypeError: an array argument that is not an array (None where one is
            required, a list), an unsupported dtype, mixed dtypes or array kinds, or an
            option of the wrong kind (a string, None, a bool or a float where an int
            goes); the message names the argument.
        ValueError: a shape or value that breaks the contract; the message names
            the argument, what was expected and what was given.

    Example:
        >>> import numpy as np, cudeform
        >>> x = np.ones((1, 1, 4, 4), np.float32)
        >>> w = np.ones((1, 1, 3, 3), np.float32)
        >>> offset = np.zeros((1, 18, 2, 2), np.float32)
        >>> cudeform.deform_conv2d(x, offset, w)[0, 0]
        array([[9., 9.],
               [9., 9.]], dtype=float32)
    """
    arrays = dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    xp, dtype, g, a = _prepare(arrays, stride, padding, dilation)
    args = (a["input"], a["offset"], a["weight"], a["bias"], a["mask"], g)
    return _arrays.call(xp, dtype, cpu.forward, gpu.forward, args)


def deform_conv2d_backward(grad_output: Array, input: Array, offset: Array, weight: Array,
                           bias: Optional[Array] = None, *, stride: IntPair = 1,
                           padding: IntPair = 0, dilation: IntPair = 1,
                           mask: Optional[Array] = None) -> DeformConv2dGrads:
    """Gradients of :func:`deform_conv2d` with respect to every input.

    Args:
        grad_output (ndarray[N, C_out, H_out, W_out]): gradient of the loss with
            respect to the output.
        input, offset, weight, bias, stride, padding, dilation, mask: the forward's
            arguments.

    Returns:
        DeformConv2dGrads: named tuple ``(input, offset, weight, bias, mask)``;
        ``bias``/``mask`` are None when the forward had none.

    Notes:
        On the GPU the input gradient is accumulated with float atomics, so its
        last bits can vary between runs, unless deterministic mode is on
        (:func:`cudeform.set_deterministic`, ``CUDEFORM_DETERMINISTIC=1``), which
        makes every gradient bit-identical from run to run; the NumPy path is deterministic for a given
        ``CUDEFORM_NUM_THREADS``. The offset gradient is the derivative of the
        piecewise-bilinear sample, which is 0 unless ``-1 < py < H`` and
        ``-1 < px < W``. At an integer sampling position inside that range it is the
        one-sided derivative from above. A sample exactly on the ``-1`` border
        (``py = -1`` or ``px = -1``, where zero offsets with ``padding >= 1`` put the
        border taps) is outside the open range, so its coordinate gradient is 0, as in
        mmcv; torchvision takes the derivative from above there. This is a first-order
        backward: it has no gradient of its own (no double backward).

    Example:
        >>> import numpy as np, cudeform
        >>> x = np.ones((1, 1, 4, 4), np.float32)
        >>> w = np.ones((1, 1, 3, 3), np.float32)
        >>> offset = np.zeros((1, 18, 2, 2), np.float32)
        >>> g = cudeform.deform_conv2d_backward(np.ones((1, 1, 2, 2), np.float32), x, offset, w)
        >>> g.input[0, 0]  # how many outputs read each pixel
        array([[1., 2., 2., 1.],
               [2., 4., 4., 2.],
               [2., 4., 4., 2.],
               [1., 2., 2., 1.]], dtype=float32)
        >>> g.bias is None and g.mask is None  # the forward had neither
        True
    """
    arrays = dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask,
                  grad_output=grad_output)
    xp, dtype, g, a = _prepare(arrays, stride, padding, dilation)
    args = (a["grad_output"], a["input"], a["offset"], a["weight"], a["bias"], a["mask"], g)
    return DeformConv2dGrads(*_arrays.call(xp, dtype, cpu.backward, gpu.backward, args))
