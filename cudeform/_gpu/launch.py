"""The one place where kernel arguments are checked, cast to their C types and launched.

CuPy passes a Python int as ``long long`` and checks nothing against the kernel's
parameters, so every scalar is cast here to the exact type the signature table
gives, and every array is checked for dtype and contiguity.
"""

from __future__ import annotations

import numpy

from cudeform._gpu.signatures import (
    ACC_OUT, ACCUMULATE_DTYPES, ELEMENT_TYPES, INDEX_DTYPES, INDEX_TYPES, SCALAR, SIZE,
)

BLOCK = 256
MAX_BLOCKS = 65536
# 32-bit indices are used only while no count, buffer size or grid-stride step
# can pass 2**31 - 1.
_INT32_LIMIT = 2**31 - 1 - BLOCK * MAX_BLOCKS


def index_bits(*sizes):
    """32 when every size fits 32-bit index arithmetic, else 64."""
    return 32 if max(sizes, default=0) <= _INT32_LIMIT else 64


def grid_size(count):
    """Blocks for ``count`` grid-stride iterations."""
    return max(1, min(-(-count // BLOCK), MAX_BLOCKS))


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
        expected = (ACCUMULATE_DTYPES[dtype_name],) if kind == ACC_OUT else _storage_dtypes(dtype_name)
        if value.dtype.name not in expected:
            raise TypeError(f"{kernel.name}: {name} has dtype {value.dtype}, expected {expected[0]}")
        if not value.flags.c_contiguous:
            raise ValueError(f"{kernel.name}: {name} must be C-contiguous")
        values.append(value)
    return values


def cuda_launch(kernel, dtype_name, bits, count, **args):
    """Launch ``count`` grid-stride iterations of ``kernel`` on CuPy's current stream."""
    from cudeform._gpu.compile import get_function

    values = kernel_arguments(kernel, dtype_name, bits, args)
    if count == 0:
        return
    values = [numpy.uint64(0) if v is None else v for v in values]
    function = get_function(kernel, ELEMENT_TYPES[dtype_name], INDEX_TYPES[bits])
    function((grid_size(count),), (BLOCK,), tuple(values))
