"""Chainer's ``chainer.functions.deformable_convolution_2d_sampler`` as a peer, on
NumPy arrays (CPU) or CuPy arrays (GPU), against cudeform's core API on the same
arrays.

The sampler is DCNv1 with one offset group and no dilation, and takes its offsets
as all dx then all dy. Offsets are converted to its layout before timing, and its
offset gradient back to cudeform's for the check. A layer with a mask runs in its
DCNv1 form on both sides; one with dilation or several offset groups is skipped.
"""

from __future__ import annotations

from cudeform._bench.core_sides import core_sides, on_device
from cudeform._bench.imports import chainer_modules
from cudeform._bench.pairs import (
    FORWARD, FORWARD_BACKWARD, Pair, Side, Skip, deform_names, labels,
)

NAME = "chainer sampler"


def unsupported(case):
    """Why the sampler cannot run ``case`` (None when it can)."""
    reasons = []
    if case.dilation != 1:
        reasons.append(f"dilation {case.dilation}")
    if case.offset_groups != 1:
        reasons.append(f"{case.offset_groups} offset groups")
    if reasons:
        return " and ".join(reasons) + " (the sampler has no dilation and one offset group)"
    return None


class ChainerPeer:
    name = NAME

    def __init__(self, xp, memory):
        """``xp``: numpy or cupy; ``memory``: how both sides' peaks are seen."""
        self.chainer, self.adapter = chainer_modules()
        self.xp = xp
        self.memory = memory

    def pairs(self, case, dtype, arrays):
        reason = unsupported(case)
        if reason:
            raise Skip(reason)
        if dtype == "bfloat16":
            raise Skip("Chainer has no bfloat16", scope="dtype")
        chainer, adapter, xp = self.chainer, self.adapter, self.xp
        sampler = chainer.functions.deformable_convolution_2d_sampler
        device_arrays = on_device(xp, arrays, dtype)
        x, weight = device_arrays["input"], device_arrays["weight"]
        offset = adapter.offset_to_chainer_sampler(device_arrays["offset"]).array
        ones = xp.ones((case.batch, case.out_channels, case.height, case.width), x.dtype)
        pad = case.padding

        def forward():
            with chainer.no_backprop_mode():
                return sampler(x, offset, weight, None, 1, pad)

        def forward_backward():
            variables = [chainer.Variable(a) for a in (x, offset, weight)]
            y = sampler(*variables, None, 1, pad)
            y.grad = ones
            y.backward()
            return (y.array,) + tuple(v.grad for v in variables)

        def backward_results(results):
            y, grad_input, grad_offset, grad_weight = results
            return (y, grad_input, adapter.offset_from_chainer_sampler(grad_offset).array,
                    grad_weight)

        cudeform_sides = core_sides(xp, device_arrays, case, mask=False, memory=self.memory)
        chainer_sides = {
            FORWARD: Side(forward, lambda y: (y.array,), self.memory),
            FORWARD_BACKWARD: Side(forward_backward, backward_results, self.memory),
        }
        label, shape = labels(case, dcnv1_form=True)
        return [Pair(label, shape, dtype, passes, self.name, cudeform_sides[passes],
                     chainer_sides[passes], deform_names(passes, mask=False))
                for passes in (FORWARD, FORWARD_BACKWARD)]
