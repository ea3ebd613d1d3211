"""Build C++ sources into shared libraries for the host runs, cached on disk.

:func:`build_library` compiles a source once per cache key (a hash of the compiler,
its flags and the source) and keeps the library, its source and a digest record in
:func:`build_dir`; builds are shared by threads and processes (a file lock serialises
the builds of one library) and a library is checked against its digest before every
load. :func:`load_library` loads one into the process.

With ``CUDEFORM_HOST_SANITIZE=1`` the libraries are built with AddressSanitizer and
UndefinedBehaviorSanitizer (:data:`SANITIZER_FLAGS`, a cache entry of their own); the
process must then run with the ASan runtime preloaded (:mod:`tests.host.sanitizer`).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

COMPILE_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++17")
# Any report is fatal (-fno-sanitize-recover); float-cast-overflow is not part of
# -fsanitize=undefined in GCC, and a float to int cast out of range is where the host
# (undefined) and the GPU (saturating) would part ways.
SANITIZER_FLAGS = ("-g", "-fno-omit-frame-pointer",
                   "-fsanitize=address,undefined,float-cast-overflow",
                   "-fno-sanitize-recover=all")
SANITIZE_VARIABLE = "CUDEFORM_HOST_SANITIZE"


def compiler():
    """Path of the C++ compiler (``$CXX``, else ``g++``), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def sanitized():
    """Whether ``CUDEFORM_HOST_SANITIZE=1`` asks for sanitized builds (``0`` or unset: no)."""
    value = os.environ.get(SANITIZE_VARIABLE, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{SANITIZE_VARIABLE} is not valid: expected 0 or 1, got {value!r}")
    return value == "1"


def compile_flags(base=COMPILE_FLAGS):
    """The compiler flags of a host build: ``base`` (:data:`COMPILE_FLAGS` unless
    given), and :data:`SANITIZER_FLAGS` when :func:`sanitized`."""
    return tuple(base) + (SANITIZER_FLAGS if sanitized() else ())


def cache_key(command, source):
    """The name part that tells builds apart: a hash of the command and the source."""
    return hashlib.sha256("\0".join([*command, source]).encode()).hexdigest()[:20]


def build_dir():
    """The folder of the cached builds: per user, so that no one else's library is
    ever loaded."""
    folder = pathlib.Path(tempfile.gettempdir()) / f"cudeform-host-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_intact(library, record):
    """Whether ``library`` exists and its digest is the one recorded after its build."""
    try:
        return record.read_text() == _digest(library)
    except FileNotFoundError:
        return False


def _write_atomically(path, text):
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as file:
        file.write(text)
    os.replace(file.name, path)


def _compile(cxx, flags, source, library):
    # The source stays next to the library, so that sanitizer reports and debuggers
    # point at lines that can be read.
    source_file = library.with_suffix(".cpp")
    _write_atomically(source_file, source)
    with tempfile.TemporaryDirectory(dir=library.parent) as work:
        built = pathlib.Path(work) / library.name
        # The compiler does not run under a sanitizer runtime preloaded for Python.
        environment = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        result = subprocess.run([cxx, *flags, str(source_file), "-o", str(built)],
                                capture_output=True, text=True, env=environment)
        if result.returncode != 0:
            raise RuntimeError(f"host compilation of {library.stem} failed:\n{result.stderr}")
        os.replace(built, library)  # atomic, so no one ever loads half a file


def build_library(name, source, flags=None, folder=None):
    """Compile ``source`` into a shared library and return its path, cached on disk.

    The file is ``<name>-<cache_key>.so`` in ``folder`` (default :func:`build_dir`),
    next to its ``.cpp`` source and a ``.sha256`` record of its digest, written after
    it. A library whose digest does not match its record (truncated, corrupted, or a
    build killed before its record) is rebuilt, never loaded. A lock file serialises
    the builds of one library across threads and processes; the lock goes with the
    process that holds it, so a killed build leaves none behind.

    Args:
        name: the first part of the file name (a kernel family).
        source: the C++ source.
        flags: compiler flags; :func:`compile_flags` by default.
        folder: where the cache lives.
    """
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    flags = compile_flags() if flags is None else tuple(flags)
    folder = build_dir() if folder is None else pathlib.Path(folder)
    library = folder / f"{name}-{cache_key([cxx, *flags], source)}.so"
    record = library.with_suffix(".sha256")
    if _is_intact(library, record):
        return library
    with open(library.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or the process dies
        if not _is_intact(library, record):
            _compile(cxx, flags, source, library)
            _write_atomically(record, _digest(library))
    return library


def _check_sanitizer_runtime():
    try:
        ctypes.CDLL(None)["__asan_init"]
    except AttributeError:
        raise RuntimeError(
            f"{SANITIZE_VARIABLE}=1 builds sanitized libraries, which load only into a "
            "process started with the AddressSanitizer runtime preloaded: "
            "LD_PRELOAD=$(g++ -print-file-name=libasan.so) (see tests/host/sanitizer.py)"
        ) from None


@functools.lru_cache(maxsize=None)
def load_library(name, source, base_flags=COMPILE_FLAGS):
    """The library built from ``source`` with ``compile_flags(base_flags)``
    (:func:`build_library`), loaded once per process."""
    if sanitized():
        _check_sanitizer_runtime()
    return ctypes.CDLL(str(build_library(name, source, compile_flags(base_flags))))
