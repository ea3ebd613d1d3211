"""CuPy's kernel cache without a GPU: compile a cudeform family through CuPy's own
caching code, with the one device query answered here and module loads recorded.

CuPy compiles with NVRTC (which needs no GPU), looks the result up in and writes it
to its cache (``CUPY_CACHE_DIR``), and loads it with the CUDA driver (which does).
:func:`record_cupy_compiles` replaces the two steps that need a device: the
``-arch`` option, which comes from the current GPU, and ``Module.load``, which here
records the SHA-1 of the cubin it would load. The cache logic in between is CuPy's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types

from cudeform._gpu.signatures import ELEMENT_TYPES, FAMILIES, INDEX_TYPES
from cudeform._gpu.source import compile_options, family_source


@dataclasses.dataclass
class CompileRecord:
    compiled: list = dataclasses.field(default_factory=list)  # one entry per NVRTC run
    loaded: list = dataclasses.field(default_factory=list)    # SHA-1 of each loaded cubin


def record_cupy_compiles(setattr_):
    """Patch ``cupy.cuda.compiler`` through ``setattr_(object, name, value)`` (e.g.
    ``monkeypatch.setattr``) and return the :class:`CompileRecord` it fills."""
    from cupy.cuda import compiler

    record = CompileRecord()

    class RecordedModule:  # cupy.cuda.function.Module, whose load needs a GPU
        mapping = None

        def load(self, cubin):
            record.loaded.append(hashlib.sha1(bytes(cubin)).hexdigest())

        def _set_mapping(self, mapping):
            self.mapping = mapping

    real_compile = compiler._compile_using_nvrtc_no_warning

    def counting_compile(*args, **kwargs):
        record.compiled.append(1)
        return real_compile(*args, **kwargs)

    setattr_(compiler, "function", types.SimpleNamespace(Module=RecordedModule))
    setattr_(compiler, "_compile_using_nvrtc_no_warning", counting_compile)
    setattr_(compiler, "_get_arch_for_options_for_nvrtc",
             lambda arch=None: (f"-arch=sm_{arch}", "cubin"))
    return record


def compile_family(family, arch="90", dtype_name="float32", bits=32):
    """Compile ``family`` as ``cudeform._gpu.compile`` does, through CuPy's cache, for
    ``sm_<arch>``; returns the mapping of name expressions to mangled names."""
    from cupy.cuda import compiler

    element, index = ELEMENT_TYPES[dtype_name], INDEX_TYPES[bits]
    names = [kernel.name_expression(element, index) for kernel in FAMILIES[family]]
    module = compiler._compile_module_with_cache(
        family_source(family), compile_options(element), arch=arch, name_expressions=names)
    return module.mapping


def cache_entries(cache):
    """The entries of the cache folder ``cache``."""
    return sorted(path for path in cache.iterdir() if path.suffix == ".cubin")


def is_intact(entry):
    """Whether a cache entry holds the SHA-1 of its payload, then the payload."""
    data = entry.read_bytes()
    return data[:40] == hashlib.sha1(data[40:]).hexdigest().encode()


def cached_cubin(cache, family="fixed_point"):
    """The SHA-1 of the cubin in the one entry of the cache folder ``cache``; an
    AssertionError if the entry is damaged."""
    from cupy.cuda import compiler

    [entry] = cache_entries(cache)
    assert is_intact(entry), "a damaged entry"
    data = entry.read_bytes()
    _, cubin = compiler._decode_cache_payload(data[40:], len(FAMILIES[family]))
    assert cubin.startswith(b"\x7fELF")
    return hashlib.sha1(cubin).hexdigest()
