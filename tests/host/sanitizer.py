"""Run Python code under AddressSanitizer and UndefinedBehaviorSanitizer.

The host-run kernels are built with sanitizers when ``CUDEFORM_HOST_SANITIZE=1``
(:mod:`tests.host.loader`). Python itself is not instrumented, so the ASan runtime
must be the first library of the process: :func:`sanitizer_environment` preloads
GCC's ``libasan.so`` and makes every report fatal; :func:`run_sanitized` runs a
command in it and returns its exit status and output.

By hand (``pytest -s`` shows the reports as they come)::

    CUDEFORM_HOST_SANITIZE=1 LD_PRELOAD=$(g++ -print-file-name=libasan.so) \\
    ASAN_OPTIONS=detect_leaks=0 python -m pytest tests/test_kernels_host.py
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

from tests.host.build import SANITIZE_VARIABLE, compiler

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The status a sanitizer exits with after a report (any report is fatal).
REPORT_EXIT_CODE = 86
# CPython and NumPy hold memory until exit on purpose: leak checking would only
# report them. The UBSan options hold when UBSan runs inside the ASan runtime.
_ASAN_OPTIONS = ("detect_leaks=0", "halt_on_error=1", f"exitcode={REPORT_EXIT_CODE}",
                 "detect_stack_use_after_return=0", "allocator_may_return_null=1")
_UBSAN_OPTIONS = ("halt_on_error=1", "print_stacktrace=1", f"exitcode={REPORT_EXIT_CODE}")
# The first line of every ASan and UBSan report.
REPORT = re.compile(r"ERROR: AddressSanitizer|runtime error:|Sanitizer:DEADLYSIGNAL"
                    r"|SUMMARY: \w*Sanitizer")


def asan_runtime():
    """Path of the compiler's ``libasan.so``, or None when there is none."""
    cxx = compiler()
    if cxx is None:
        return None
    result = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True,
                            text=True)
    path = pathlib.Path(result.stdout.strip())
    # Without the library, GCC prints the bare name back.
    return path if result.returncode == 0 and path.is_absolute() and path.is_file() else None


def sanitizer_environment(runtime):
    """``os.environ`` with sanitized host builds, ``runtime`` preloaded and fatal reports."""
    environment = dict(os.environ)
    environment.update({
        SANITIZE_VARIABLE: "1",
        "LD_PRELOAD": str(runtime),
        "ASAN_OPTIONS": ":".join(_ASAN_OPTIONS),
        "UBSAN_OPTIONS": ":".join(_UBSAN_OPTIONS),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONFAULTHANDLER": "1",
    })
    return environment


@dataclasses.dataclass(frozen=True)
class SanitizedRun:
    returncode: int
    output: str  # stdout and stderr together

    def report(self):
        """The sanitizer report in the output (from its first line on), or None."""
        match = REPORT.search(self.output)
        return None if match is None else self.output[max(0, match.start() - 200):]


def run_sanitized(runtime, arguments, timeout):
    """Run ``python arguments...`` from the repository root under the sanitizers."""
    result = subprocess.run([sys.executable, *arguments], cwd=ROOT,
                            env=sanitizer_environment(runtime), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return SanitizedRun(result.returncode, result.stdout)
