"""The workspace limit that bounds the buffers of a call, and batch chunking under it."""

from __future__ import annotations

import numbers
import os
from typing import Iterator, Optional, Tuple

DEFAULT_WORKSPACE_LIMIT = 256 * 2**20
ENVIRONMENT_VARIABLE = "CUDEFORM_WORKSPACE_LIMIT"

_limit = None


def _positive(limit, source, value):
    if limit < 1:
        raise ValueError(f"{source} is not valid: expected a positive number of bytes, "
                         f"got {value!r}")
    return limit


def _parse_environment(value):
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} is not valid: expected a positive number "
                         f"of bytes, got {value!r}") from None
    return _positive(limit, ENVIRONMENT_VARIABLE, value)


def workspace_limit() -> int:
    """The largest workspace, in bytes, that one batch chunk may use.

    It is the value given to :func:`set_workspace_limit`, else the environment
    variable ``CUDEFORM_WORKSPACE_LIMIT`` (bytes), else 256 MiB (268435456).
    On the GPU it bounds every buffer that an op allocates besides its outputs and
    gradients (see the GPU host logic's ``workspace_per_image``); on the CPU, the
    per-chunk buffers of the NumPy path.
    """
    if _limit is not None:
        return _limit
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    if value is None:
        return DEFAULT_WORKSPACE_LIMIT
    return _parse_environment(value)


def set_workspace_limit(nbytes: Optional[int]) -> None:
    """Set the workspace limit to ``nbytes`` bytes; ``None`` restores the environment
    or default value.

    A chunk always holds at least one image, so a single image whose columns pass
    the limit is still processed, alone.

    Raises:
        TypeError: ``nbytes`` is not an int (a float, a string or a bool) or None.
        ValueError: ``nbytes`` is below 1.
    """
    global _limit
    if nbytes is None:
        _limit = None
        return
    if not isinstance(nbytes, numbers.Integral) or isinstance(nbytes, bool):
        raise TypeError(f"nbytes must be an int number of bytes or None, got "
                        f"{type(nbytes).__name__} {nbytes!r}")
    _limit = _positive(int(nbytes), "nbytes", nbytes)


def batch_chunks(batch: int, bytes_per_image: int,
                 reserved: int = 0) -> Iterator[Tuple[int, int]]:
    """Yield ``(start, stop)`` ranges covering ``range(batch)`` so that ``reserved``
    bytes (held for the whole call) plus ``bytes_per_image`` per image of a range stay
    under the limit; a range holds at least one image (all of them when an image needs
    no workspace)."""
    if bytes_per_image <= 0:
        per_chunk = max(1, batch)
    else:
        per_chunk = max(1, (workspace_limit() - reserved) // bytes_per_image)
    for start in range(0, batch, per_chunk):
        yield start, min(batch, start + per_chunk)
