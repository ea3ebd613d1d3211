"""Compile the CUDA kernel source as C++ for the CPU and launch it with ctypes.

The module source is ``shim.h`` + ``builtins.h`` +
:func:`cudeform._gpu.source.family_source` + one ``extern "C"`` wrapper per kernel,
element type and index type, generated from the signature table. :func:`host_launch`
has the signature of :func:`cudeform._gpu.launch.cuda_launch` and runs the same
argument checks and casts (:func:`cudeform._gpu.launch.kernel_arguments`), so the
host logic of ``cudeform._gpu`` runs unchanged on NumPy arrays. Every launch runs
inside guard zones (:mod:`tests.host.guard`). Inside :func:`loop_order`, every
grid-stride loop of this thread walks its range in that order instead of forward.

The libraries are built and cached by :mod:`tests.host.build` (sanitized when
``CUDEFORM_HOST_SANITIZE=1``).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import pathlib

from cudeform._gpu.launch import kernel_arguments
from cudeform._gpu.signatures import (
    ACC_IN, ACC_OUT, ELEMENT_TYPES, FAMILIES, FIXED_DTYPES, IN, INDEX_TYPES, OUT, SCALAR, SIZE,
)
from cudeform._gpu.source import family_source
from tests.host.build import compiler, load_library
from tests.host.guard import guarded_call, kernel_arrays

__all__ = ["HOST_DTYPES", "LOOP_ORDERS", "compiler", "host_launch", "host_source", "loop_order",
           "source_launch", "wrapper_name"]

SHIM = pathlib.Path(__file__).resolve().parent / "shim.h"
BUILTINS = SHIM.parent / "builtins.h"
# The host has no 16-bit CUDA types; float and double cover the CPU dtypes.
HOST_DTYPES = ("float32", "float64")
_C_SIZES = {32: ctypes.c_int, 64: ctypes.c_longlong}
_C_SCALARS = {"float32": ctypes.c_float, "float64": ctypes.c_double}
# The orders a grid-stride loop can walk in (cudeform_set_loop_order in shim.h).
LOOP_ORDERS = ("forward", "reversed", "shuffled")
# Per thread (and task), as the order in shim.h is: host runs may run in several threads.
_loop_order = contextvars.ContextVar("cudeform_host_loop_order", default="forward")


@contextlib.contextmanager
def loop_order(order):
    """Within this context (this thread only), host-run kernels walk their grid-stride
    loops in ``order`` (one of :data:`LOOP_ORDERS`)."""
    if order not in LOOP_ORDERS:
        raise ValueError(f"order must be one of {LOOP_ORDERS}, got {order!r}")
    token = _loop_order.set(order)
    try:
        yield
    finally:
        _loop_order.reset(token)


def wrapper_name(kernel, dtype_name, bits):
    return f"host_{kernel.name}_{dtype_name}_i{bits}"


def _c_parameter(kind, name, element_type, index_type):
    accumulate = f"cudeform::accumulate<{element_type}>::type"
    c_type = {
        IN: f"const {element_type}*",
        OUT: f"{element_type}*",
        ACC_IN: f"const {accumulate}*",
        ACC_OUT: f"{accumulate}*",
        SCALAR: accumulate,
        SIZE: index_type,
        **{fixed: fixed for fixed in FIXED_DTYPES},  # the C type is the kind
    }[kind]
    return f"{c_type} {name}"


def _wrapper(kernel, dtype_name, bits):
    element_type, index_type = ELEMENT_TYPES[dtype_name], INDEX_TYPES[bits]
    params = ", ".join(_c_parameter(kind, name, element_type, index_type)
                       for name, kind in kernel.params)
    names = ", ".join(name for name, _ in kernel.params)
    return (f'extern "C" void {wrapper_name(kernel, dtype_name, bits)}({params}) {{\n'
            f"  {kernel.name_expression(element_type, index_type)}({names});\n}}\n")


def host_source(family, kernel_source=None):
    """The C++ source of a family: shim, kernel source (``family_source(family)``
    unless given), then the generated wrappers."""
    wrappers = [_wrapper(kernel, dtype_name, bits)
                for kernel in FAMILIES[family]
                for dtype_name in HOST_DTYPES
                for bits in INDEX_TYPES]
    if kernel_source is None:
        kernel_source = family_source(family)
    return "\n".join([SHIM.read_text(), BUILTINS.read_text(), kernel_source, *wrappers])


def _library(family):
    """The compiled family."""
    return load_library(family, host_source(family))


@functools.lru_cache(maxsize=None)
def _function(library, kernel, dtype_name, bits):
    function = getattr(library, wrapper_name(kernel, dtype_name, bits))
    c_types = {SIZE: _C_SIZES[bits], SCALAR: _C_SCALARS[dtype_name]}
    function.argtypes = [c_types.get(kind, ctypes.c_void_p) for _, kind in kernel.params]
    function.restype = None
    return function


def _launch(library, kernel, dtype_name, bits, count, args):
    if dtype_name not in HOST_DTYPES:
        raise TypeError(f"{kernel.name}: the host run supports {HOST_DTYPES}, got {dtype_name}")
    values = kernel_arguments(kernel, dtype_name, bits, args)
    if count == 0:
        return
    function = _function(library, kernel, dtype_name, bits)
    c_size, c_scalar = _C_SIZES[bits], _C_SCALARS[dtype_name]

    def call(pointers):
        c_values = []
        for (name, kind), value in zip(kernel.params, values):
            if kind == SIZE:
                c_values.append(c_size(int(value)))
            elif kind == SCALAR:
                c_values.append(c_scalar(float(value)))
            else:
                c_values.append(ctypes.c_void_p(pointers.get(name)))
        library.cudeform_set_loop_order(LOOP_ORDERS.index(_loop_order.get()))
        function(*c_values)

    guarded_call(kernel.name, *kernel_arrays(kernel, values), call)


def host_launch(kernel, dtype_name, bits, count, **args):
    """Run ``kernel`` on NumPy arrays in one host thread, like ``cuda_launch`` on CuPy
    ones, inside guard zones."""
    _launch(_library(kernel.family), kernel, dtype_name, bits, count, args)


def source_launch(kernel_sources):
    """A launcher like :func:`host_launch` that builds the families named in
    ``kernel_sources`` (``{family: kernel source text}``) from that text instead of
    ``kernels/`` (a test's modified copy)."""
    def launch(kernel, dtype_name, bits, count, **args):
        family = kernel.family
        library = (load_library(family, host_source(family, kernel_sources[family]))
                   if family in kernel_sources else _library(family))
        _launch(library, kernel, dtype_name, bits, count, args)
    return launch
