"""Shared pieces of the GPU tests: the skip condition, copies between host and device,
one op run on CuPy arrays and compared with its NumPy path, 16-bit tolerances and the
compute-sanitizer runs (memcheck and racecheck). (The ``launches`` fixture is in conftest.py.)

Importing this module needs neither CuPy nor a GPU: without them ``cupy`` is None
and ``requires_gpu`` skips every test of a module that sets it as ``pytestmark``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Callable

import numpy
import pytest

from cudeform._cli import why_cupy_cannot_run
from tests.helpers import TOLERANCES

try:
    import cupy
except Exception:  # not installed, or its CUDA libraries fail to load
    cupy = None

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _why_no_gpu():
    """Why the GPU tests cannot run here, or None when they can (the reason the
    command line gives, ``cudeform._cli.why_cupy_cannot_run``)."""
    if cupy is None:
        return "no CUDA device (CuPy is not installed or fails to import)"
    return why_cupy_cannot_run(cupy)


NO_GPU = _why_no_gpu()
# The ``pytestmark`` of every GPU test module.
requires_gpu = [pytest.mark.gpu, pytest.mark.skipif(NO_GPU is not None, reason=str(NO_GPU))]

# Unit roundoff of the 16-bit storage types (half their machine epsilon).
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


# --- host and device arrays ----------------------------------------------------------------


def to_device(arrays):
    return {k: None if v is None else cupy.asarray(v) for k, v in arrays.items()}


def to_host(array):
    return None if array is None else cupy.asnumpy(array)


def results_to_host(results):
    """``(output, grads)`` with every array copied to the host."""
    return to_host(results[0]), [to_host(g) for g in results[1]]


def noncontiguous_device(array):
    """A CuPy array with the values of ``array`` in a non-C-contiguous layout."""
    if array is None:
        return None
    device = cupy.asarray(array)
    if device.ndim >= 2:
        return cupy.swapaxes(cupy.ascontiguousarray(cupy.swapaxes(device, -1, -2)), -1, -2)
    spread = cupy.zeros(2 * device.size, dtype=device.dtype)
    spread[::2] = device
    return spread[::2]


def low_precision_dtype(name):
    """The numpy dtype of ``name``; bfloat16 skips unless CuPy takes ml_dtypes arrays."""
    if name == "float16":
        return numpy.dtype(numpy.float16)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtype = numpy.dtype(ml_dtypes.bfloat16)
    try:
        cupy.asarray(numpy.zeros(4, dtype))
    except Exception as error:
        pytest.skip(f"cupy.asarray does not accept an ml_dtypes.bfloat16 array: "
                    f"{type(error).__name__}: {error}")
    return dtype


def low_and_exact(arrays, dtype):
    """``(low, exact)``: ``arrays`` rounded to ``dtype``, and those values in float64."""
    low = {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}
    exact = {k: None if v is None else v.astype(numpy.float64) for k, v in low.items()}
    return low, exact


# --- one op on CuPy arrays against its NumPy path -------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeviceOp:
    """An op's forward and backward, and the names of the output and of its gradients."""

    forward: Callable
    backward: Callable
    names: tuple  # "output", then the fields of the backward's named tuple

    def grad_output(self, rng, arrays, options):
        """A random output gradient for the NumPy ``arrays``, in their dtype."""
        shape = self.forward(**arrays, **options).shape  # NumPy: the output shape
        return rng.standard_normal(shape).astype(arrays["input"].dtype)

    def run(self, device_arrays, options, grad_output):
        """Forward and backward on CuPy arrays, checked for kind, device and dtype.

        A gradient is None exactly where its argument is None.
        """
        dtype = device_arrays["input"].dtype
        output = self.forward(**device_arrays, **options)
        grads = self.backward(grad_output, **device_arrays, **options)
        for name, result in zip(self.names, (output, *grads)):
            if name != "output" and device_arrays[name] is None:
                assert result is None, name
                continue
            assert isinstance(result, cupy.ndarray), name
            assert result.dtype == dtype, name
            assert result.device.id == device_arrays["input"].device.id, name
        return output, grads

    def assert_same_results(self, actual, expected, dtype, compared=None):
        """``(output, grads)`` pairs agree to the TOLERANCES of ``dtype``; all finite.

        Only the results named in ``compared`` (default: all) are checked; where the
        expected one is None, the actual one must be None.
        """
        rtol, atol = TOLERANCES[numpy.dtype(dtype)]
        for name, got, want in zip(self.names, (actual[0], *actual[1]),
                                   (expected[0], *expected[1])):
            if compared is not None and name not in compared:
                continue
            if want is None:
                assert got is None, name
                continue
            got = to_host(got) if cupy is not None and isinstance(got, cupy.ndarray) else got
            assert got.shape == want.shape, name
            assert numpy.isfinite(got).all(), name
            numpy.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)

    def assert_matches_numpy(self, arrays, options, grad_output, *, compared=None,
                             device_arrays=None, device_grad_output=None):
        """The CuPy forward and gradients equal the NumPy path's; returns the CuPy ones."""
        expected = (self.forward(**arrays, **options),
                    self.backward(grad_output, **arrays, **options))
        device_arrays = to_device(arrays) if device_arrays is None else device_arrays
        if device_grad_output is None:
            device_grad_output = cupy.asarray(grad_output)
        actual = self.run(device_arrays, options, device_grad_output)
        self.assert_same_results(actual, expected, arrays["input"].dtype, compared)
        return actual

    def assert_within_roundoff(self, actual, expected, dtype_name, units):
        """Each result (output, then gradients) is within ``units`` unit roundoffs of
        ``dtype_name`` times max|expected| of the float64 ``expected``; all finite."""
        for name, got, want in zip(self.names, actual, expected):
            if want is None:
                continue
            got = to_host(got).astype(numpy.float64)
            assert numpy.isfinite(got).all(), name
            atol = units * UNIT_ROUNDOFF[dtype_name] * numpy.abs(want).max(initial=0.0)
            numpy.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=name)


# --- compute-sanitizer ---------------------------------------------------------------------

# Put before every sanitizer script: imports, no memory pool, and two helpers.
_SCRIPT_START = '''
import numpy, cupy
import cudeform

cupy.cuda.set_allocator(None)  # one cudaMalloc per array, so memcheck knows its bounds


def forward_and_backward(forward, backward, arrays, options, rng):
    """Both on device copies of ``arrays``, with a random output gradient; all finite."""
    device = {k: None if v is None else cupy.asarray(v) for k, v in arrays.items()}
    output = forward(**device, **options)
    grad_output = cupy.asarray(rng.standard_normal(output.shape).astype(output.dtype))
    grads = backward(grad_output, **device, **options)
    cupy.cuda.runtime.deviceSynchronize()
    for result in (output, *grads):
        assert result is None or bool(cupy.isfinite(result).all())


def index_widths(gpu_module):
    """Yield 32, then 64 once ``gpu_module`` launches with 64-bit indices only."""
    yield 32
    gpu_module.index_bits = lambda *sizes: 64
    yield 64


def scatter_modes():
    """Yield False (float atomics), then True with cudeform in deterministic mode."""
    for deterministic in (False, True):
        cudeform.set_deterministic(deterministic)
        yield deterministic
    cudeform.set_deterministic(None)

'''
# And after it, the line that shows the script ran to its end.
_SCRIPT_END = 'print("sanitizer script finished")\n'


def compute_sanitizer():
    """Path of compute-sanitizer, or None."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        candidate = pathlib.Path(root or "/nonexistent") / "bin" / "compute-sanitizer"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


# The last line of a clean run of each tool.
_CLEAN_SUMMARY = {"memcheck": "ERROR SUMMARY: 0 errors",
                  "racecheck": "RACECHECK SUMMARY: 0 hazards displayed (0 errors"}


def run_under_sanitizer(script, tmp_path, tool="memcheck"):
    """Run the Python ``script`` under compute-sanitizer ``tool`` (memcheck or racecheck):
    no error, and to its end.

    ``script`` runs from the repository root after ``import numpy, cupy, cudeform``, with
    CuPy's memory pool off and ``forward_and_backward``, ``index_widths`` and
    ``scatter_modes`` defined. Skips when compute-sanitizer cannot be found. (racecheck
    looks at shared memory, which the kernels do not use: it guards against a future
    kernel that does.)
    """
    path = _sanitizer_script(script, tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run(
        [_sanitizer(), "--tool", tool, "--error-exitcode", "1", sys.executable, str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    log = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, log
    assert _CLEAN_SUMMARY[tool] in result.stdout + result.stderr, log
    assert "sanitizer script finished" in result.stdout, log


def _sanitizer():
    tool = compute_sanitizer()
    if tool is None:
        pytest.skip("compute-sanitizer not found on PATH, $CUDA_HOME, $CUDA_PATH or "
                    "/usr/local/cuda")
    return tool


def _sanitizer_script(script, tmp_path):
    path = tmp_path / "sanitized.py"
    path.write_text(_SCRIPT_START + script + _SCRIPT_END)
    return path
