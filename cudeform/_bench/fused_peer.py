"""cudeform's fused forward against its im2col forward on the GPU, and ``auto``'s choice.

Both sides call ``cudeform.deform_conv2d`` through the core API on the same CuPy arrays
(bfloat16 as 16-bit views), under ``CUDEFORM_CONV_FORWARD`` set for the call. Per case
and dtype, two forward pairs against the im2col forward (the peer):

- ``<case> (fused)``: ``fused``, the fastest tile configuration for the layer;
- ``<case> (auto: <choice>)``: ``auto``, and what it chose for the layer (it times every
  candidate on its first call, made while the pairs are built).

The ratio is cudeform / im2col: below 1, that forward beats im2col + cuBLAS. float32
runs without TF32 (exact FMAs against cuBLAS's exact SGEMM).
"""

from __future__ import annotations

import contextlib
import os

import cudeform
from cudeform import _arrays
from cudeform._bench.imports import optional
from cudeform._bench.pairs import FORWARD, Pair, Side, deform_names, labels
from cudeform._gpu import forward_engine
from cudeform._gpu.storage import narrow, values
from cudeform._shapes import deform_conv2d_geometry

NAME = "cudeform im2col forward"


@contextlib.contextmanager
def forward_mode(mode):
    """``CUDEFORM_CONV_FORWARD`` set to ``mode`` within the context."""
    previous = os.environ.get(forward_engine.VARIABLE)
    os.environ[forward_engine.VARIABLE] = mode
    try:
        yield
    finally:
        if previous is None:
            del os.environ[forward_engine.VARIABLE]
        else:
            os.environ[forward_engine.VARIABLE] = previous


class FusedPeer:
    name = NAME

    def __init__(self, xp=None):
        """``xp``: the array module (CuPy; tests pass NumPy, where both sides are im2col)."""
        self.xp = xp if xp is not None else optional("cupy")

    def _device(self, arrays, dtype):
        xp = self.xp
        if dtype == "bfloat16":
            return {k: None if a is None else narrow(xp.asarray(a), xp.dtype(xp.uint16),
                                                      dtype, xp) for k, a in arrays.items()}
        return {k: None if a is None else xp.asarray(a).astype(dtype) for k, a in arrays.items()}

    def pairs(self, case, dtype, arrays):
        xp = self.xp
        device = self._device(arrays, dtype)
        x, offset, weight, mask = (device[k] for k in ("input", "offset", "weight", "mask"))
        options = dict(padding=case.padding, dilation=case.dilation, mask=mask)

        def side(mode):
            def run():
                views = (_arrays.bfloat16_views() if dtype == "bfloat16"
                         else contextlib.nullcontext())
                with forward_mode(mode), views:
                    return cudeform.deform_conv2d(x, offset, weight, **options)
            return Side(run, lambda y: (values(y, dtype, xp),), "cupy")

        auto = side("auto")
        auto.run()  # auto chooses (and times) now, so that the label can name its choice
        g = deform_conv2d_geometry(x.shape, offset.shape, weight.shape, None,
                                   None if mask is None else mask.shape,
                                   padding=case.padding, dilation=case.dilation)
        with forward_mode("auto"):
            chosen = forward_engine.default_engine(xp).choice(
                g, dtype, has_mask=mask is not None, has_bias=False)
        label, shape = labels(case)
        names = deform_names(FORWARD, case.mask)
        return [Pair(f"{label} (fused)", shape, dtype, FORWARD, self.name, side("fused"),
                     side("im2col"), names),
                Pair(f"{label} (auto: {chosen})", shape, dtype, FORWARD, self.name, auto,
                     side("im2col"), names)]


def load():
    return FusedPeer()
