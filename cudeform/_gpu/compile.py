"""Compile kernel families with ``cupy.RawModule``, memoised per device, and look each
kernel function up once per device."""

from __future__ import annotations

import cupy

from cudeform._gpu.signatures import family_kernels
from cudeform._gpu.source import compile_options, family_source


@cupy.memoize(for_each_device=True)
def _module(family, element_type, index_type):
    names = [k.name_expression(element_type, index_type)
             for k in family_kernels(family, element_type)]
    return cupy.RawModule(code=family_source(family), options=compile_options(element_type),
                          name_expressions=names)


@cupy.memoize(for_each_device=True)
def get_function(kernel, element_type, index_type):
    """The compiled ``cupy.RawKernel`` of one instantiation on the current device.

    Memoised per (kernel, element type, index type, device): building a ``RawKernel``
    and looking its mangled name up costs tens of microseconds, on every launch else.
    """
    module = _module(kernel.family, element_type, index_type)
    return module.get_function(kernel.name_expression(element_type, index_type))
