"""cudeform's deterministic backward against its default one, on the GPU: what
bit-identical gradients cost (the target is at most 1.5 times the default).

Both sides call ``cudeform.deform_conv2d_backward`` through the core API on the same
CuPy arrays with a gradient of ones, after one shared forward: the cudeform side in
deterministic mode (64-bit fixed-point scatters), the peer side in the default mode
(float atomics). The agreement check compares their gradients; the ratio is
deterministic / default, backward only (pass ``bwd``, so no memory row).
"""

from __future__ import annotations

import numpy

import cudeform
from cudeform import _modes
from cudeform._bench.core_sides import on_device
from cudeform._bench.imports import optional
from cudeform._bench.pairs import FORWARD_BACKWARD, Pair, Side, deform_names, labels

NAME = "cudeform default backward"
BACKWARD = "bwd"


class DeterminismPeer:
    name = NAME

    def __init__(self, xp=None):
        """``xp``: the array module (CuPy; tests pass NumPy)."""
        self.xp = xp if xp is not None else optional("cupy")

    def pairs(self, case, dtype, arrays):
        xp = self.xp
        device = on_device(xp, arrays, dtype)
        options = dict(padding=case.padding, dilation=case.dilation, mask=device["mask"])
        x, offset, weight = device["input"], device["offset"], device["weight"]
        output = cudeform.deform_conv2d(x, offset, weight, **options)
        ones = on_device(xp, {"ones": numpy.ones(output.shape, numpy.float32)}, dtype)["ones"]

        def backward(deterministic):
            def run():
                with _modes.override(deterministic=deterministic):
                    grads = cudeform.deform_conv2d_backward(ones, x, offset, weight, **options)
                extra = (grads.mask,) if device["mask"] is not None else ()
                return (output, grads.input, grads.offset, grads.weight) + extra
            return Side(run, tuple, None)

        label, shape = labels(case)
        return [Pair(f"{label} (deterministic)", shape, dtype, BACKWARD, self.name, backward(True),
                     backward(False), deform_names(FORWARD_BACKWARD, case.mask))]


def load():
    return DeterminismPeer()
