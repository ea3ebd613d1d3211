"""The fused forward kernel, run in the block emulator, against the NumPy path.

``cudeform._gpu.deform_conv.forward`` runs with an engine that forces one fused tile
configuration and the block emulator's launcher (every block and thread of the real
launch, shared memory checked for races, WMMA with a permuted fragment mapping). Its
output must equal ``cudeform._cpu.deform_conv.forward`` (an independent oracle) on the
conv test matrix, in every multiply of every dtype, as tests/fused_cases.py checks:
float32 with exact FMAs and float64 to the usual TOLERANCES; float32 on TF32 tensor
cores, float16 and bfloat16 within a bound derived from their rounding.
"""

from __future__ import annotations

import numpy
import pytest

from cudeform._gpu import deform_conv as gpu
from cudeform._gpu import forward_engine, fused_forward, fused_tiles
from tests.fused_cases import (
    OPERANDS, PATHS, TILE_EDGES, assert_matches_oracle, built_tiles, geometry, rounded,
)
from tests.helpers import (
    CONV_CASES, bad_offset_case, conv_case, force_64_bit_indices, integer_offset_case,
    split_case,
)
from tests.host.block_loader import block_launch, schedule_seed
from tests.host.loader import compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")

def _tile(path, index):
    """The tile a case runs with: the built tiles taken in turn over the cases."""
    tiles = built_tiles(path)
    return tiles[index % len(tiles)]


def run_fused(arrays, options, path, tile, launch=block_launch):
    """The fused forward of ``arrays`` (in the path's dtype) in the block emulator."""
    dtype_name, allow_tf32 = PATHS[path]
    engine = forward_engine.Engine(forward_engine.Device("host"), mode="fused", tiles=(tile,),
                                   allow_tf32=allow_tf32)
    return gpu.forward(*(arrays[k] for k in OPERANDS), geometry(arrays, options),
                       dtype_name=dtype_name, xp=numpy, launch=launch, engine=engine)


def assert_fused_matches_numpy(arrays, options, path, tile, launch=block_launch):
    """Run ``arrays`` (a float64 case), rounded to the path's dtype, through the fused
    forward with ``tile`` and compare with the NumPy path."""
    low = rounded(arrays, path)
    assert_matches_oracle(run_fused(low, options, path, tile, launch), low, options, path)


paths = pytest.mark.parametrize("path", PATHS)


@paths
@pytest.mark.parametrize("name", CONV_CASES)
def test_fused_matches_numpy(name, path):
    index = list(CONV_CASES).index(name)
    rng = numpy.random.default_rng(3000 + index)
    arrays, options = split_case(conv_case(rng, **CONV_CASES[name]))
    assert_fused_matches_numpy(arrays, options, path, _tile(path, index))


@paths
@pytest.mark.parametrize("tile", fused_tiles.TILES, ids=lambda t: t.name)
def test_fused_tile_edges(path, tile):
    if tile not in built_tiles(path):
        pytest.skip(f"{tile.name} is not built for {path}")
    rng = numpy.random.default_rng(3100)
    arrays, options = split_case(conv_case(rng, **TILE_EDGES))
    assert_fused_matches_numpy(arrays, options, path, tile)


@paths
def test_fused_integer_offsets_on_borders_and_kinks(path):
    rng = numpy.random.default_rng(3200)
    arrays, options = integer_offset_case(rng, numpy.float64)
    assert_fused_matches_numpy(arrays, options, path, _tile(path, 1))


@paths
def test_fused_non_finite_and_huge_offsets(path):
    rng = numpy.random.default_rng(3300)
    arrays, options = bad_offset_case(rng, numpy.float64)
    assert_fused_matches_numpy(arrays, options, path, _tile(path, 2))


@paths
def test_fused_64_bit_index_instantiation(monkeypatch, path):
    rng = numpy.random.default_rng(3400)
    arrays, options = split_case(conv_case(
        rng, batch=3, groups=2, offset_groups=2, kernel=(3, 2), stride=(2, 1),
        padding=(1, 0), dilation=(2, 1), size=(7, 5), offset_scale=4.0))
    force_64_bit_indices(monkeypatch, fused_forward)
    calls = []

    def recording(kernel, dtype_name, bits, count, **args):
        calls.append((kernel, bits, count))
        return block_launch(kernel, dtype_name, bits, count, **args)

    assert_fused_matches_numpy(arrays, options, path, _tile(path, 0), recording)
    assert [bits for _, bits, _ in calls] == [64]


def test_fused_is_one_launch_over_the_batch_with_32_bit_indices():
    rng = numpy.random.default_rng(3500)
    arrays, options = split_case(conv_case(rng, **TILE_EDGES))
    tile = fused_tiles.TILES[0]
    calls = []

    def recording(kernel, dtype_name, bits, count, **args):
        calls.append((kernel.label, bits, count))
        return block_launch(kernel, dtype_name, bits, count, **args)

    assert_fused_matches_numpy(arrays, options, "float32-simt", tile, recording)
    # 351 pixels in tiles of 128, 70 channels in tiles of 64, one group.
    assert calls == [(f"deform_conv_fused_simt_{tile.name}", 32, (3, 2, 1))]


@pytest.mark.parametrize("seed", [1, 2])
def test_fused_result_does_not_depend_on_the_thread_order(seed):
    rng = numpy.random.default_rng(3600)
    arrays, options = split_case(conv_case(rng, batch=3, in_channels=40, out_channels=20,
                                           offset_groups=2, size=(6, 7)))
    low = rounded(arrays, "float16-tensor")
    tile = fused_tiles.TILES[1]
    reference = run_fused(low, options, "float16-tensor", tile)
    with schedule_seed(seed):
        shuffled = run_fused(low, options, "float16-tensor", tile)
    numpy.testing.assert_array_equal(shuffled, reference)
