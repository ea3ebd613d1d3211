"""Process-wide numerical modes of the GPU path: deterministic gradients and TF32 GEMMs.

Each mode has a process-wide value (``set_deterministic``, ``set_allow_tf32``) and a
per-call override (:func:`override`) kept in a ``contextvars.ContextVar``, so that a
framework adapter can apply its framework's flag to one call without touching the
process-wide value or other threads. The GPU host logic reads both modes once per
call, in :func:`cudeform._arrays.on_gpu`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Optional

import numpy

DETERMINISTIC_VARIABLE = "CUDEFORM_DETERMINISTIC"

_deterministic = None  # set_deterministic's value; None: the environment decides
_allow_tf32 = False
_overrides = contextvars.ContextVar("cudeform_mode_overrides", default={})


def _flag(value, name):
    """``value`` as a bool, or None; anything else is a TypeError naming ``name``."""
    if value is None or isinstance(value, (bool, numpy.bool_)):
        return None if value is None else bool(value)
    raise TypeError(f"{name} must be True, False or None, got {value!r}")


def _environment_deterministic():
    value = os.environ.get(DETERMINISTIC_VARIABLE, "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ValueError(f"{DETERMINISTIC_VARIABLE} is not valid: expected 0 or 1, got {value!r}")


def set_deterministic(enabled: Optional[bool]) -> None:
    """Make every GPU gradient bit-identical from run to run (``True``), or allow float
    atomics (``False``, the default); ``None`` goes back to ``CUDEFORM_DETERMINISTIC``.

    Deterministic scatters accumulate in 64-bit fixed point (see the README's
    "TF32 and deterministic mode"). The NumPy path is deterministic in either mode.
    Deterministic mode sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when it is unset, so
    that cuBLAS stays reproducible with several streams (cuBLAS reads it when CuPy
    creates its handle: set it before the first GPU call to be sure).
    """
    global _deterministic
    _deterministic = _flag(enabled, "enabled")
    if _deterministic:
        from cudeform._gpu.gemm import reproducible_workspace

        reproducible_workspace()


def is_deterministic() -> bool:
    """Whether the GPU path runs deterministically for calls made now.

    An :func:`override` in effect decides, else :func:`set_deterministic`, else the
    environment variable ``CUDEFORM_DETERMINISTIC`` (``1``: on; ``0`` or unset: off).
    """
    override_value = _overrides.get().get("deterministic")
    if override_value is not None:
        return override_value
    if _deterministic is not None:
        return _deterministic
    return _environment_deterministic()


def set_allow_tf32(enabled: bool) -> None:
    """Let float32 GEMMs on the GPU use TF32 tensor cores (``True``), or keep them
    exact FP32 (``False``, the default). 16-bit and float64 GEMMs are unaffected."""
    global _allow_tf32
    flag = _flag(enabled, "enabled")
    _allow_tf32 = False if flag is None else flag


def allow_tf32() -> bool:
    """Whether float32 GEMMs on the GPU may use TF32 for calls made now (an
    :func:`override` in effect decides, else :func:`set_allow_tf32`)."""
    override_value = _overrides.get().get("allow_tf32")
    return _allow_tf32 if override_value is None else override_value


@contextlib.contextmanager
def override(*, deterministic: Optional[bool] = None,
             allow_tf32: Optional[bool] = None) -> Iterator[None]:
    """Within this context (this thread or task only), use these modes; ``None`` keeps
    the process-wide value. Adapters wrap each call in it with their framework's flags.
    """
    values = {"deterministic": _flag(deterministic, "deterministic"),
              "allow_tf32": _flag(allow_tf32, "allow_tf32")}
    merged = dict(_overrides.get())
    merged.update({name: value for name, value in values.items() if value is not None})
    token = _overrides.set(merged)
    try:
        yield
    finally:
        _overrides.reset(token)
