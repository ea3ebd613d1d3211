"""What the runner times: a pair of calls, cudeform's and a peer's, on one layer.

A peer module turns a case into pairs; the runner checks, times and measures
them without knowing which framework is behind either side.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

FORWARD = "fwd"
FORWARD_BACKWARD = "fwd+bwd"

DEFORM_RESULTS = {
    FORWARD: ("output",),
    FORWARD_BACKWARD: ("output", "grad input", "grad offset", "grad weight"),
}
MASK_GRADIENT = "grad mask"
CONV_RESULTS = {FORWARD: ("output",), FORWARD_BACKWARD: ("output", "grad input", "grad weight")}


class Skip(Exception):
    """A peer cannot run a case (the message says why). ``scope`` is ``"case"`` when
    the layer is the reason, ``"dtype"`` when the dtype is."""

    def __init__(self, reason, scope="case"):
        super().__init__(reason)
        self.scope = scope


@dataclasses.dataclass
class Side:
    """One side of a pair.

    ``run`` is the timed call; ``results`` turns what it returns into the tuple
    of arrays that the agreement check compares (output, then gradients, in
    cudeform's layouts). ``memory`` names how its peak memory can be seen:
    ``"tracemalloc"``, ``"cupy"``, ``"torch"``, ``"cupy+torch"`` or None (invisible).
    """

    run: Callable[[], object]
    results: Callable[[object], Sequence] = tuple
    memory: Optional[str] = None


@dataclasses.dataclass
class Pair:
    """cudeform against one peer on one layer, dtype and pass.

    ``label`` is the shape label of the tables (the case name, plus a note when
    the comparison changes the layer, e.g. ``"C2 (DCNv1 form)"``) and ``shape``
    the full description that goes into the JSON. ``reference`` replaces the
    cudeform side in the agreement check when the peer computes something
    related rather than the same thing (the plain-convolution floor is checked
    against cudeform with zero offsets). ``op`` names the op timed (the JSON's ``op``).
    """

    label: str
    shape: str
    dtype: str
    passes: str
    peer: str
    cudeform: Side
    other: Side
    names: Sequence[str]
    reference: Optional[Side] = None
    op: str = "deform_conv2d"


def deform_names(passes, mask):
    names = DEFORM_RESULTS[passes]
    return names + (MASK_GRADIENT,) if mask and passes == FORWARD_BACKWARD else names


def labels(case, dcnv1_form=False):
    """``(label, shape)`` of a pair on ``case``; ``dcnv1_form`` drops the mask."""
    if dcnv1_form and case.mask:
        return (f"{case.name} (DCNv1 form)",
                f"{case.name} (DCNv1 form, mask dropped): {case.geometry(mask=False)}")
    return case.name, f"{case.name}: {case.geometry()}"
