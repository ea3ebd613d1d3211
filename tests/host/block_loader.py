"""Run kernels in the block emulator: every block of a real launch, each with its
``blockDim`` threads, shared memory, barriers and WMMA (see ``block_shim.h``).

A family's module is the emulator's headers (:data:`EMULATOR_HEADERS`) joined with
:func:`cudeform._gpu.source.family_source` and one ``extern "C"`` wrapper per kernel
instantiation, compiled and cached by :func:`tests.host.build.load_library` (the
``cuda_include`` folder lets the kernels' ``#include <mma.h>`` and CUDA's 16-bit headers
resolve to empty stand-ins). :func:`block_launch` has the signature of
:func:`cudeform._gpu.launch.cuda_launch` and runs its argument checks and casts; every
array it passes sits in guard zones (:func:`tests.host.guard.guarded_call`). A fault in
the kernel (a race on shared memory, a divergent barrier, ...) raises
:class:`EmulatorError`; a write outside an array, :class:`tests.host.guard.GuardZoneError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import pathlib

from cudeform._gpu.launch import BLOCK, grid_size, kernel_arguments
from cudeform._gpu.signatures import ELEMENT_TYPES, FAMILIES, INDEX_TYPES, SCALAR, SIZE
from cudeform._gpu.source import family_source
from tests.host.build import load_library
from tests.host.guard import guarded_call, kernel_arrays
from tests.host.loader import _c_parameter

HERE = pathlib.Path(__file__).resolve().parent
# Joined, in this order, ahead of the kernel source.
EMULATOR_HEADERS = ("block_shim.h", "builtins.h", "block_shared.h", "host_16bit.h",
                    "block_wmma.h")
COMPILE_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++20", f"-I{HERE / 'cuda_include'}",
                 "-DCUDEFORM_16BIT_TYPES")
BLOCK_DTYPES = ("float16", "bfloat16", "float32", "float64")
_C_SIZES = {32: ctypes.c_int, 64: ctypes.c_longlong}
_C_SCALARS = {"float16": ctypes.c_float, "bfloat16": ctypes.c_float,
              "float32": ctypes.c_float, "float64": ctypes.c_double}
_MESSAGE_SIZE = 2048
# The order the emulator resumes a block's threads in: 0 is ascending thread index, any
# other value seeds a shuffle (see schedule_seed).
_seed = 0


class EmulatorError(RuntimeError):
    """A kernel fault found by the block emulator (race, divergent barrier, ...)."""


@contextlib.contextmanager
def schedule_seed(seed):
    """Within this context, each block's threads run in an order shuffled by ``seed``
    (a non-negative int; 0 keeps ascending thread order)."""
    global _seed
    previous, _seed = _seed, int(seed)
    try:
        yield
    finally:
        _seed = previous


def emulator_source():
    """The emulator's headers as one text."""
    return "\n".join((HERE / name).read_text() for name in EMULATOR_HEADERS)


def block_wrapper_name(kernel, dtype_name, bits):
    return f"host_block_{kernel.label}_{dtype_name}_i{bits}"


def _wrapper(kernel, dtype_name, bits):
    element_type, index_type = ELEMENT_TYPES[dtype_name], INDEX_TYPES[bits]
    params = "".join(", " + _c_parameter(kind, name, element_type, index_type)
                     for name, kind in kernel.params)
    names = ", ".join(name for name, _ in kernel.params)
    return (f'extern "C" int {block_wrapper_name(kernel, dtype_name, bits)}('
            f"const unsigned int* dims, unsigned long long seed, char* message, "
            f"unsigned int message_size{params}) {{\n"
            f"  return cudeform_host::launch(dims, seed, message, message_size, [=]() {{\n"
            f"    {kernel.name_expression(element_type, index_type)}({names});\n  }});\n}}\n")


def block_source(family):
    """The C++ source of a family for the emulator: headers, kernels, wrappers."""
    wrappers = [_wrapper(kernel, dtype_name, bits)
                for kernel in FAMILIES[family]
                for dtype_name in BLOCK_DTYPES if kernel.supports(dtype_name)
                for bits in INDEX_TYPES]
    return "\n".join([emulator_source(), family_source(family), *wrappers])


def build(name, source):
    """``source`` (kernels and wrappers) after the emulator's headers, compiled and loaded."""
    return load_library(name, "\n".join([emulator_source(), source]), COMPILE_FLAGS)


@functools.lru_cache(maxsize=None)
def _library(family):
    return load_library(f"{family}-block", block_source(family), COMPILE_FLAGS)


def array_pointer(array):
    """The address passed for an array argument (None: a null pointer) in a direct
    :func:`run` (:func:`block_launch` passes guarded copies instead)."""
    return ctypes.c_void_p(None if array is None else array.ctypes.data)


def run(function, grid, block, *c_arguments):
    """Call a wrapper made like :func:`_wrapper`: ``grid`` and ``block`` are (x, y, z)
    triples; raises :class:`EmulatorError` with the emulator's message on a fault."""
    dims = (ctypes.c_uint * 6)(*grid, *block)
    message = ctypes.create_string_buffer(_MESSAGE_SIZE)
    function.restype = ctypes.c_int
    if function(dims, ctypes.c_ulonglong(_seed), message, ctypes.c_uint(_MESSAGE_SIZE),
                *c_arguments):
        raise EmulatorError(message.value.decode(errors="replace"))


def launch_shape(kernel, count):
    """``(grid, block)`` triples of a launch: a tiled kernel's ``count`` is its grid of
    blocks (x[, y[, z]]), a grid-stride kernel's its iteration count."""
    if kernel.threads is None:
        return (grid_size(count), 1, 1), (BLOCK, 1, 1)
    grid = tuple(count) + (1,) * (3 - len(count))
    return grid, (kernel.threads, 1, 1)


def block_launch(kernel, dtype_name, bits, count, **args):
    """Run ``kernel`` on NumPy arrays in the block emulator, like ``cuda_launch`` on CuPy
    ones; raises :class:`EmulatorError` on a fault the emulator detects."""
    if not kernel.supports(dtype_name) or dtype_name not in BLOCK_DTYPES:
        raise TypeError(f"{kernel.label} is not instantiated for {dtype_name}")
    values = kernel_arguments(kernel, dtype_name, bits, args)
    grid, block = launch_shape(kernel, count)
    if 0 in grid:
        return
    function = getattr(_library(kernel.family), block_wrapper_name(kernel, dtype_name, bits))

    def call(pointers):  # every array in guard zones (tests/host/guard.py)
        c_values = []
        for (name, kind), value in zip(kernel.params, values):
            if kind == SIZE:
                c_values.append(_C_SIZES[bits](int(value)))
            elif kind == SCALAR:
                c_values.append(_C_SCALARS[dtype_name](float(value)))
            else:
                c_values.append(ctypes.c_void_p(pointers.get(name)))
        run(function, grid, block, *c_values)

    try:
        guarded_call(kernel.label, *kernel_arrays(kernel, values), call)
    except EmulatorError as error:
        raise EmulatorError(f"{kernel.label} ({dtype_name}, int{bits}): {error}") from None
