"""Compile the CUDA kernel source as C++ for the CPU and launch it with ctypes.

The module source is ``shim.h`` + ``builtins.h`` +
:func:`cudeform._gpu.source.family_source` + one ``extern "C"`` wrapper per kernel,
element type and index type, generated from the signature table. :func:`host_launch` has the signature of
:func:`cudeform._gpu.launch.cuda_launch` and runs the same argument checks and
casts (:func:`cudeform._gpu.launch.kernel_arguments`), so the host logic of
``cudeform._gpu`` runs unchanged on NumPy arrays. Inside :func:`loop_order`, every
grid-stride loop walks its range in that order instead of forward.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

from cudeform._gpu.launch import kernel_arguments
from cudeform._gpu.signatures import (
    ACC_IN, ACC_OUT, ELEMENT_TYPES, FAMILIES, FIXED_DTYPES, IN, INDEX_TYPES, OUT, SCALAR, SIZE,
)
from cudeform._gpu.source import family_source

SHIM = pathlib.Path(__file__).resolve().parent / "shim.h"
BUILTINS = SHIM.parent / "builtins.h"
COMPILE_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++17")
# The host has no 16-bit CUDA types; float and double cover the CPU dtypes.
HOST_DTYPES = ("float32", "float64")
_C_SIZES = {32: ctypes.c_int, 64: ctypes.c_longlong}
_C_SCALARS = {"float32": ctypes.c_float, "float64": ctypes.c_double}
# The orders a grid-stride loop can walk in (cudeform_set_loop_order in shim.h).
LOOP_ORDERS = ("forward", "reversed", "shuffled")
_loop_order = "forward"


@contextlib.contextmanager
def loop_order(order):
    """Within this context, host-run kernels walk their grid-stride loops in ``order``
    (one of :data:`LOOP_ORDERS`)."""
    global _loop_order
    if order not in LOOP_ORDERS:
        raise ValueError(f"order must be one of {LOOP_ORDERS}, got {order!r}")
    previous, _loop_order = _loop_order, order
    try:
        yield
    finally:
        _loop_order = previous


def compiler():
    """Path of the C++ compiler (``$CXX``, else ``g++``), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


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


def host_source(family):
    """The C++ source of a family: shim, kernel source, then the generated wrappers."""
    wrappers = [_wrapper(kernel, dtype_name, bits)
                for kernel in FAMILIES[family]
                for dtype_name in HOST_DTYPES
                for bits in INDEX_TYPES]
    return "\n".join([SHIM.read_text(), BUILTINS.read_text(), family_source(family), *wrappers])


def _build_dir():
    # Per user, so that no one else's library is ever loaded.
    folder = pathlib.Path(tempfile.gettempdir()) / f"cudeform-host-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def build_library(name, source, flags=COMPILE_FLAGS):
    """``source`` (C++ text) compiled with ``flags`` and loaded with ctypes, cached on
    disk under a hash of the compiler, the flags and the source."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    key = hashlib.sha256("\0".join([cxx, *flags, source]).encode()).hexdigest()[:20]
    library = _build_dir() / f"{name}-{key}.so"
    if not library.exists():
        with tempfile.TemporaryDirectory(dir=library.parent) as work:
            source_file = pathlib.Path(work) / f"{name}.cpp"
            source_file.write_text(source)
            built = pathlib.Path(work) / library.name
            result = subprocess.run([cxx, *flags, str(source_file), "-o", str(built)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"host compilation of {name} failed:\n{result.stderr}")
            os.replace(built, library)  # atomic, so concurrent runs never see half a file
    return ctypes.CDLL(str(library))


@functools.lru_cache(maxsize=None)
def _library(family):
    """The compiled family (see :func:`build_library`)."""
    return build_library(family, host_source(family))


@functools.lru_cache(maxsize=None)
def _function(kernel, dtype_name, bits):
    function = getattr(_library(kernel.family), wrapper_name(kernel, dtype_name, bits))
    c_types = {SIZE: _C_SIZES[bits], SCALAR: _C_SCALARS[dtype_name]}
    function.argtypes = [c_types.get(kind, ctypes.c_void_p) for _, kind in kernel.params]
    function.restype = None
    return function


def host_launch(kernel, dtype_name, bits, count, **args):
    """Run ``kernel`` on NumPy arrays in one host thread, like ``cuda_launch`` on CuPy ones."""
    if dtype_name not in HOST_DTYPES:
        raise TypeError(f"{kernel.name}: the host run supports {HOST_DTYPES}, got {dtype_name}")
    values = kernel_arguments(kernel, dtype_name, bits, args)
    if count == 0:
        return
    c_size, c_scalar = _C_SIZES[bits], _C_SCALARS[dtype_name]
    c_values = []
    for (_, kind), value in zip(kernel.params, values):
        if kind == SIZE:
            c_values.append(c_size(int(value)))
        elif kind == SCALAR:
            c_values.append(c_scalar(float(value)))
        else:
            c_values.append(ctypes.c_void_p(None if value is None else value.ctypes.data))
    _library(kernel.family).cudeform_set_loop_order(LOOP_ORDERS.index(_loop_order))
    # ``values`` keeps every array alive until the call returns.
    _function(kernel, dtype_name, bits)(*c_values)
