"""The scripts of ``examples/`` run as a user runs them, each in its own process from an
empty folder, and pass their own checks (a failed check stops a script with an error).

``detector.py`` needs torch, onnxruntime and onnxscript (its test is skipped without
them); ``rfcn_head.py`` needs only NumPy.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
HANG_GUARD_S = 600  # not a speed check: a stuck script fails instead of blocking the suite
# torch.compile's compiler runs in this process: on a few cores, starting inductor's pool
# of compile workers costs more than the pool saves (about 23 s against 33 s for a cold
# run of detector.py on two cores).
ENVIRONMENT = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="1")


def run_example(name, folder):
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=folder, env=ENVIRONMENT,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(folder.iterdir()) == []  # leaves nothing behind
    return result.stdout


def test_detector(tmp_path):
    for module in ("torch", "onnxruntime", "onnxscript"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"examples/detector.py needs {module}, which is not installed")
    output = run_example("detector.py", tmp_path)
    for check in ("training: the mean loss fell", "torch.compile: the compiled detector matches",
                  "torch.export: exported at batch 4, run at batch 5",
                  "ONNX: the backbone in onnxruntime"):
        assert check in output, output


def test_rfcn_head(tmp_path):
    output = run_example("rfcn_head.py", tmp_path)
    for check in ("the vote picks class 1, class 2 and the background",
                  "with its offsets the misplaced proposal pools what a well-placed RoI",
                  "raising the score moves the bins left"):
        assert check in output, output
