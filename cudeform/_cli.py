"""What every ``python -m cudeform`` command shares: its argument parser, one-line
errors, and the checks for a GPU and for optional packages.

A mistake a user can make on the command line (a bad option, a missing extra, no
GPU) ends as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Optional, Sequence

USAGE_STATUS = 2


class UsageError(Exception):
    """A mistake on the command line; its message is the one line to print."""


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors and every default shown in ``--help``."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def add_device_option(parser: Parser, auto: str) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help=f"where to run; auto: {auto}")


def why_no_cuda() -> Optional[str]:
    """Why CuPy cannot run on a GPU here, or None when it can."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed; for CUDA 13: pip install 'cudeform[cuda]'"
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, too old a driver, a broken CUDA runtime
        return f"CuPy finds no usable CUDA device ({type(error).__name__}: {error})"
    return None if count > 0 else "CuPy finds no CUDA device"


def require_cuda(option: str = "--device cuda") -> None:
    """Raise :class:`UsageError` unless CuPy can run on a GPU."""
    reason = why_no_cuda()
    if reason is not None:
        raise UsageError(f"{option}: no GPU to run on: {reason}")


def require_packages(command: str, extra: str, modules: Sequence[str]) -> None:
    """Raise :class:`UsageError` naming the ``pip install`` of ``extra`` when one of
    ``modules`` is not installed."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        needed = ", ".join(modules[:-1]) + f" and {modules[-1]}" if len(modules) > 1 else modules[0]
        raise UsageError(
            f"python -m cudeform {command} needs {needed}; not installed: {', '.join(missing)}. "
            f"Install them with: pip install 'cudeform[{extra}]' (in a source checkout: "
            f"pip install -e '.[{extra}]'; on a CPU-only machine, first pip install torch's CPU "
            "build)")


def require_writable_file(option: str, path: str) -> None:
    """Raise :class:`UsageError` when ``path`` cannot be written (checked before the work)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: the folder {folder} is not writable")
