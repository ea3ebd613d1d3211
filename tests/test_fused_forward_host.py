"""The fused forward kernel, run in the block emulator, against the NumPy path.

``cudeform._gpu.deform_conv.forward`` runs with an engine that forces one fused tile
configuration and the block emulator's launcher (every block and thread of the real
launch, shared memory checked for races, WMMA with a permuted fragment mapping). Its
output must equal ``cudeform._cpu.deform_conv.forward`` (an independent oracle) on the
conv test matrix, in every multiply of every dtype:

- float32 with exact FMAs and float64: the usual TOLERANCES;
- float32 on TF32 tensor cores, float16 and bfloat16: within a bound derived from the
  rounding of each sample (and, for 16-bit types, of the output) against the float64
  oracle on the same rounded inputs.
"""

from __future__ import annotations

import numpy
import pytest

from cudeform._cpu import deform_conv as cpu
from cudeform._gpu import deform_conv as gpu
from cudeform._gpu import forward_engine, fused_forward, fused_tiles
from cudeform._shapes import deform_conv2d_geometry
from tests.helpers import (
    CONV_CASES, TOLERANCES, bad_offset_case, conv_case, force_64_bit_indices,
    integer_offset_case, split_case,
)
from tests.host.block_loader import block_launch
from tests.host.loader import compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")

OPERANDS = ("input", "offset", "weight", "bias", "mask")
# (dtype name, allow_tf32): every multiply of every dtype.
PATHS = {
    "float32-simt": ("float32", False),
    "float32-tf32": ("float32", True),
    "float64-simt": ("float64", False),
    "float16-tensor": ("float16", False),
    "bfloat16-tensor": ("bfloat16", False),
}
# Unit roundoff of the types a sample is rounded to before the multiply.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "tf32": 2.0**-11}
# Every size is off the tile sizes: 3 * 9 * 13 = 351 pixels (tiles of 64 and 128), 70
# output channels (16, 32, 64), 2 offset groups of 40 channels (chunks of 32), 720
# reduction steps.
TILE_EDGES = dict(batch=3, in_channels=80, out_channels=70, offset_groups=2, size=(9, 13))


def _dtype(name):
    if name == "bfloat16":
        return numpy.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return numpy.dtype(name)


def _tiles(dtype_name, allow_tf32):
    math = fused_tiles.math_for(dtype_name, allow_tf32)
    return [t for t in fused_tiles.TILES if fused_tiles.why_not_built(t, math, dtype_name) is None]


def _tile(path, index):
    """The tile a case runs with: the built tiles taken in turn over the cases."""
    tiles = _tiles(*PATHS[path])
    return tiles[index % len(tiles)]


def _geometry(arrays, options):
    return deform_conv2d_geometry(*(None if arrays[k] is None else arrays[k].shape
                                    for k in OPERANDS), **options)


def run_fused(arrays, options, path, tile, launch=block_launch):
    """The fused forward of ``arrays`` (in the path's dtype) in the block emulator."""
    dtype_name, allow_tf32 = PATHS[path]
    engine = forward_engine.Engine(forward_engine.Device("host"), mode="fused", tiles=(tile,),
                                   allow_tf32=allow_tf32)
    return gpu.forward(*(arrays[k] for k in OPERANDS), _geometry(arrays, options),
                       dtype_name=dtype_name, xp=numpy, launch=launch, engine=engine)


def _round_tf32(array):
    bits = numpy.ascontiguousarray(array, numpy.float32).view(numpy.uint32)
    return ((bits + numpy.uint32(0x1000)) & numpy.uint32(0xFFFFE000)).view(numpy.float32)


def assert_fused_matches_numpy(arrays, options, path, tile, launch=block_launch):
    """Run ``arrays`` (a float64 case) through the fused forward in ``path`` and compare
    with the NumPy path. Returns the fused output."""
    dtype_name, allow_tf32 = PATHS[path]
    dtype = _dtype(dtype_name)
    with numpy.errstate(over="ignore"):  # huge offsets become infinite in float16
        low = {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}
    output = run_fused(low, options, path, tile, launch)
    g = _geometry(arrays, options)
    assert output.dtype == dtype and output.shape == g.output_shape
    got = output.astype(numpy.float64)
    assert numpy.isfinite(got).all()
    if dtype_name in ("float32", "float64") and not allow_tf32:
        expected = cpu.forward(*(low[k] for k in OPERANDS), g)
        rtol, atol = TOLERANCES[dtype]
        numpy.testing.assert_allclose(output, expected, rtol=rtol, atol=atol)
        return output
    exact = {k: None if v is None else v.astype(numpy.float64) for k, v in low.items()}
    if allow_tf32:  # the kernel rounds the weights and its samples to TF32
        exact["input"], exact["weight"] = (_round_tf32(low[k]).astype(numpy.float64)
                                           for k in ("input", "weight"))
    expected = cpu.forward(*(exact[k] for k in OPERANDS), g)
    # |sum| of |weight| * |sample|, with samples of |input| (bilinear weights are >= 0).
    magnitude = cpu.forward(numpy.abs(exact["input"]), exact["offset"],
                            numpy.abs(exact["weight"]), None,
                            None if exact["mask"] is None else numpy.abs(exact["mask"]), g)
    u = UNIT_ROUNDOFF["tf32" if allow_tf32 else dtype_name]
    taps = g.in_channels // g.groups * g.taps
    # Each sample is rounded once (relative u; from a TF32-rounded input, u more); 16-bit
    # outputs are rounded once more; float32 sums and sampling add at most taps ulps.
    bound = ((2 if allow_tf32 else 1) * u * magnitude + (taps + 8) * 2.0**-24 * magnitude
             + (0 if allow_tf32 else u) * numpy.abs(expected))
    excess = numpy.abs(got - expected) - bound
    assert (excess <= 0).all(), (f"{(excess > 0).sum()} outputs past the bound; worst "
                                 f"{numpy.abs(got - expected).max()} vs {bound.max()}")
    return output


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
    if tile not in _tiles(*PATHS[path]):
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
    from tests.host.block_loader import schedule_seed

    rng = numpy.random.default_rng(3600)
    arrays, options = split_case(conv_case(rng, batch=3, in_channels=40, out_channels=20,
                                           offset_groups=2, size=(6, 7)))
    low = {k: None if v is None else v.astype(numpy.float16) for k, v in arrays.items()}
    tile = fused_tiles.TILES[1]
    reference = run_fused(low, options, "float16-tensor", tile)
    with schedule_seed(seed):
        shuffled = run_fused(low, options, "float16-tensor", tile)
    numpy.testing.assert_array_equal(shuffled, reference)
