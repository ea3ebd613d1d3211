"""What every ``python -m cudeform`` command shares: its argument parser, one-line
errors, and the checks for a GPU, optional packages, settings and output files.

A mistake a user can make on the command line (a bad option, a missing extra, no
GPU, a file that cannot be written) raises :class:`UsageError`; ``__main__`` prints
it as one line on stderr, ``python -m cudeform COMMAND: error: ...``, and exits
with status 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
from typing import Optional, Sequence

USAGE_STATUS = 2


class UsageError(Exception):
    """A mistake on the command line; its message is the line to print after the
    command's name."""


class _HelpFormatter(argparse.HelpFormatter):
    """Plain help texts, with the default of every option that has one."""

    def _get_help_string(self, action):
        if any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)):
            return action.help
        return f"{action.help} (default: {action.default})"


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors and every default shown in ``--help``."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_device_option(parser: Parser, auto: str) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help=f"where to run; auto: {auto}")


def first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def driver_device_count() -> Optional[int]:
    """The number of CUDA devices the NVIDIA driver reports, asked directly (not through
    CuPy): 0 when no driver library is installed or the driver finds no device; None
    when the driver is there but fails otherwise."""
    names = ("nvcuda.dll",) if os.name == "nt" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0
    no_device = 100  # CUDA_ERROR_NO_DEVICE
    status = driver.cuInit(0)
    if status == no_device:
        return 0
    count = ctypes.c_int(0)
    if status != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return None
    return count.value


def why_cupy_cannot_run(cupy) -> Optional[str]:
    """Why the imported ``cupy`` module cannot run on a GPU here (one line), or None.

    Without a GPU CuPy's CUDA runtime reports an "insufficient driver", which would
    send a user looking for a driver to upgrade; the driver itself is asked whether
    there is a device, and "no CUDA device" comes first when there is none.
    """
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, too old a driver, a broken CUDA runtime
        cupy_says = f"CuPy: {first_line(error)}"
        if driver_device_count() == 0:
            return f"no CUDA device ({cupy_says})"
        return f"CuPy cannot use the CUDA device ({cupy_says})"
    return None if count > 0 else "no CUDA device (CuPy counts 0 devices)"


def why_no_cuda() -> Optional[str]:
    """Why CuPy cannot run on a GPU here (one line), or None when it can."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed; for CUDA 13: pip install 'cudeform[cuda]'"
    try:
        import cupy
    except Exception as error:  # its CUDA libraries fail to load
        return f"CuPy fails to import ({type(error).__name__}: {first_line(error)})"
    return why_cupy_cannot_run(cupy)


def require_cuda(option: str = "--device cuda") -> None:
    """Raise :class:`UsageError` unless CuPy can run on a GPU."""
    reason = why_no_cuda()
    if reason is not None:
        raise UsageError(f"{option}: {reason}")


def require_packages(command: str, extra: str, modules: Sequence[str]) -> None:
    """Raise :class:`UsageError` naming the ``pip install`` of ``extra`` when one of
    ``modules`` is not installed."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        needed = ", ".join(modules[:-1]) + f" and {modules[-1]}" if len(modules) > 1 else modules[0]
        raise UsageError(
            f"{command} needs {needed}; not installed: {', '.join(missing)}. Install them "
            f"with: pip install 'cudeform[{extra}]' (in a source checkout: pip install -e "
            f"'.[{extra}]'; on a CPU-only machine, first pip install torch's CPU build)")


def require_settings() -> None:
    """Raise :class:`UsageError` when an environment setting cudeform reads is invalid."""
    import cudeform
    from cudeform._cpu import parallel

    try:
        parallel.worker_count()
        cudeform.workspace_limit()
        cudeform.is_deterministic()
    except ValueError as error:
        raise UsageError(first_line(error)) from None


def require_writable_file(option: str, path: Optional[str]) -> None:
    """Raise :class:`UsageError` when ``path`` cannot be written, before any work is
    done (nothing is created)."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        reason = "Is a directory"
    elif not os.path.isdir(folder):
        reason = "No such file or directory"
    elif not os.access(folder, os.W_OK) or (os.path.exists(path)
                                            and not os.access(path, os.W_OK)):
        reason = "Permission denied"
    else:
        return
    raise UsageError(f"{option} {path}: cannot write it ({reason})")
