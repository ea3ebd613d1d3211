"""Kernel source text: the shared headers joined with one family file."""

from __future__ import annotations

import functools
import pathlib

from cudeform._gpu.signatures import HEADERS

# NVRTC options shared by run-time compilation and the compile tests.
COMPILE_OPTIONS = ("--std=c++17",)
# 16-bit element types need CUDA's cuda_fp16.h/cuda_bf16.h; other builds do not.
_SIXTEEN_BIT_TYPES = ("__half", "__nv_bfloat16")


def compile_options(element_type):
    """NVRTC options of a module instantiated for ``element_type`` (a C type name)."""
    if element_type in _SIXTEEN_BIT_TYPES:
        return COMPILE_OPTIONS + ("-DCUDEFORM_16BIT_TYPES",)
    return COMPILE_OPTIONS

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent


def kernel_dir():
    """The folder holding the ``.cu``/``.cuh`` files.

    An installed wheel carries them as ``cudeform/kernels``; a source checkout
    (and an editable install) keeps them in the top-level ``kernels/``.
    """
    for candidate in (_PACKAGE_DIR / "kernels", _PACKAGE_DIR.parent / "kernels"):
        if (candidate / HEADERS[0]).is_file():
            return candidate
    raise FileNotFoundError("cudeform kernel sources not found next to the package")


@functools.lru_cache(maxsize=None)
def family_source(family):
    """The full source of a kernel family: every header, then ``<family>.cu``.

    Joining the text (rather than ``#include``) keeps every byte in the string
    that CuPy hashes for its on-disk cache.
    """
    folder = kernel_dir()
    parts = [(folder / name).read_text() for name in HEADERS]
    parts.append((folder / f"{family}.cu").read_text())
    return "\n".join(parts)
