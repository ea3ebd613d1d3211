"""Builds of one module by several threads and processes at once, and damaged caches.

The host build cache (tests/host/build.py ``build_library``) compiles a library
once however many threads and processes ask for it at once (a file lock), and
rebuilds, never loads, a library whose digest does not match its record.

CuPy's kernel cache (``CUPY_CACHE_DIR``) is exercised without a GPU: NVRTC compiles
a cudeform family through CuPy's own caching code, with the one device query
answered here and the module load recorded instead of made. CuPy writes each entry
atomically, prefixed with the SHA-1 of its payload, and recompiles an entry whose
digest does not match, so a damaged entry is never loaded (CuPy 14,
``cupy/cuda/_compiler_cache.py``); the tests check that, as cudeform relies on it.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import stat
import subprocess
import sys
import textwrap

import pytest

from tests.concurrency import run_in_threads
from tests.cupy_cache import (
    cache_entries, cached_cubin, compile_family, record_cupy_compiles,
)
from tests.host.build import build_library, compiler
from tests.host.loader import host_source

ROOT = pathlib.Path(__file__).resolve().parent.parent
needs_compiler = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")
TIMEOUT = 300


HANG_VARIABLE = "CUDEFORM_TEST_COMPILER_HANGS"


@pytest.fixture
def counted_compiler(tmp_path, monkeypatch):
    """``$CXX`` is a wrapper of the compiler that appends a line to a log per run (and
    hangs first when ``$CUDEFORM_TEST_COMPILER_HANGS`` is set). Returns a function that
    gives the number of runs so far."""
    log = tmp_path / "compiler.log"
    wrapper = tmp_path / "counting-cxx"
    wrapper.write_text(f'#!/bin/sh\necho run >> "{log}"\n'
                       f'if [ -n "${HANG_VARIABLE}" ]; then sleep 600; fi\n'
                       f'exec "{compiler()}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CXX", str(wrapper))
    return lambda: len(log.read_text().splitlines()) if log.exists() else 0


def _source():
    return host_source("fixed_point")


def _assert_loads(library):
    ctypes.CDLL(str(library)).cudeform_set_loop_order(0)


@needs_compiler
def test_concurrent_host_builds_in_threads_compile_once(tmp_path, counted_compiler):
    folder = tmp_path / "cache"
    folder.mkdir()
    source = _source()
    results = run_in_threads([lambda: build_library("fixed_point", source, folder=folder)],
                             threads=4, rounds=1)
    paths = {thread[0][0] for thread in results}
    assert len(paths) == 1 and counted_compiler() == 1
    _assert_loads(paths.pop())


_BUILD_IN_A_PROCESS = textwrap.dedent("""
    import sys, time
    from tests.host.build import build_library
    from tests.host.loader import host_source
    source = host_source("fixed_point")
    while time.time() < float(sys.argv[2]):  # start together
        pass
    print(build_library("fixed_point", source, folder=sys.argv[1]))
""")


@needs_compiler
def test_concurrent_host_builds_in_processes_compile_once(tmp_path, counted_compiler):
    import time

    folder = tmp_path / "cache"
    folder.mkdir()
    start = str(time.time() + 2)
    processes = [subprocess.Popen([sys.executable, "-c", _BUILD_IN_A_PROCESS, str(folder), start],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=TIMEOUT) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    paths = {stdout.strip() for stdout, _ in outputs}
    assert len(paths) == 1 and counted_compiler() == 1
    _assert_loads(paths.pop())


@needs_compiler
def test_concurrency_killed_host_build_leaves_no_stale_lock(tmp_path, counted_compiler):
    import signal
    import time

    folder = tmp_path / "cache"
    folder.mkdir()
    hung = subprocess.Popen([sys.executable, "-c", _BUILD_IN_A_PROCESS, str(folder), "0"],
                            cwd=ROOT, env=dict(os.environ, **{HANG_VARIABLE: "1"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + TIMEOUT
    while counted_compiler() == 0 and time.time() < deadline:  # it holds the lock now
        time.sleep(0.05)
    os.killpg(hung.pid, signal.SIGKILL)  # the build and its compiler
    hung.communicate(timeout=TIMEOUT)
    assert counted_compiler() == 1 and not list(folder.glob("*.so"))
    library = build_library("fixed_point", _source(), folder=folder)
    assert counted_compiler() == 2
    _assert_loads(library)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": _truncate,
    "flipped-byte": _flip_a_byte,
    "empty": lambda path: path.write_bytes(b""),
    "no-record": lambda path: path.with_suffix(".sha256").unlink(),
    "killed-before-its-record": lambda path: path.with_suffix(".sha256").write_text("0" * 64),
}


@needs_compiler
@pytest.mark.parametrize("damage", DAMAGE)
def test_concurrency_damaged_host_build_is_rebuilt_not_loaded(tmp_path, counted_compiler,
                                                               damage):
    source = _source()
    library = build_library("fixed_point", source, folder=tmp_path)
    good = library.read_bytes()
    DAMAGE[damage](library)
    assert build_library("fixed_point", source, folder=tmp_path) == library
    assert counted_compiler() == 2
    assert library.read_bytes() == good  # the build is reproducible
    _assert_loads(library)


@needs_compiler
def test_concurrency_intact_host_build_is_reused(tmp_path, counted_compiler):
    source = _source()
    first = build_library("fixed_point", source, folder=tmp_path)
    assert build_library("fixed_point", source, folder=tmp_path) == first
    assert counted_compiler() == 1
    assert build_library("fixed_point", source + "\n// changed\n", folder=tmp_path) != first
    assert counted_compiler() == 2


# --- CuPy's kernel cache ----------------------------------------------------------------

# Compiles one family through CuPy's cache (CUPY_CACHE_DIR) without a GPU, and prints
# how many times NVRTC ran and the SHA-1 of each cubin CuPy would have loaded.
_CUPY_CACHE_RUN = textwrap.dedent("""
    import sys, time
    from tests.cupy_cache import compile_family, record_cupy_compiles
    record = record_cupy_compiles(setattr)
    while time.time() < float(sys.argv[2]):  # start together
        pass
    compile_family(sys.argv[1])
    print(len(record.compiled), *record.loaded)
""")


@pytest.fixture
def nvrtc():
    pytest.importorskip("cupy")
    from tests.nvrtc import find_library

    if find_library(13)[0] is None:
        pytest.skip(find_library(13)[1])


def _cupy_cache_runs(cache, count, family="fixed_point"):
    """Run ``count`` processes compiling ``family`` into ``cache`` at once; returns
    ``[(NVRTC runs, [SHA-1 of each loaded cubin]), ...]``."""
    import time

    environment = dict(os.environ, CUPY_CACHE_DIR=str(cache))
    start = str(time.time() + (2 if count > 1 else 0))
    processes = [subprocess.Popen([sys.executable, "-c", _CUPY_CACHE_RUN, family, start],
                                  cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(count)]
    outputs = [process.communicate(timeout=TIMEOUT) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    runs = []
    for stdout, _ in outputs:
        compiled, *loaded = stdout.split()
        runs.append((int(compiled), loaded))
    return runs


def test_concurrent_cupy_cache_compiles_in_processes(tmp_path, nvrtc):
    # NVRTC embeds the name of a temporary file: each compilation gives other bytes.
    runs = _cupy_cache_runs(tmp_path, 3)
    assert all(len(loaded) == 1 for _, loaded in runs)
    cached = cached_cubin(tmp_path)
    assert cached in {loaded[0] for _, loaded in runs}
    # A later process finds the entry and compiles nothing.
    assert _cupy_cache_runs(tmp_path, 1) == [(0, [cached])]


@pytest.fixture
def cupy_cache(tmp_path, nvrtc, monkeypatch):
    """CuPy's kernel cache in ``tmp_path`` for this process; returns the record of its
    compilations and loads (:func:`tests.cupy_cache.record_cupy_compiles`)."""
    from cupy.cuda import compiler
    from cupy.cuda._compiler_cache import DiskKernelCacheBackend

    monkeypatch.setattr(compiler, "_kernel_cache_backend", DiskKernelCacheBackend(str(tmp_path)))
    return record_cupy_compiles(monkeypatch.setattr)


def test_concurrent_cupy_cache_compiles_in_threads(tmp_path, cupy_cache):
    results = run_in_threads([lambda: compile_family("fixed_point")], threads=3, rounds=1)
    assert all(thread[0][0] == results[0][0][0] for thread in results)
    assert len(cupy_cache.loaded) == 3 and cached_cubin(tmp_path) in cupy_cache.loaded
    compiled = len(cupy_cache.compiled)
    compile_family("fixed_point")
    assert len(cupy_cache.compiled) == compiled  # found in the cache
    assert cupy_cache.loaded[-1] == cached_cubin(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "flipped-byte", "empty"])
def test_concurrency_damaged_cupy_cache_entry_is_recompiled_not_loaded(tmp_path, cupy_cache,
                                                                       damage):
    compile_family("fixed_point")
    [entry] = cache_entries(tmp_path)
    DAMAGE[damage](entry)
    compile_family("fixed_point")
    assert len(cupy_cache.compiled) == 2  # compiled again
    assert cupy_cache.loaded[-1] == cached_cubin(tmp_path)  # loaded what it rewrote
