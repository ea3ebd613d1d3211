"""cudeform's side of a pair through its core API, on NumPy or CuPy arrays.

The forward+backward is the forward followed by the backward with a gradient
of ones, which returns every gradient (input, offset, weight and mask).
"""

from __future__ import annotations

import cudeform
from cudeform._bench.pairs import FORWARD, FORWARD_BACKWARD, Side


def _output_shape(case):
    return (case.batch, case.out_channels, case.height, case.width)


def core_sides(xp, arrays, case, *, mask=True, memory="tracemalloc"):
    """``{pass: Side}`` of the core API on ``arrays`` (``xp`` arrays); with
    ``mask=False`` the layer runs in its DCNv1 form even if it has a mask."""
    x, offset, weight = arrays["input"], arrays["offset"], arrays["weight"]
    mask_array = arrays["mask"] if mask else None
    options = dict(padding=case.padding, dilation=case.dilation, mask=mask_array)
    ones = xp.ones(_output_shape(case), dtype=x.dtype)

    def forward():
        return cudeform.deform_conv2d(x, offset, weight, **options)

    def forward_backward():
        y = cudeform.deform_conv2d(x, offset, weight, **options)
        grads = cudeform.deform_conv2d_backward(ones, x, offset, weight, **options)
        extra = (grads.mask,) if mask_array is not None else ()
        return (y, grads.input, grads.offset, grads.weight) + extra

    return {FORWARD: Side(forward, lambda y: (y,), memory),
            FORWARD_BACKWARD: Side(forward_backward, tuple, memory)}


def core_conv_references(xp, arrays, case):
    """``{pass: Side}`` of cudeform with zero offsets and no mask, a plain
    convolution: the reference of the floor peers (output, grad input, grad weight)."""
    zero = dict(arrays, offset=xp.zeros_like(arrays["offset"]), mask=None)
    sides = core_sides(xp, zero, case, mask=False, memory=None)
    backward = sides[FORWARD_BACKWARD]
    return {FORWARD: sides[FORWARD],
            FORWARD_BACKWARD: Side(backward.run, lambda results: (results[0], results[1],
                                                                   results[3]))}


def on_device(xp, arrays, dtype):
    """The float32 NumPy ``arrays`` of a case as ``xp`` arrays of ``dtype``."""
    if dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    return {name: None if array is None else xp.asarray(array).astype(dtype)
            for name, array in arrays.items()}
