"""The bench's GPU pairs "fused forward (and auto) against the im2col forward", run on
NumPy arrays: their sides, the engine each side asks for, their labels and their
registration."""

from __future__ import annotations

import numpy
import pytest

import cudeform
from cudeform._bench import checks, fused_peer, gpu_peers
from cudeform._bench.cases import Case, inputs
from cudeform._gpu import forward_engine

CASE = Case("T", "tiny", batch=2, in_channels=4, out_channels=4, height=5, width=6, mask=True)


def test_fused_pairs_ask_each_side_for_its_engine(monkeypatch):
    monkeypatch.setenv(forward_engine.VARIABLE, "im2col")
    peer = fused_peer.FusedPeer(xp=numpy)
    modes, real = [], cudeform.deform_conv2d

    def recording(*args, **kwargs):
        modes.append(forward_engine.environment_mode())
        return real(*args, **kwargs)

    monkeypatch.setattr(cudeform, "deform_conv2d", recording)
    fused, auto = peer.pairs(CASE, "float32", inputs(CASE))
    assert modes == ["auto"]  # auto chose while the pairs were built
    # On NumPy the engine is im2col, and auto's label says so.
    assert (fused.label, auto.label) == ("T (fused)", "T (auto: im2col)")
    assert {(p.passes, p.peer, p.dtype) for p in (fused, auto)} == {("fwd", peer.name,
                                                                     "float32")}
    results = [side.results(side.run()) for side in (fused.cudeform, fused.other,
                                                       auto.cudeform)]
    assert modes == ["auto", "fused", "im2col", "auto"]
    assert forward_engine.environment_mode() == "im2col"  # restored after each call
    assert checks.disagreements(fused.names, results[0], results[1], "float32") == []


def test_fused_pairs_hand_bfloat16_over_as_rounded_views():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    arrays = inputs(CASE)
    device = fused_peer.FusedPeer(xp=numpy)._device(arrays, "bfloat16")
    assert device["input"].dtype == numpy.uint16
    numpy.testing.assert_array_equal(
        device["input"], arrays["input"].astype(ml_dtypes.bfloat16).view(numpy.uint16))


def test_fused_pairs_are_a_gpu_peer():
    assert (fused_peer.NAME, fused_peer.load) in gpu_peers.LOADERS
