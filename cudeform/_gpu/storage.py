"""bfloat16 arrays stored as 16-bit integer views (CuPy has no bfloat16 dtype).

The kernels read and write such views as ``__nv_bfloat16``; the host-side
arithmetic (GEMMs, bias sums, the final cast of float32 accumulators) cannot,
so it goes through float32 with :func:`values` and back with :func:`narrow`.
For every other storage dtype both are the identity (``narrow`` casts).
"""

from __future__ import annotations

from cudeform._gpu.signatures import ACCUMULATE_DTYPES


def is_view(dtype, dtype_name):
    """Whether arrays of ``dtype`` hold bfloat16 bit patterns in a 16-bit integer dtype."""
    return dtype_name == "bfloat16" and dtype.kind in "iu"


def values(array, dtype_name, xp):
    """``array``'s values: float32 for a bfloat16 view (exact), else ``array`` itself."""
    if array is None or not is_view(array.dtype, dtype_name):
        return array
    bits = xp.ascontiguousarray(array).view(xp.uint16).astype(xp.uint32)
    return (bits << 16).view(xp.float32)


def narrow(array, dtype, dtype_name, xp):
    """``array`` in storage dtype ``dtype``; float32 to a bfloat16 view rounds to
    nearest even (NaN stays a quiet NaN), as ``__float2bfloat16`` does.

    Allocates at most :func:`narrow_bytes` per element (the rounding works in place)."""
    if not is_view(dtype, dtype_name):
        return array.astype(dtype, copy=False)
    array = xp.ascontiguousarray(array, dtype=xp.float32)
    bits = array.view(xp.uint32)
    rounded = bits >> 16
    rounded &= 1
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    xp.copyto(rounded, xp.uint32(0x7FC0), where=xp.isnan(array))
    return rounded.astype(xp.uint16).view(dtype)


def narrow_bytes(dtype_name, itemsize):
    """Bytes per element that :func:`narrow` allocates from the accumulation dtype of
    ``dtype_name`` to its storage dtype (``itemsize`` bytes): none when they are the
    same, else the result and, for bfloat16, the rounded bits (4) and the NaN mask (1)."""
    if ACCUMULATE_DTYPES[dtype_name] == dtype_name:
        return 0
    return itemsize + (5 if dtype_name == "bfloat16" else 0)
