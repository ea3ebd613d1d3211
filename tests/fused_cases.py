"""The fused forward's comparison with the NumPy path, shared by its host (block
emulator) and GPU tests: the paths (dtype and multiply), the inputs rounded to the
path's dtype, and the check of an output against the oracle.

float32 with exact FMAs and float64 must meet the usual TOLERANCES. Tensor-core paths
(float32 as TF32, float16, bfloat16) must stay within a bound derived from their
rounding, against the float64 oracle on the same rounded inputs.
"""

from __future__ import annotations

import numpy
import pytest

from cudeform._cpu import deform_conv as cpu
from cudeform._gpu import fused_tiles
from cudeform._shapes import deform_conv2d_geometry
from tests.helpers import TOLERANCES

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


def numpy_dtype(name):
    """The NumPy dtype of a dtype name; bfloat16 (ml_dtypes) skips when missing."""
    if name == "bfloat16":
        return numpy.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return numpy.dtype(name)


def built_tiles(path):
    """The tiles compiled for a path, in fused_tiles.TILES order."""
    dtype_name, allow_tf32 = PATHS[path]
    math = fused_tiles.math_for(dtype_name, allow_tf32)
    return [t for t in fused_tiles.TILES if fused_tiles.why_not_built(t, math, dtype_name) is None]


def geometry(arrays, options):
    return deform_conv2d_geometry(*(None if arrays[k] is None else arrays[k].shape
                                    for k in OPERANDS), **options)


def rounded(arrays, path):
    """``arrays`` (a float64 case) in the path's storage dtype."""
    dtype = numpy_dtype(PATHS[path][0])
    with numpy.errstate(over="ignore"):  # huge offsets become infinite in float16
        return {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}


def round_tf32(array):
    """float32 values rounded to TF32 as __float_to_tf32 rounds (nearest, ties away)."""
    bits = numpy.ascontiguousarray(array, numpy.float32).view(numpy.uint32)
    return ((bits + numpy.uint32(0x1000)) & numpy.uint32(0xFFFFE000)).view(numpy.float32)


def assert_matches_oracle(output, low, options, path):
    """``output`` of the fused forward on ``low`` (the rounded inputs) agrees with the
    NumPy path as the path's precision allows."""
    dtype_name, allow_tf32 = PATHS[path]
    g = geometry(low, options)
    assert output.dtype == numpy_dtype(dtype_name) and output.shape == g.output_shape
    got = output.astype(numpy.float64)
    assert numpy.isfinite(got).all()
    if dtype_name in ("float32", "float64") and not allow_tf32:
        rtol, atol = TOLERANCES[numpy.dtype(dtype_name)]
        numpy.testing.assert_allclose(output, cpu.forward(*(low[k] for k in OPERANDS), g),
                                      rtol=rtol, atol=atol)
        return
    exact = {k: None if v is None else v.astype(numpy.float64) for k, v in low.items()}
    if allow_tf32:  # the kernel rounds the weights and its samples to TF32
        exact["input"], exact["weight"] = (round_tf32(low[k]).astype(numpy.float64)
                                           for k in ("input", "weight"))
    expected = cpu.forward(*(exact[k] for k in OPERANDS), g)
    # The sum of |weight| * |sample|, with samples of |input| (bilinear weights are >= 0).
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
