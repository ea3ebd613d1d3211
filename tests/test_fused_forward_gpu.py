"""The fused forward on a GPU (skipped without one): the real WMMA fragments, shared
memory and barriers, through the public API with ``CUDEFORM_CONV_FORWARD``.

Each tile configuration of each path (float32 exact and TF32, float64, float16,
bfloat16) must agree with the NumPy path as tests/fused_cases.py checks; ``auto`` must
choose once per key and give the same results; compute-sanitizer must see no illegal
access (memcheck) and no shared-memory hazard (racecheck) in the fused kernels.
"""

from __future__ import annotations

import contextlib
import logging

import numpy
import pytest

import cudeform
from cudeform import _arrays, _modes
from cudeform._gpu import forward_engine, fused_tiles
from tests.fused_cases import (
    OPERANDS, PATHS, TILE_EDGES, assert_matches_oracle, built_tiles, rounded,
)
from tests.gpu import cupy, requires_gpu, run_under_sanitizer
from tests.helpers import CONV_CASES, bad_offset_case, conv_case, split_case

pytestmark = requires_gpu


def gpu_forward(low, options, path):
    """``cudeform.deform_conv2d`` on device copies of ``low`` (bfloat16 as uint16 views)."""
    dtype_name, allow_tf32 = PATHS[path]
    views = dtype_name == "bfloat16"
    device = {k: None if v is None else cupy.asarray(v.view(numpy.uint16) if views else v)
              for k, v in low.items()}
    with _modes.override(allow_tf32=allow_tf32), (
            _arrays.bfloat16_views() if views else contextlib.nullcontext()):
        output = cudeform.deform_conv2d(*(device[k] for k in OPERANDS[:3]), device["bias"],
                                        mask=device["mask"], **options)
    host = cupy.asnumpy(output)
    return host.view(low["input"].dtype) if views else host


@pytest.fixture
def fused_tile(monkeypatch):
    """Force the fused forward with one tile: ``fused_tile(tile)``."""
    monkeypatch.setenv(forward_engine.VARIABLE, "fused")

    def force(tile):
        monkeypatch.setattr(fused_tiles, "TILES", (tile,))
        monkeypatch.setattr(forward_engine, "_choices", {})
    return force


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["dcnv2", "dcnv1-no-bias", "groups2-offset-groups4",
                                  "kernel32-stride21-pad10-dil21", "batch0", "batch33",
                                  "across-borders"])
def test_fused_gpu_matches_numpy(fused_tile, name, path):
    rng = numpy.random.default_rng(5000 + list(CONV_CASES).index(name))
    arrays, options = split_case(conv_case(rng, **CONV_CASES[name]))
    low = rounded(arrays, path)
    for tile in built_tiles(path):
        fused_tile(tile)
        assert_matches_oracle(gpu_forward(low, options, path), low, options, path)


@pytest.mark.parametrize("path", PATHS)
def test_fused_gpu_tile_edges_and_bad_offsets(fused_tile, path):
    rng = numpy.random.default_rng(5100)
    for arrays, options in (split_case(conv_case(rng, **TILE_EDGES)),
                            bad_offset_case(rng, numpy.float64)):
        low = rounded(arrays, path)
        for tile in built_tiles(path):
            fused_tile(tile)
            assert_matches_oracle(gpu_forward(low, options, path), low, options, path)


def test_fused_gpu_auto_chooses_once_per_key(monkeypatch, caplog):
    monkeypatch.setenv(forward_engine.VARIABLE, "auto")
    monkeypatch.setattr(forward_engine, "_choices", {})
    rng = numpy.random.default_rng(5200)
    arrays, options = split_case(conv_case(rng, **TILE_EDGES))
    low = rounded(arrays, "float16-tensor")
    with caplog.at_level(logging.DEBUG, logger=forward_engine.__name__):
        first = gpu_forward(low, options, "float16-tensor")
        second = gpu_forward(low, options, "float16-tensor")
    assert len(caplog.records) == 1 and "auto forward" in caplog.records[0].getMessage()
    numpy.testing.assert_array_equal(first, second)
    assert_matches_oracle(first, low, options, "float16-tensor")


SANITIZER_SCRIPT = '''
import os
from cudeform._gpu import forward_engine, fused_tiles
os.environ[forward_engine.VARIABLE] = "fused"
rng = numpy.random.default_rng(0)
for dtype in (numpy.float16, numpy.float32, numpy.float64):
    for allow_tf32 in ((False, True) if dtype == numpy.float32 else (False,)):
        cudeform.set_allow_tf32(allow_tf32)
        x = cupy.asarray(rng.standard_normal((3, 40, 9, 13)).astype(dtype))
        offset = cupy.asarray((4 * rng.standard_normal((3, 36, 9, 13))).astype(dtype))
        mask = cupy.asarray(rng.uniform(0, 1, (3, 18, 9, 13)).astype(dtype))
        weight = cupy.asarray(rng.standard_normal((70, 40, 3, 3)).astype(dtype))
        y = cudeform.deform_conv2d(x, offset, weight, padding=1, mask=mask)
        cupy.cuda.runtime.deviceSynchronize()
        assert bool(cupy.isfinite(y).all())
'''


# Named as the session script's sanitizer stages select them (-k compute_sanitizer_...).
def test_fused_gpu_compute_sanitizer_memcheck(tmp_path):
    run_under_sanitizer(SANITIZER_SCRIPT, tmp_path, "memcheck")


def test_fused_gpu_compute_sanitizer_racecheck(tmp_path):
    run_under_sanitizer(SANITIZER_SCRIPT, tmp_path, "racecheck")
