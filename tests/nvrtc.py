"""NVRTC through ``ctypes``, found in the installed NVIDIA wheels, for compile tests.

CuPy binds one NVRTC per process. Loading each ``libnvrtc.so.<major>`` with its own
``ctypes.CDLL`` (local symbols) lets one test session compile with NVRTC 12, which
still targets Volta (sm_70), and NVRTC 13, which does not.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.metadata
import pathlib
import re

import pytest

from cudeform._gpu.signatures import ELEMENT_TYPES, INDEX_TYPES, WMMA_FAMILIES, family_kernels
from cudeform._gpu.source import compile_options, family_source

# Wheels that may hold NVRTC (``nvidia-cuda-nvrtc`` is CUDA 13, ``-cu12`` is CUDA 12).
NVRTC_WHEELS = ("nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu12", "nvidia-cuda-nvrtc-cu13")
# Wheels that may hold the CUDA headers (cuda_fp16.h, cuda_bf16.h) NVRTC lacks.
HEADER_WHEELS = ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu13")

_LIBRARY = re.compile(r"libnvrtc\.so\.(\d+)$")
_CUDART_VERSION = re.compile(r"#define\s+CUDART_VERSION\s+(\d+)")


class CompileError(Exception):
    """NVRTC rejected a program; the message holds the options and the program log."""


@dataclasses.dataclass(frozen=True)
class Compiled:
    log: str
    lowered_names: dict  # name expression -> mangled name
    cubin: bytes


def _wheel_files(names):
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in dist.files or ():
            yield pathlib.Path(dist.locate_file(file))


@functools.lru_cache(maxsize=None)
def find_library(major):
    """``(path, None)`` of ``libnvrtc.so.<major>`` in a wheel, or ``(None, why not)``."""
    for path in _wheel_files(NVRTC_WHEELS):
        match = _LIBRARY.search(path.name)
        if match and int(match.group(1)) == major and path.is_file():
            return path, None
    return None, (f"no libnvrtc.so.{major} in any installed wheel of "
                  f"{', '.join(NVRTC_WHEELS)}")


@functools.lru_cache(maxsize=None)
def find_include_dir(major):
    """``(folder, None)`` holding CUDA <major> cuda_fp16.h and cuda_bf16.h, or ``(None, why)``."""
    for path in _wheel_files(HEADER_WHEELS):
        if path.name != "cuda_runtime_api.h" or not path.is_file():
            continue
        found = _CUDART_VERSION.search(path.read_text(errors="replace"))
        folder = path.parent
        if (found and int(found.group(1)) // 1000 == major
                and (folder / "cuda_fp16.h").is_file() and (folder / "cuda_bf16.h").is_file()):
            return folder, None
    return None, (f"no CUDA {major} cuda_fp16.h/cuda_bf16.h in any installed wheel of "
                  f"{', '.join(HEADER_WHEELS)}")


class Nvrtc:
    """One loaded ``libnvrtc.so`` with the few entry points a compile test needs."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        lib = ctypes.CDLL(str(self.path))
        size_p = ctypes.POINTER(ctypes.c_size_t)
        program_p = ctypes.POINTER(ctypes.c_void_p)
        signatures = {
            "nvrtcVersion": [ctypes.POINTER(ctypes.c_int)] * 2,
            "nvrtcCreateProgram": [program_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                   ctypes.c_void_p, ctypes.c_void_p],
            "nvrtcAddNameExpression": [ctypes.c_void_p, ctypes.c_char_p],
            "nvrtcCompileProgram": [ctypes.c_void_p, ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_char_p)],
            "nvrtcGetProgramLogSize": [ctypes.c_void_p, size_p],
            "nvrtcGetProgramLog": [ctypes.c_void_p, ctypes.c_char_p],
            "nvrtcGetLoweredName": [ctypes.c_void_p, ctypes.c_char_p,
                                    ctypes.POINTER(ctypes.c_char_p)],
            "nvrtcGetCUBINSize": [ctypes.c_void_p, size_p],
            "nvrtcGetCUBIN": [ctypes.c_void_p, ctypes.c_char_p],
            "nvrtcDestroyProgram": [program_p],
        }
        for name, argtypes in signatures.items():
            function = getattr(lib, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_int
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        self._lib = lib
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    def _check(self, status, call):
        if status != 0:
            message = self._lib.nvrtcGetErrorString(status).decode()
            raise CompileError(f"{call} failed: {message} ({status}) in {self.path}")

    def compile(self, source, name, options, name_expressions):
        """Compile ``source`` to a cubin; raise :class:`CompileError` with the log on failure.

        ``options`` must hold a real ``--gpu-architecture=sm_XX`` for a cubin to exist.
        """
        lib = self._lib
        program = ctypes.c_void_p()
        self._check(lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(),
                                           name.encode(), 0, None, None), "nvrtcCreateProgram")
        try:
            for expression in name_expressions:
                self._check(lib.nvrtcAddNameExpression(program, expression.encode()),
                            "nvrtcAddNameExpression")
            encoded = [option.encode() for option in options]
            status = lib.nvrtcCompileProgram(program, len(encoded),
                                             (ctypes.c_char_p * len(encoded))(*encoded))
            log_size = ctypes.c_size_t()
            self._check(lib.nvrtcGetProgramLogSize(program, ctypes.byref(log_size)),
                        "nvrtcGetProgramLogSize")
            log_buffer = ctypes.create_string_buffer(log_size.value)
            self._check(lib.nvrtcGetProgramLog(program, log_buffer), "nvrtcGetProgramLog")
            log = log_buffer.value.decode(errors="replace")
            if status != 0:
                message = lib.nvrtcGetErrorString(status).decode()
                raise CompileError(f"NVRTC {self.version[0]}.{self.version[1]} failed "
                                   f"({message}) with options {' '.join(options)}:\n{log}")
            lowered = {}
            for expression in name_expressions:
                mangled = ctypes.c_char_p()
                self._check(lib.nvrtcGetLoweredName(program, expression.encode(),
                                                    ctypes.byref(mangled)),
                            f"nvrtcGetLoweredName({expression})")
                lowered[expression] = mangled.value.decode() if mangled.value else ""
            cubin_size = ctypes.c_size_t()
            self._check(lib.nvrtcGetCUBINSize(program, ctypes.byref(cubin_size)),
                        "nvrtcGetCUBINSize")
            cubin = ctypes.create_string_buffer(cubin_size.value)
            if cubin_size.value:
                self._check(lib.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
            return Compiled(log, lowered, cubin.raw)
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(program))


@functools.lru_cache(maxsize=None)
def load(major):
    """``(Nvrtc, None)`` for NVRTC <major> with its include folder, or ``(None, why not)``."""
    path, why = find_library(major)
    if path is None:
        return None, why
    try:
        nvrtc = Nvrtc(path)
    except OSError as error:
        return None, f"cannot load {path}: {error}"
    if nvrtc.version[0] != major:
        return None, f"{path} reports NVRTC {nvrtc.version}, not {major}.x"
    return nvrtc, None


def _toolkit(major, arch):
    """NVRTC <major> and its include folder, or skip saying which is missing."""
    library, why = load(major)
    include_dir, why_headers = find_include_dir(major)
    if library is None or include_dir is None:
        pytest.skip(f"NVRTC {major} for sm_{arch} not available: {why or why_headers}")
    return library, include_dir


def name_expressions(family, dtype, index_bits):
    """The name expressions of a family's kernels for one element and index type."""
    return tuple(kernel.name_expression(ELEMENT_TYPES[dtype], INDEX_TYPES[index_bits])
                 for kernel in family_kernels(family, ELEMENT_TYPES[dtype]))


@functools.lru_cache(maxsize=None)
def compile_instantiation(major, arch, family, dtype, index_bits, label):
    """One instantiation compiled to a cubin for sm_<arch> with NVRTC <major>, as
    ``cupy.RawModule`` compiles it, plus ptxas's resource report in the log; skips
    when that NVRTC is missing and fails the test (naming ``label``) on an error."""
    library, include_dir = _toolkit(major, arch)
    element_type = ELEMENT_TYPES[dtype]
    options = (*compile_options(element_type), f"--gpu-architecture=sm_{arch}",
               "--ptxas-options=-v")
    if family in WMMA_FAMILIES and not (include_dir / "crt" / "mma.h").is_file():
        pytest.skip(f"no CUDA {major} crt/mma.h next to {include_dir} (the nvidia-cuda-crt "
                    f"wheel has CUDA 13's)")
    if element_type in ("__half", "__nv_bfloat16") or family in WMMA_FAMILIES:
        # Only 16-bit and WMMA builds include CUDA's headers; the rest compile without them.
        options += (f"-I{include_dir}",)
    try:
        return library.compile(family_source(family), f"{family}.cu", options,
                               name_expressions(family, dtype, index_bits))
    except CompileError as error:
        pytest.fail(f"{label}: {error}", pytrace=False)


_PROPERTIES = re.compile(
    r"Function properties for (\S+)\s*\n.*?(\d+) bytes stack frame, (\d+) bytes spill stores, "
    r"(\d+) bytes spill loads", re.DOTALL)
_REGISTERS = re.compile(r"Compiling entry function '(\S+)'.*?Used (\d+) registers"
                        r"(?:.*?(\d+) bytes smem)?", re.DOTALL)


def resource_usage(log):
    """``{mangled name: {registers, smem, stack, spill_stores, spill_loads}}`` from
    ptxas's ``-v`` report in an NVRTC log (smem: static shared memory bytes, 0 if none)."""
    usage = {}
    for match in _PROPERTIES.finditer(log):
        usage[match.group(1)] = dict(stack=int(match.group(2)), spill_stores=int(match.group(3)),
                                     spill_loads=int(match.group(4)))
    for chunk in log.split("Compiling entry function ")[1:]:
        found = _REGISTERS.search("Compiling entry function " + chunk)
        if found and found.group(1) in usage:
            usage[found.group(1)]["registers"] = int(found.group(2))
            usage[found.group(1)]["smem"] = int(found.group(3) or 0)
    return usage
