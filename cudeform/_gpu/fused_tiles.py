"""The tile configurations of the fused forward (``kernels/deform_conv_fused.cu``) and
what each one needs: its multiply (tensor cores or exact FMAs), dtypes, compute
capability and static shared memory.

:func:`shared_bytes` mirrors the kernel's ``CUDEFORM_SHARED`` declarations; the resource
test checks it against ptxas's report for every instantiation, so the two cannot drift.
"""

from __future__ import annotations

import dataclasses

# Static shared memory one block may declare without opting in, on every architecture.
SHARED_LIMIT = 48 * 1024
# WMMA with bfloat16 and TF32 needs compute capability 8.0; the family is built from 8.0 on.
MIN_ARCH = 80
ITEMSIZES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
# The multiplies: WMMA on tensor cores (float16 and bfloat16; float32 as TF32), or exact
# FMAs (float32 and float64).
MATH_DTYPES = {"tensor": ("float16", "bfloat16", "float32"), "simt": ("float32", "float64")}
_WARP = 32
_FRAGMENT = 16 * 16  # floats in one accumulator fragment


@dataclasses.dataclass(frozen=True)
class Tile:
    """``block_m`` output pixels by ``block_n`` output channels per block, the reduction in
    steps of ``block_k`` (input channel, tap) pairs; a block has ``threads`` threads, a
    multiple of ``block_m`` (default: ``block_m``)."""

    block_m: int
    block_n: int
    block_k: int
    threads: int = 0

    def __post_init__(self):
        if not self.threads:
            object.__setattr__(self, "threads", self.block_m)

    @property
    def name(self):
        """E.g. ``128x64x32``, with ``/256`` when the block has other than block_m threads."""
        base = f"{self.block_m}x{self.block_n}x{self.block_k}"
        return base if self.threads == self.block_m else f"{base}/{self.threads}"


# The configurations compiled; the first is the one a forced fused forward tries first.
# The wide ones sample each pixel once for more output channels (C_out / block_n times
# in all), at the cost of more threads a block.
TILES = (Tile(128, 64, 32), Tile(64, 64, 32), Tile(128, 32, 32), Tile(128, 128, 32, 256),
         Tile(64, 256, 32, 256))


def shared_bytes(tile, math, dtype_name):
    """Bytes of static shared memory of the instantiation: the sampled tile A
    (block_k x block_m) and the weight tile B (block_n x block_k) in the storage type,
    their rows padded as the kernel pads them, and for WMMA one 16x16 float staging
    fragment per warp (threads / 32 warps)."""
    size = ITEMSIZES[dtype_name]
    m, n, k = tile.block_m, tile.block_n, tile.block_k
    if math == "tensor":
        pad = 16 // size  # rows of a multiple of 16 bytes, as load_matrix_sync needs
        return (k * (m + pad) + n * (k + pad)) * size + tile.threads // _WARP * _FRAGMENT * 4
    return (k * m + n * (k + 1)) * size  # B's odd row length spreads its reads over banks


def built_dtypes(tile, math):
    """The dtypes ``tile`` is compiled for with ``math``: those whose tiles fit
    :data:`SHARED_LIMIT`."""
    return tuple(dtype for dtype in MATH_DTYPES[math]
                 if shared_bytes(tile, math, dtype) <= SHARED_LIMIT)


def math_for(dtype_name, allow_tf32):
    """The multiply a dtype uses: tensor cores for 16-bit types and for float32 when TF32
    is allowed, exact FMAs otherwise."""
    if dtype_name == "float32":
        return "tensor" if allow_tf32 else "simt"
    return "simt" if dtype_name == "float64" else "tensor"


def why_not_built(tile, math, dtype_name):
    """Why ``tile`` has no ``math`` instantiation for ``dtype_name``, or None."""
    if dtype_name not in MATH_DTYPES[math]:
        return f"{math} does not multiply {dtype_name}"
    need = shared_bytes(tile, math, dtype_name)
    if need > SHARED_LIMIT:
        return (f"its tiles need {need} bytes of shared memory in {dtype_name}, over the "
                f"{SHARED_LIMIT} bytes a block may declare statically")
    return None
