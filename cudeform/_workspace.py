"""The workspace limit that bounds the column buffer, and batch chunking under it."""

from __future__ import annotations

import os

DEFAULT_WORKSPACE_LIMIT = 256 * 2**20
ENVIRONMENT_VARIABLE = "CUDEFORM_WORKSPACE_LIMIT"

_limit = None


def _parse(value, source):
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} is not valid: expected a positive number of bytes, "
                         f"got {value!r}") from None
    if limit < 1:
        raise ValueError(f"{source} is not valid: expected a positive number of bytes, "
                         f"got {value!r}")
    return limit


def workspace_limit():
    """The largest column buffer, in bytes, that one batch chunk may use.

    It is the value given to :func:`set_workspace_limit`, else the environment
    variable ``CUDEFORM_WORKSPACE_LIMIT`` (bytes), else 256 MiB.
    """
    if _limit is not None:
        return _limit
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    if value is None:
        return DEFAULT_WORKSPACE_LIMIT
    return _parse(value, ENVIRONMENT_VARIABLE)


def set_workspace_limit(nbytes):
    """Set the workspace limit in bytes; ``None`` restores the environment/default value.

    A chunk always holds at least one image, so a single image whose columns pass
    the limit is still processed, alone.
    """
    global _limit
    _limit = None if nbytes is None else _parse(nbytes, "nbytes")


def batch_chunks(batch, bytes_per_image):
    """Yield ``(start, stop)`` ranges covering ``range(batch)`` under the limit."""
    per_chunk = max(1, workspace_limit() // max(1, bytes_per_image))
    for start in range(0, batch, per_chunk):
        yield start, min(batch, start + per_chunk)
