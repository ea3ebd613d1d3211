"""The suite in a fresh virtual environment with only pytest, torch (the CPU build),
cupy-cuda13x and cudeform with its own requirements (no extras): it collects with no
error and fails nothing, and every optional package skips its tests with a reason.

This is what a GPU image without the test extras looks like, and what a user who
installed only ``cudeform`` sees. Building the environment takes pip and a few minutes
(torch's wheel comes from pip's cache when warm), so the test runs only when
``CUDEFORM_TEST_MINIMAL_ENVIRONMENT=1`` (CI sets it); the run inside the environment
leaves this module out, so it cannot recurse.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SWITCH = "CUDEFORM_TEST_MINIMAL_ENVIRONMENT"
# Every optional package of the extras, and how its skip reasons name it.
OPTIONAL = ("tqdm", "matplotlib", "hypothesis", "onnx", "onnxruntime", "onnxscript", "openvino",
            "chainer", "ml_dtypes")

pytestmark = pytest.mark.skipif(
    os.environ.get(SWITCH) != "1",
    reason=f"builds a virtual environment with pip (minutes); set {SWITCH}=1 to run it")


def _run(command, **options):
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                            **options)
    assert result.returncode == 0, (command, (result.stdout + result.stderr)[-4000:])
    return result


def test_the_suite_passes_without_optional_packages(tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in (SWITCH, "PYTHONPATH")}
    env["PIP_CONSTRAINT"] = str(ROOT / ".ci" / "constraints.txt")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # torch pinned first, so that pip takes the local CPU build rather than CUDA wheels
    _run(pip + ["pytest", "torch==2.13.0", "cupy-cuda13x"], env=env)
    _run(pip + ["-e", ROOT], env=env)

    found = _run([python, "-c", "import importlib.util as u; print(' '.join("
                  f"n for n in {OPTIONAL!r} if u.find_spec(n)))"], env=env).stdout.split()
    assert found == [], f"not a minimal environment: {found} installed"

    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests",
         f"--ignore={pathlib.Path(__file__).relative_to(ROOT)}"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    summary = output.strip().splitlines()[-1]
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"\d+ passed", summary) and "error" not in summary, summary
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    for package in OPTIONAL:
        assert any(re.search(rf"\b{package}\b", line) for line in skips), (
            f"no test skipped naming {package}")
