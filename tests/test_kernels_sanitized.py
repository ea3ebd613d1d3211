"""The host-run kernel tests under AddressSanitizer and UndefinedBehaviorSanitizer.

Each test runs, in a subprocess with the ASan runtime preloaded and the kernels built
with ``-fsanitize=address,undefined,float-cast-overflow`` (``CUDEFORM_HOST_SANITIZE=1``),
one module of host-run tests of the kernels: all three ops, forward and backward,
both scatter modes, 32- and 64-bit indices, the edge cases, the property-based
comparisons, and the fused forward in the block emulator. Any sanitizer report is
fatal there and fails the test, with the report in its message. The planted bugs
(tests/host/planted.py) show that reports do come.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.host.sanitizer import (
    REPORT_EXIT_CODE, ROOT, asan_runtime, run_sanitized, sanitizer_environment,
)

RUNTIME = asan_runtime()
pytestmark = pytest.mark.skipif(RUNTIME is None,
                                reason="no C++ compiler with an AddressSanitizer runtime")

# The modules that run kernels on the host (the fused forward in the block emulator).
HOST_MODULES = (
    "test_kernels_host.py", "test_kernels_host_roi_pool.py", "test_kernels_host_psroi_pool.py",
    "test_kernels_host_edges.py", "test_determinism_host.py", "test_fuzz_host_kernels.py",
    "test_fused_forward_host.py",
)
TIMEOUT = 600


def _failure(run, what):
    report = run.report()
    if report is not None:
        return f"sanitizer report {what}:\n{report[-12000:]}"
    return f"{what} failed with status {run.returncode}:\n{run.output[-12000:]}"


@pytest.mark.parametrize("module", HOST_MODULES)
def test_sanitized_host_run(module):
    assert (ROOT / "tests" / module).is_file()
    run = run_sanitized(RUNTIME, ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                                  f"tests/{module}"], TIMEOUT)
    skips = [line for line in run.output.splitlines() if line.startswith("SKIPPED")]
    if run.report() is None and " passed" not in run.output and skips:
        pytest.skip(f"every test of {module} skips here: {skips[0]}")  # e.g. no hypothesis
    assert run.returncode == 0 and run.report() is None, _failure(run, f"in {module}")
    assert " passed" in run.output


# What each planted bug (tests/host/planted.py) must be reported as.
PLANTED_REPORTS = {
    "write-past-the-end": r"WRITE of size 8 .*\n.*deform_roi_pool_forward",
    "write-into-the-next-image": r"WRITE of size 8 .*\n.*deform_col2im_coord_reduce",
    "float-cast-overflow": r"deform_roi_pool-\w+\.cpp:\d+:\d+: runtime error: 1e\+30 is "
                           r"outside the range of representable values of type 'int'",
}


@pytest.mark.parametrize("plant", PLANTED_REPORTS)
def test_sanitizers_catch_planted_bugs(plant):
    run = run_sanitized(RUNTIME, ["-c", "from tests.host.planted import run; "
                                        f"run({plant!r})"], TIMEOUT)
    assert run.returncode == REPORT_EXIT_CODE, run.output[-12000:]
    assert run.report() is not None
    assert re.search(PLANTED_REPORTS[plant], run.output), run.output[-12000:]


def test_sanitized_build_needs_the_runtime():
    environment = sanitizer_environment(RUNTIME)
    del environment["LD_PRELOAD"]
    result = subprocess.run(
        [sys.executable, "-c", "from tests.host.loader import _library; "
                               "_library('fixed_point')"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert "RuntimeError: CUDEFORM_HOST_SANITIZE=1 builds sanitized libraries, which load " \
           "only into a process started with the AddressSanitizer runtime preloaded" \
           in result.stderr
