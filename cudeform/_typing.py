"""Type aliases of the public API.

``Array`` is a NumPy or a CuPy array. CuPy is named only for type checkers, so
that importing cudeform never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Tuple, Union

import numpy

if TYPE_CHECKING:
    import cupy

#: A ``numpy.ndarray`` (runs on the CPU) or a ``cupy.ndarray`` (runs on its GPU).
Array = Union[numpy.ndarray, "cupy.ndarray"]
#: An int, or an ``(h, w)`` pair of ints.
IntPair = Union[int, Tuple[int, int]]
