"""Kernel source text: the shared headers joined with one family file."""

from __future__ import annotations

import functools
import pathlib

from cudeform._gpu.signatures import HEADERS

# NVRTC options shared by run-time compilation and the compile tests.
COMPILE_OPTIONS = ("--std=c++17",)

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
