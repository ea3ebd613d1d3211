"""The one place where kernel arguments are checked, cast to their C types and launched.

CuPy passes a Python int as ``long long`` and checks nothing against the kernel's
parameters, so every scalar is cast here to the exact type the signature table
gives, and every array is checked for dtype and contiguity.
"""

from __future__ import annotations

import numpy

from cudeform._gpu.signatures import (
    ACC_IN, ACC_OUT, ACCUMULATE_DTYPES, ELEMENT_TYPES, FIXED_DTYPES, INDEX_DTYPES, INDEX_TYPES,
    SCALAR, SIZE,
)

BLOCK = 256
MAX_BLOCKS = 65536
# Grid-stride iterations that fill a large GPU: an H200 keeps about 270,000 threads
# resident. Kernels that walk runs of channels size the runs to reach it.
FILL_TARGET = 2**18
# Channels per run of the run kernels (im2col, col2im, col2im_coord): at least 8, so
# that the shared sampling work pays off, and at most 32, so that a thread's serial
# loop stays short and the partial sums few.
RUN_CHANNELS = (8, 32)
# 32-bit indices are used only while no count, buffer size or grid-stride step
# can pass 2**31 - 1.
_INT32_LIMIT = 2**31 - 1 - BLOCK * MAX_BLOCKS


def index_bits(*sizes):
    """32 when every size fits 32-bit index arithmetic, else 64."""
    return 32 if max(sizes, default=0) <= _INT32_LIMIT else 64


def grid_size(count, max_blocks=MAX_BLOCKS):
    """Blocks for ``count`` grid-stride iterations."""
    return max(1, min(-(-count // BLOCK), max_blocks))


def channels_per_run(group_channels, tasks):
    """Channels that one thread of a run kernel handles, for ``tasks`` (image, offset
    group, tap, pixel) tuples of ``group_channels`` channels each.

    The fewest runs that bring ``tasks * runs`` to :data:`FILL_TARGET`, within
    :data:`RUN_CHANNELS` channels per run (fewer only when the group has fewer).
    """
    low, high = RUN_CHANNELS
    runs_needed = max(1, -(-FILL_TARGET // max(1, tasks)))
    channels = -(-group_channels // runs_needed)
    return max(1, min(group_channels, max(low, min(high, channels))))


def _storage_dtypes(dtype_name):
    # bfloat16 arrives either as an ml_dtypes bfloat16 array or as a 16-bit integer view.
    if dtype_name == "bfloat16":
        return ("bfloat16", "uint16", "int16")
    return (dtype_name,)


def kernel_arguments(kernel, dtype_name, bits, args):
    """Check ``args`` (a dict by parameter name) and return them in order, cast.

    Pointers stay arrays (``None`` for a nullable null pointer); sizes become
    ``numpy.int32``/``numpy.int64`` to match the index type, and real scalars
    ``numpy.float32``/``numpy.float64`` to match the accumulation type.
    """
    index_dtype = INDEX_DTYPES[bits]
    limit = numpy.iinfo(index_dtype)
    if set(args) != {name for name, _ in kernel.params}:
        raise TypeError(f"{kernel.name}: arguments {sorted(args)} do not match its parameters")
    values = []
    for name, kind in kernel.params:
        value = args[name]
        if kind == SIZE:
            value = int(value)
            if not limit.min <= value <= limit.max:
                raise OverflowError(f"{kernel.name}: {name}={value} overflows {INDEX_TYPES[bits]}")
            values.append(index_dtype(value))
            continue
        if kind == SCALAR:
            values.append(numpy.dtype(ACCUMULATE_DTYPES[dtype_name]).type(value))
            continue
        if value is None:
            if name not in kernel.nullable:
                raise TypeError(f"{kernel.name}: {name} may not be null")
            values.append(None)
            continue
        if kind in FIXED_DTYPES:
            expected = (FIXED_DTYPES[kind],)
        elif kind in (ACC_IN, ACC_OUT):
            expected = (ACCUMULATE_DTYPES[dtype_name],)
        else:
            expected = _storage_dtypes(dtype_name)
        if value.dtype.name not in expected:
            raise TypeError(f"{kernel.name}: {name} has dtype {value.dtype}, expected {expected[0]}")
        if not value.flags.c_contiguous:
            raise ValueError(f"{kernel.name}: {name} must be C-contiguous")
        values.append(value)
    return values


def cuda_launch(kernel, dtype_name, bits, count, **args):
    """Launch ``count`` grid-stride iterations of ``kernel`` on CuPy's current stream; for
    a tiled kernel (``kernel.threads`` set), ``count`` is its grid of blocks (x, y, z)."""
    from cudeform._gpu.compile import get_function

    values = kernel_arguments(kernel, dtype_name, bits, args)
    if count == 0 or (kernel.threads is not None and 0 in count):
        return
    values = [numpy.uint64(0) if v is None else v for v in values]
    function = get_function(kernel, ELEMENT_TYPES[dtype_name], INDEX_TYPES[bits])
    if kernel.threads is not None:
        function(tuple(count), (kernel.threads,), tuple(values))
        return
    blocks = grid_size(count, kernel.max_blocks or MAX_BLOCKS)
    function((blocks,), (BLOCK,), tuple(values))
