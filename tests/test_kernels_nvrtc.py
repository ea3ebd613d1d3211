"""Every kernel instantiation compiles to SASS with NVRTC, without a GPU.

Each (family, element type, index type) is compiled as ``cupy.RawModule`` would compile
it: ``family_source(family)`` with the family's name expressions and ``compile_options``,
plus a real ``--gpu-architecture=sm_XX`` so that NVRTC must produce a cubin (and
``--ptxas-options=-v``, whose resource report test_kernels_resources.py reads). CUDA 13
dropped Volta, so sm_70 is compiled with NVRTC 12; the other architectures with both.
NVRTC and the CUDA headers come from the pip wheels; a missing one skips its cases.
"""

from __future__ import annotations

import re

import pytest

from cudeform._gpu import fused_tiles
from cudeform._gpu.signatures import ELEMENT_TYPES, FAMILIES, HEADERS, INDEX_TYPES, WMMA_FAMILIES
from cudeform._gpu.source import COMPILE_OPTIONS, kernel_dir
from tests import nvrtc

# (NVRTC major version, SM architecture) pairs compiled to cubin.
TARGETS = ((12, 70), (12, 80), (12, 90), (13, 75), (13, 80), (13, 90))
ELF_MACHINE_CUDA = 190


def _id(major, arch, family, dtype, index_bits):
    return f"nvrtc{major}-sm_{arch}-{family}-{dtype}-int{index_bits}"


instantiations = pytest.mark.parametrize(
    "major, arch, family, dtype, index_bits",
    [pytest.param(*case, id=_id(*case))
     for case in ((major, arch, family, dtype, bits)
                  for major, arch in TARGETS for family in FAMILIES
                  # WMMA families are built from their minimum architecture on.
                  if family not in WMMA_FAMILIES or arch >= fused_tiles.MIN_ARCH
                  for dtype in ELEMENT_TYPES for bits in INDEX_TYPES)],
)


def _compile(major, arch, family, dtype, index_bits):
    """The compiled program of one instantiation (memoised in tests/nvrtc.py)."""
    return nvrtc.compile_instantiation(major, arch, family, dtype, index_bits,
                                       _id(major, arch, family, dtype, index_bits))


def _source_origin(family, line):
    """``file:line`` in kernels/ of a line of ``family_source(family)``."""
    first = 1
    for name in (*HEADERS, f"{family}.cu"):
        count = (kernel_dir() / name).read_text().count("\n") + 1  # parts are joined by "\n"
        if line < first + count:
            return f"{name}:{line - first + 1}"
        first += count
    return f"line {line} past the end of {family}.cu"


def _our_warnings(log, program, family):
    """The warnings of ``log`` located in ``program`` itself (not the CUDA headers)."""
    located = re.compile(rf"^{re.escape(program)}\((\d+)\): warning.*$", re.MULTILINE)
    return [f"{_source_origin(family, int(match.group(1)))}: {match.group(0)}"
            for match in located.finditer(log)]


@instantiations
def test_instantiation_compiles_to_cubin(major, arch, family, dtype, index_bits):
    compiled = _compile(major, arch, family, dtype, index_bits)
    unnamed = [name for name, lowered in compiled.lowered_names.items() if not lowered]
    assert not unnamed, f"no lowered name for {unnamed}; log:\n{compiled.log}"
    assert compiled.cubin, f"empty cubin; log:\n{compiled.log}"
    machine = int.from_bytes(compiled.cubin[18:20], "little")
    assert compiled.cubin[:4] == b"\x7fELF" and machine == ELF_MACHINE_CUDA, (
        f"not a CUDA ELF (e_machine {machine}); log:\n{compiled.log}")


@instantiations
def test_instantiation_has_no_warning_in_our_source(major, arch, family, dtype, index_bits):
    compiled = _compile(major, arch, family, dtype, index_bits)
    warnings = _our_warnings(compiled.log, f"{family}.cu", family)
    assert not warnings, "\n".join(warnings) + f"\nfull log:\n{compiled.log}"


def test_warning_check_sees_a_warning_in_our_source():
    """The check above is not vacuous: NVRTC reports an unused variable, and it is found."""
    major = next((major for major in (13, 12) if nvrtc.load(major)[0] is not None), None)
    if major is None:
        pytest.skip(f"no NVRTC: {nvrtc.load(13)[1]}; {nvrtc.load(12)[1]}")
    library, _ = nvrtc.load(major)
    source = "__global__ void probe(float* out) {\n  int unused = 0;\n  out[0] = 1.0f;\n}\n"
    compiled = library.compile(source, "deform_conv.cu",
                               (*COMPILE_OPTIONS, "--gpu-architecture=sm_80"), ("probe",))
    warnings = _our_warnings(compiled.log, "deform_conv.cu", "deform_conv")
    assert len(warnings) == 1 and "unused" in warnings[0], compiled.log
    assert warnings[0].startswith(f"{HEADERS[0]}:2: "), warnings
