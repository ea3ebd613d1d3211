"""The block emulator that runs the fused forward on the host (tests/host/block_shim.h).

Correct kernels (a tiled GEMM through shared memory, block sums with barriers, WMMA
GEMMs in every layout and 16-bit type) give NumPy's results in every thread order; broken
ones (a missing barrier in each place it matters, a write-write conflict, an unwritten
read, an index past the array, a barrier half the block never reaches, lanes that
disagree on a WMMA pointer) fail the launch with a message that names the fault, and a
kernel that assumes a fragment mapping gets wrong results. The host 16-bit and TF32
conversions agree with NumPy's float16, ml_dtypes' bfloat16 and the TF32 rounding rule.
"""

from __future__ import annotations

import ctypes
import functools

import numpy
import pytest

from tests.host import block_loader
from tests.host.block_loader import EmulatorError, array_pointer, schedule_seed
from tests.host.loader import compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")

SEEDS = (0, 1, 12345)


@functools.lru_cache(maxsize=None)
def library():
    return block_loader.build("emulator_kernels",
                              (block_loader.HERE / "emulator_kernels.cu").read_text())


def launch(name, grid, block, *args):
    """Run the test kernel ``name``; arrays are passed as pointers, ints as C ints."""
    c_args = [array_pointer(a) if isinstance(a, numpy.ndarray) else ctypes.c_int(a)
              for a in args]
    block_loader.run(getattr(library(), name), grid, block, *c_args)


def aligned(array):
    """A copy of ``array`` whose data starts on a 32-byte boundary (as WMMA needs)."""
    raw = numpy.empty(array.nbytes + 32, dtype=numpy.uint8)
    start = -raw.ctypes.data % 32
    out = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


# --- correct kernels ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_tiled_gemm_with_shared_memory_matches_numpy(seed):
    rng = numpy.random.default_rng(5)
    m, n, k = 37, 29, 45  # no size a multiple of the 16 x 16 tile
    a = rng.standard_normal((m, k)).astype(numpy.float32)
    b = rng.standard_normal((k, n)).astype(numpy.float32)
    c = numpy.full((m, n), numpy.nan, numpy.float32)
    with schedule_seed(seed):
        launch("tiled_gemm_ok", (2, 3, 1), (16, 16, 1), a, b, c, m, n, k)
    numpy.testing.assert_allclose(c, a.astype(numpy.float64) @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kernel", ["block_sum_ok", "block_sum_syncwarp"])
def test_block_sum_with_barriers_matches_numpy(kernel, seed):
    rng = numpy.random.default_rng(6)
    values = rng.standard_normal(1000)
    sums = numpy.full(4, numpy.nan)
    with schedule_seed(seed):
        launch(kernel, (4, 1, 1), (256, 1, 1), values, sums, values.size)
    expected = numpy.add.reduceat(numpy.concatenate([values, numpy.zeros(24)]),
                                  numpy.arange(0, 1024, 256))
    numpy.testing.assert_allclose(sums, expected, rtol=1e-12, atol=1e-12)


# --- faults the emulator must report ------------------------------------------------------


@pytest.mark.parametrize("kernel, expected", [
    # Thread 0 may read a tile element before or after its writer got to it.
    ("tiled_gemm_no_barrier_after_writes", r"thread \d+ reads [ab]_tile\[\d+\], (written by "
                                           r"thread \d+ with no barrier|which no thread of the "
                                           r"block has written yet)"),
    # The next iteration's write meets a read of this one, in either order.
    ("tiled_gemm_no_barrier_after_reads", r"race: thread \d+ (writes|reads) [ab]_tile\[\d+\]"),
])
def test_missing_barrier_in_the_tiled_gemm_is_caught(kernel, expected):
    a = numpy.ones((32, 32), numpy.float32)
    c = numpy.zeros((32, 32), numpy.float32)
    with pytest.raises(EmulatorError, match=expected):
        launch(kernel, (2, 2, 1), (16, 16, 1), a, a, c, 32, 32, 32)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kernel", ["block_sum_tree_without_barrier",
                                    "block_sum_warp_without_barrier"])
def test_missing_barrier_in_the_reduction_is_caught(kernel, seed):
    values = numpy.ones(512)
    sums = numpy.zeros(2)
    with schedule_seed(seed), pytest.raises(EmulatorError, match=r"race: thread \d+ "
                                                                 r"(reads|writes) partial"):
        launch(kernel, (2, 1, 1), (256, 1, 1), values, sums, values.size)


@pytest.mark.parametrize("kernel, threads, expected", [
    ("write_write_conflict", 64, r"race: thread \d+ writes cell\[0\], also written by thread"),
    ("uninitialised_read", 64, r"thread 0 reads cells\[0\], which no thread of the block has "
                               r"written yet"),
    ("out_of_bounds", 64, r"thread 32 accesses cells\[32\], outside its 32 elements"),
    ("early_return", 64, r"deadlock: .*threads 0-31 wait in __syncthreads at line \d+; "
                         r"threads 32-63 have returned"),
    ("divergent_barriers", 64, r"divergent __syncthreads: this thread is at line \d+ while "
                               r"others wait at line \d+"),
])
def test_shared_memory_and_barrier_faults_are_caught(kernel, threads, expected):
    out = numpy.zeros(threads, numpy.float32)
    with pytest.raises(EmulatorError, match=expected):
        launch(kernel, (1, 1, 1), (threads, 1, 1), out)


def test_a_fault_names_its_block():
    out = numpy.zeros(64, numpy.float32)
    with pytest.raises(EmulatorError, match=r"^block \(0, 0, 0\), thread \d+: race"):
        launch("write_write_conflict", (1, 1, 1), (64, 1, 1), out)


# --- WMMA ---------------------------------------------------------------------------------


def _round_tf32(values):
    """float32 values rounded to TF32 (10 mantissa bits), ties away from zero."""
    bits = numpy.asarray(values, numpy.float32).view(numpy.uint32)
    return ((bits + numpy.uint32(0x1000)) & numpy.uint32(0xFFFFE000)).view(numpy.float32)


def _stored(matrix, layout, ld):
    """``matrix`` (rows x cols) laid out row- or column-major with leading dimension ld,
    padded to 16 * ld elements (what the kernel copies to shared memory)."""
    rows, cols = matrix.shape
    major = matrix if layout == "row" else matrix.T
    out = numpy.zeros((16 * ld,), matrix.dtype)
    out[:major.shape[0] * ld].reshape(major.shape[0], ld)[:, :major.shape[1]] = major
    return out


WMMA_CASES = {  # kernel suffix: (storage dtype name, k, a layout, b layout)
    "half_row_col": ("float16", 16, "row", "col"),
    "half_col_row": ("float16", 16, "col", "row"),
    "bfloat16_row_row": ("bfloat16", 16, "row", "row"),
    "bfloat16_col_col": ("bfloat16", 16, "col", "col"),
    "tf32_row_col": ("float32", 8, "row", "col"),
    "tf32_col_row": ("float32", 8, "col", "row"),
}


@pytest.mark.parametrize("store_rows", [True, False], ids=["store-row", "store-col"])
@pytest.mark.parametrize("case", WMMA_CASES)
def test_wmma_matches_numpy(case, store_rows):
    dtype_name, k, layout_a, layout_b = WMMA_CASES[case]
    dtype = (numpy.dtype(pytest.importorskip("ml_dtypes").bfloat16) if dtype_name == "bfloat16"
             else numpy.dtype(dtype_name))
    rng = numpy.random.default_rng(list(WMMA_CASES).index(case))
    a = rng.standard_normal((16, k)).astype(dtype)
    b = rng.standard_normal((k, 16)).astype(dtype)
    c = rng.standard_normal((16, 16)).astype(numpy.float32)
    lda, ldb, ldc = 24, 40, 20  # leading dimensions past the matrices' own
    d = aligned(numpy.zeros(256, numpy.float32))
    launch(f"wmma_{case}", (1, 1, 1), (32, 1, 1), aligned(_stored(a, layout_a, lda)),
           aligned(_stored(b, layout_b, ldb)), aligned(_stored(c, "col", ldc)), d,
           lda, ldb, ldc, 0, int(store_rows))
    result = d.reshape(16, 16) if store_rows else d.reshape(16, 16).T
    a64, b64 = a.astype(numpy.float64), b.astype(numpy.float64)
    if dtype_name == "float32":  # the kernel rounds its operands to TF32
        a64, b64 = (_round_tf32(x).astype(numpy.float64) for x in (a, b))
        unrounded = a.astype(numpy.float64) @ b + c
        assert numpy.abs(result - unrounded).max() > 1e-5  # TF32, not float32, products
    expected = a64 @ b64 + c
    scale = numpy.abs(a64) @ numpy.abs(b64) + numpy.abs(c)  # float32 sums of exact products
    assert (numpy.abs(result - expected) <= 2 * k * 2.0**-24 * scale).all()


def test_a_kernel_that_assumes_a_fragment_mapping_gets_wrong_results():
    rng = numpy.random.default_rng(8)
    a = aligned(rng.standard_normal((16, 16)).astype(numpy.float16))
    b = aligned(rng.standard_normal((16, 16)).astype(numpy.float16))
    d = numpy.zeros(256, numpy.float32)
    launch("wmma_assumed_mapping", (1, 1, 1), (32, 1, 1), a, b, d)
    expected = a.astype(numpy.float64) @ b
    wrong = ~numpy.isclose(d.reshape(16, 16), expected, rtol=1e-4, atol=1e-4)
    assert wrong.mean() > 0.5


def test_lanes_that_disagree_on_a_wmma_pointer_are_caught():
    a = aligned(numpy.zeros(512, numpy.float16))
    d = numpy.zeros(32, numpy.float32)
    with pytest.raises(EmulatorError, match=r"lanes of warp 0 disagree on the arguments of "
                                            r"load_matrix_sync"):
        launch("wmma_lanes_disagree", (1, 1, 1), (32, 1, 1), a, d)


# --- host 16-bit and TF32 conversions -----------------------------------------------------


def _convert(name, values, out_dtype):
    out = numpy.empty(values.shape, out_dtype)
    getattr(library(), name)(array_pointer(values), array_pointer(out),
                             ctypes.c_longlong(values.size))
    return out


def _float_probes(rng, low_bits):
    """float32 values that probe rounding to ``16 - low_bits`` fewer bits: random bit
    patterns, their exact halfway points and one unit either side, and the specials."""
    bits = rng.integers(0, 2**32, size=200_000, dtype=numpy.uint64).astype(numpy.uint32)
    half_way = (bits & ~numpy.uint32((1 << low_bits) - 1)) | numpy.uint32(1 << (low_bits - 1))
    probes = numpy.concatenate([bits, half_way, half_way + 1, half_way - 1]).view(numpy.float32)
    specials = numpy.array([0.0, -0.0, numpy.inf, -numpy.inf, numpy.nan, 65504.0, 65519.99,
                            65520.0, -65520.0, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001,
                            2.0**-26, 2.0**-14, 3e-8, 1e-45, 3.4028235e38], numpy.float32)
    return numpy.concatenate([probes, specials])


def test_host_half_conversions_match_numpy():
    rng = numpy.random.default_rng(9)
    values = _float_probes(rng, 13)
    got = _convert("float_to_half", values, numpy.uint16)
    with numpy.errstate(over="ignore"):
        want = values.astype(numpy.float16).view(numpy.uint16)
    nan = numpy.isnan(values)
    assert (got[~nan] == want[~nan]).all()
    assert numpy.isnan(got[nan].view(numpy.float16)).all()
    every_half = numpy.arange(2**16, dtype=numpy.uint32).astype(numpy.uint16)
    back = _convert("half_to_float", every_half, numpy.float32)
    numpy.testing.assert_array_equal(back, every_half.view(numpy.float16).astype(numpy.float32))


def test_host_bfloat16_conversions_match_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = numpy.random.default_rng(10)
    values = _float_probes(rng, 16)
    got = _convert("float_to_bfloat16", values, numpy.uint16)
    with numpy.errstate(invalid="ignore", over="ignore"):
        want = values.astype(ml_dtypes.bfloat16).view(numpy.uint16)
    nan = numpy.isnan(values)
    assert (got[~nan] == want[~nan]).all()
    assert numpy.isnan(got[nan].view(ml_dtypes.bfloat16).astype(numpy.float32)).all()
    every = numpy.arange(2**16, dtype=numpy.uint32).astype(numpy.uint16)
    back = _convert("bfloat16_to_float", every, numpy.float32)
    numpy.testing.assert_array_equal(back, every.view(ml_dtypes.bfloat16).astype(numpy.float32))


def test_float_to_tf32_rounds_to_nearest_ties_away():
    rng = numpy.random.default_rng(11)
    values = _float_probes(rng, 13)
    finite = numpy.isfinite(values)
    got = _convert("float_to_tf32", values, numpy.float32)
    numpy.testing.assert_array_equal(got[finite], _round_tf32(values[finite]))
    numpy.testing.assert_array_equal(got[~finite], values[~finite])
    tie = numpy.array([1.0 + 2.0**-11, -(1.0 + 2.0**-11)], numpy.float32)  # halfway: away
    numpy.testing.assert_array_equal(_convert("float_to_tf32", tie, numpy.float32),
                                     [1.0 + 2.0**-10, -(1.0 + 2.0**-10)])
