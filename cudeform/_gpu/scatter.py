"""Where the scatter kernels add: float atomics, or 64-bit fixed point (deterministic).

A scatter kernel (col2im, the input gradients of both RoI pools) takes the parameters
``signatures.SCATTER``: either ``grad_input``, a buffer of the accumulation dtype for
float atomicAdd, or ``grad_fixed``, ``grad_flags``, ``bound`` and ``scale_shift`` for
fixed point with integer atomics (kernels/fixed_point.cuh). :func:`scatter_sum` runs
a scatter kernel either way and writes the sums into the gradient.

The fixed-point scale needs two bounds, so that no sum can overflow (fixed_point.cuh):
the largest contribution factor, found on the device by a bound kernel before the
scatter (no host synchronisation), and ``contributions``, a bound on the sum of |v| on
one element in units of that factor, known here from the shapes.
"""

from __future__ import annotations

from cudeform._gpu.signatures import ACCUMULATE_DTYPES, FIXED_POINT_TO_FLOAT, MAX_ABS_EXPONENT
from cudeform._gpu.storage import narrow, narrow_bytes
from cudeform._workspace import batch_chunks

# Scaled sums stay within 2**62, plus at most K/2 of rounding: below the int64 limit.
SCALE_BITS = 62
MAX_CONTRIBUTIONS = 2**60  # so that scale_shift >= 2 (see fixed_point_exponent)


# A uint64 sum and a uint32 flag word per element (the bound is one more word per call).
FIXED_POINT_BYTES = 12


def scatter_bytes(dtype_name, itemsize, deterministic):
    """Bytes per gradient element that :func:`scatter_sum` allocates: the fixed-point sums
    and flags when ``deterministic``; else nothing when the gradient's dtype is its
    accumulation dtype (the atomics add straight into it), or an accumulation buffer and
    its narrowing to the storage dtype (``itemsize`` bytes) for 16-bit types."""
    if deterministic:
        return FIXED_POINT_BYTES
    accumulate = ACCUMULATE_DTYPES[dtype_name]
    if accumulate == dtype_name:
        return 0
    return (8 if accumulate == "float64" else 4) + narrow_bytes(dtype_name, itemsize)


def float_target(buffer):
    """Scatter arguments for float atomicAdd into ``buffer`` (accumulation dtype)."""
    return dict(grad_input=buffer, grad_fixed=None, grad_flags=None, bound=None, scale_shift=0)


def scale_shift(contributions):
    """``62 - ceil(log2(contributions))``: with every |v| < 2**e, the scale 2**(shift - e)
    keeps ``contributions * max|v|`` scaled under 2**62."""
    contributions = max(1, int(contributions))
    if contributions > MAX_CONTRIBUTIONS:
        raise OverflowError(f"{contributions} contributions per element pass the fixed-point "
                            f"limit of 2**60")
    return SCALE_BITS - (contributions - 1).bit_length()


class FixedPoint:
    """Zeroed fixed-point sums, flags and bound for elements of ``shape``.

    Args:
        xp: the array module.
        shape: the shape of the gradient the scatter adds into.
        contributions: a bound on the sum of |contribution| over one element, in units
            of the largest contribution factor.
    """

    def __init__(self, xp, shape, contributions):
        self.fixed = xp.zeros(shape, dtype=xp.uint64)
        self.flags = xp.zeros(shape, dtype=xp.uint32)
        self.bound = xp.zeros(1, dtype=xp.uint32)
        self.scale_shift = scale_shift(contributions)

    def scatter_args(self):
        """Scatter arguments for the fixed-point sums."""
        return dict(grad_input=None, grad_fixed=self.fixed, grad_flags=self.flags,
                    bound=self.bound, scale_shift=self.scale_shift)

    def convert(self, output, *, dtype_name, bits, launch):
        """Write the sums into ``output`` (storage dtype, the shape of the sums)."""
        launch(FIXED_POINT_TO_FLOAT, dtype_name, bits, output.size, fixed=self.fixed,
               flags=self.flags, bound=self.bound, output=output, size=output.size,
               scale_shift=self.scale_shift)


def max_abs_bound(values):
    """The bound launch ``(kernel, count, args)`` of :func:`scatter_sum` for
    contributions of at most max|values| each (``values``: a storage-dtype array)."""
    return MAX_ABS_EXPONENT, values.size, dict(values=values, size=values.size)


def scatter_sum(output, scatter, bound, contributions, *, deterministic, dtype_name, bits, xp,
                launch):
    """Fill ``output`` (storage dtype) with the sums that a scatter kernel adds.

    Args:
        output: the gradient (or the part of it) the scatter kernel covers.
        scatter: ``(kernel, count, args)``: a scatter kernel, its grid-stride count and
            its arguments other than those of ``signatures.SCATTER``.
        bound: ``(kernel, count, args)``: the kernel that raises the fixed-point bound
            to the largest contribution factor (its ``bound`` argument is added here);
            launched only when ``deterministic``.
        contributions: the count bound of :class:`FixedPoint`.
        deterministic: 64-bit fixed point with integer atomics instead of float atomics.
    """
    kernel, count, args = scatter
    if deterministic:
        target = FixedPoint(xp, output.shape, contributions)
        bound_kernel, bound_count, bound_args = bound
        launch(bound_kernel, dtype_name, bits, bound_count, bound=target.bound, **bound_args)
        launch(kernel, dtype_name, bits, count, **target.scatter_args(), **args)
        target.convert(output, dtype_name=dtype_name, bits=bits, launch=launch)
        return
    accumulate = xp.dtype(ACCUMULATE_DTYPES[dtype_name])
    exact = output.dtype == accumulate and output.flags.c_contiguous
    buffer = output if exact else xp.zeros(output.shape, dtype=accumulate)
    if exact:
        buffer[...] = 0
    launch(kernel, dtype_name, bits, count, **float_target(buffer), **args)
    if not exact:
        output[...] = narrow(buffer, output.dtype, dtype_name, xp)


def scatter_by_images(grad_input, scatter, bound, contributions, *, deterministic, dtype_name,
                      bits, xp, launch):
    """:func:`scatter_sum` into ``grad_input`` (N, C, H, W) by ranges of images, so that
    the scatter's buffers (:func:`scatter_bytes`) stay under the workspace limit. The
    scatter kernel takes ``signatures.IMAGE_RANGE`` besides ``scatter``'s arguments and
    adds only what lands on the range's images. Arguments as :func:`scatter_sum`'s."""
    kernel, count, args = scatter
    per_image = scatter_bytes(dtype_name, grad_input.dtype.itemsize, deterministic) * (
        grad_input[0].size if len(grad_input) else 0)
    for start, stop in batch_chunks(len(grad_input), per_image):
        scatter_sum(grad_input[start:stop],
                    (kernel, count, dict(args, first_image=start, images=stop - start)),
                    bound, contributions, deterministic=deterministic, dtype_name=dtype_name,
                    bits=bits, xp=xp, launch=launch)
