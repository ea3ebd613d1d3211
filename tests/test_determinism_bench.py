"""The bench's GPU pair "deterministic backward against the default backward", run on
NumPy arrays: its two sides, the modes they run in, and its registration."""

from __future__ import annotations

import numpy

import cudeform
from cudeform._bench import checks, determinism_peer, gpu_peers
from cudeform._bench.cases import Case, inputs


def test_pair_runs_the_backward_in_both_modes(monkeypatch):
    case = Case("T", "tiny", batch=2, in_channels=4, out_channels=4, height=5, width=6,
                mask=True)
    peer = determinism_peer.DeterminismPeer(xp=numpy)
    (pair,) = peer.pairs(case, "float32", inputs(case))
    assert (pair.passes, pair.peer, pair.label) == ("bwd", peer.name, "T (deterministic)")

    modes, real = [], cudeform.deform_conv2d_backward

    def recording(*args, **kwargs):
        modes.append(cudeform.is_deterministic())
        return real(*args, **kwargs)

    monkeypatch.setattr(cudeform, "deform_conv2d_backward", recording)
    deterministic, default = pair.cudeform.run(), pair.other.run()
    assert modes == [True, False] and cudeform.is_deterministic() is False
    assert len(deterministic) == len(pair.names) == 5  # output and four gradients
    assert checks.disagreements(pair.names, deterministic, default, "float32") == []


def test_pair_is_a_gpu_peer():
    assert ("cudeform default backward", determinism_peer.load) in gpu_peers.LOADERS
