"""No kernel spills on sm_90, checked without a GPU from ptxas's resource report.

Every instantiation (family, element type, index type) is compiled for sm_90 with
NVRTC 13 and ``--ptxas-options=-v``, as test_kernels_nvrtc.py compiles it (the
compiles are shared). ptxas reports, per kernel, its registers, stack frame and spill
bytes; a spill to local memory would cost a kernel that is memory-bound already. The
registers are printed (``pytest -s``) for the record; at 256 threads a block, a kernel
of at most 64 registers can keep a full SM (2048 threads) resident on sm_90. The fused
forward is also compiled for sm_80, and its static shared memory checked.
"""

from __future__ import annotations

import pytest

from cudeform._gpu import fused_tiles
from cudeform._gpu.signatures import (
    DEFORM_CONV_FUSED, ELEMENT_TYPES, FAMILIES, INDEX_TYPES, family_kernels,
)
from tests import nvrtc

MAJOR, ARCH = 13, 90


def _reports(arch, family):
    """``(dtype, bits, kernel, expression, usage)`` of every instantiation of ``family``
    for sm_<arch>; ``usage`` is ptxas's report, or the log when it has none."""
    for dtype in ELEMENT_TYPES:
        for bits in INDEX_TYPES:
            label = f"nvrtc{MAJOR}-sm_{arch}-{family}-{dtype}-int{bits}"
            compiled = nvrtc.compile_instantiation(MAJOR, arch, family, dtype, bits, label)
            usage = nvrtc.resource_usage(compiled.log)
            for kernel in family_kernels(family, ELEMENT_TYPES[dtype]):
                expression = kernel.name_expression(ELEMENT_TYPES[dtype], INDEX_TYPES[bits])
                found = usage.get(compiled.lowered_names[expression])
                yield dtype, bits, kernel, expression, (
                    found if found and "registers" in found else compiled.log)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_kernel_spills_on_sm_90(family):
    rows, problems = [], []
    for _, _, _, expression, found in _reports(ARCH, family):
        if isinstance(found, str):
            problems.append(f"{expression}: no resource report in the log:\n{found}")
            continue
        rows.append(f"  {expression:60s} {found['registers']:3d} registers, "
                    f"{found['stack']} bytes stack")
        if found["spill_stores"] or found["spill_loads"]:
            problems.append(f"{expression}: {found['spill_stores']} bytes spill stores, "
                            f"{found['spill_loads']} bytes spill loads")
    print(f"\nsm_{ARCH}, NVRTC {MAJOR}, {family}:\n" + "\n".join(rows))
    assert rows and not problems, "\n".join(problems)


def test_report_parser_reads_a_spilling_kernel():
    """The check is not vacuous: a kernel that keeps 64 values live under a cap of 24
    registers spills, and its spill bytes are read from the report."""
    library, _ = nvrtc.load(MAJOR)
    if library is None:
        pytest.skip(f"no NVRTC {MAJOR}")
    source = r"""
    extern "C" __global__ void spills(const float* in, float* out, int n) {
      float keep[64];
    #pragma unroll
      for (int i = 0; i < 64; ++i) keep[i] = in[i * n + threadIdx.x];
      float sum = 0.0f;
      for (int j = 0; j < n; ++j) {
    #pragma unroll
        for (int i = 0; i < 64; ++i) { sum += keep[i] * in[j + i]; keep[i] += sum; }
      }
    #pragma unroll
      for (int i = 0; i < 64; ++i) out[i * n + threadIdx.x] = keep[i];
    }
    """
    compiled = library.compile(source, "spills.cu", (f"--gpu-architecture=sm_{ARCH}",
                                                     "--ptxas-options=-v",
                                                     "--maxrregcount=24"), ("spills",))
    usage = nvrtc.resource_usage(compiled.log)[compiled.lowered_names["spills"]]
    assert usage["registers"] <= 24
    assert usage["spill_stores"] > 0 and usage["spill_loads"] > 0, compiled.log


def test_every_kernel_of_the_table_is_checked():
    assert {kernel.name for kernels in FAMILIES.values() for kernel in kernels} >= {
        "deform_im2col", "deform_col2im", "deform_col2im_bound", "deform_col2im_coord",
        "deform_col2im_coord_reduce", "max_abs_exponent", "fixed_point_to_float",
        "deform_roi_pool_backward_input", "deform_psroi_pool_backward_input"}


FUSED_ARCHS = (80, 90)


@pytest.mark.parametrize("arch", FUSED_ARCHS)
def test_fused_kernels_fit_without_spills(arch):
    """Every fused instantiation on sm_80 and sm_90: no spills and no stack frame (the
    accumulators stay in registers), its static shared memory what fused_tiles computes
    and within the 48 KB a block may declare without opting in."""
    family = "deform_conv_fused"
    tiles = {kernel: key for key, kernel in DEFORM_CONV_FUSED.items()}
    rows, problems = [], []
    for dtype, bits, kernel, expression, found in _reports(arch, family):
        if isinstance(found, str):
            problems.append(f"{expression}: no resource report in the log:\n{found}")
            continue
        expected_smem = fused_tiles.shared_bytes(*tiles[kernel], dtype)
        rows.append(f"  {kernel.variant:22s} {dtype:9s} int{bits}: "
                    f"{found['registers']:3d} registers, {found['smem']:6d} bytes smem, "
                    f"{found['stack']} stack, {found['spill_stores']}/"
                    f"{found['spill_loads']} spill stores/loads")
        if found["spill_stores"] or found["spill_loads"] or found["stack"]:
            problems.append(f"{expression}: spills or a stack frame: {found}")
        if found["smem"] != expected_smem or found["smem"] > fused_tiles.SHARED_LIMIT:
            problems.append(f"{expression}: {found['smem']} bytes smem, fused_tiles says "
                            f"{expected_smem}, limit {fused_tiles.SHARED_LIMIT}")
    print(f"\nsm_{arch}, NVRTC {MAJOR}, {family}:\n" + "\n".join(rows))
    assert rows and not problems, "\n".join(problems)


def test_every_fused_tile_is_built_for_every_dtype_it_fits():
    """Only a tile whose shared memory passes the limit lacks a dtype, and it says why."""
    for (tile, math), kernel in DEFORM_CONV_FUSED.items():
        for dtype in fused_tiles.MATH_DTYPES[math]:
            reason = fused_tiles.why_not_built(tile, math, dtype)
            assert (dtype in kernel.dtypes) == (reason is None)
            if reason is not None:
                assert "shared memory" in reason and str(fused_tiles.SHARED_LIMIT) in reason
