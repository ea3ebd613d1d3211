"""Deterministic mode on the GPU (needs a CUDA device): every gradient of all three ops
bit-identical from run to run, the fixed-point results as accurate as float32 against
float64, and the switches (``set_deterministic``, ``CUDEFORM_DETERMINISTIC=1``) reaching
the kernels.

The cases make many contributions land on the same input elements (large offsets, many
RoIs on a small map), so that float atomics would arrive in a different order on every
run. Skipped without CuPy or a usable CUDA device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy
import pytest

import cudeform
from tests.gpu import (
    ROOT, UNIT_ROUNDOFF, DeviceOp, cupy, low_and_exact, low_precision_dtype, requires_gpu,
    to_device, to_host,
)
from tests.helpers import TOLERANCES, conv_case, split_case
from tests.psroi_cases import psroi_case
from tests.roi_pool_cases import roi_pool_case

pytestmark = requires_gpu

CONV = DeviceOp(cudeform.deform_conv2d, cudeform.deform_conv2d_backward,
                ("output", "input", "offset", "weight", "bias", "mask"))
ROI_POOL = DeviceOp(cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward,
                    ("output", "input", "offset"))
PSROI_POOL = DeviceOp(cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward,
                      ("output", "input", "offset"))


def conv(rng):
    return split_case(conv_case(rng, batch=2, in_channels=64, out_channels=32, groups=2,
                                offset_groups=2, size=(25, 42), offset_scale=6.0))


def roi_pool(rng):
    return roi_pool_case(rng, batch=2, channels=16, size=(12, 12), rois=300, sampling_ratio=0,
                         output_size=(4, 4))


def psroi_pool(rng):
    return psroi_case(rng, batch=2, output_dim=8, num_classes=2, group_size=3, pooled_size=3,
                      rois=300, size=(12, 12))


CASES = {"conv": (CONV, conv), "roi-pool": (ROI_POOL, roi_pool),
         "psroi-pool": (PSROI_POOL, psroi_pool)}
ops = pytest.mark.parametrize("name", CASES)
ALL_DTYPES = ("float32", "float64", "float16", "bfloat16")


@pytest.fixture
def deterministic():
    cudeform.set_deterministic(True)
    yield
    cudeform.set_deterministic(None)


def case_in(name, dtype_name, seed=0):
    """``(op, host arrays in float64, options, device arrays in dtype_name, grad_output)``."""
    op, build = CASES[name]
    rng = numpy.random.default_rng(seed + list(CASES).index(name))
    arrays, options = build(rng)
    arrays = {k: None if v is None else v.astype(numpy.float64) for k, v in arrays.items()}
    dtype = (numpy.dtype(dtype_name) if dtype_name in ("float32", "float64")
             else low_precision_dtype(dtype_name))
    low, exact = low_and_exact(arrays, dtype)
    grad_output = op.grad_output(rng, exact, options).astype(dtype)
    return op, exact, options, to_device(low), grad_output


def gradient_bytes(op, device, options, grad_output):
    grads = op.backward(cupy.asarray(grad_output), **device, **options)
    cupy.cuda.runtime.deviceSynchronize()
    return [None if g is None else to_host(g).tobytes() for g in grads]


@ops
@pytest.mark.parametrize("dtype_name", ALL_DTYPES)
def test_deterministic_gradients_are_bit_identical_run_to_run(name, dtype_name, deterministic):
    op, _, options, device, grad_output = case_in(name, dtype_name)
    first = gradient_bytes(op, device, options, grad_output)
    for attempt in range(3):
        cupy.get_default_memory_pool().free_all_blocks()  # fresh buffers each run
        again = gradient_bytes(op, device, options, grad_output)
        assert again == first, f"run {attempt + 2} differs from the first"


@ops
@pytest.mark.parametrize("dtype_name", ALL_DTYPES)
def test_deterministic_input_gradient_matches_float64(name, dtype_name, deterministic):
    """The fixed-point input gradient against the float64 NumPy path on the same values:
    float32 and float64 within their comparison tolerances, 16-bit types within 16 unit
    roundoffs of max|reference| (the bound of the 16-bit tests of the op's GPU tests).
    The other gradients are gathers that the mode does not change."""
    op, exact, options, device, grad_output = case_in(name, dtype_name, seed=10)
    want = op.backward(grad_output.astype(numpy.float64), **exact, **options).input
    got = to_host(op.backward(cupy.asarray(grad_output), **device, **options).input)
    if dtype_name in UNIT_ROUNDOFF:
        rtol, atol = 0.0, 16 * UNIT_ROUNDOFF[dtype_name] * numpy.abs(want).max()
    else:
        rtol, atol = TOLERANCES[numpy.dtype(dtype_name)]
    numpy.testing.assert_allclose(got.astype(numpy.float64), want, rtol=rtol, atol=atol)


@ops
def test_default_mode_is_close_run_to_run(name):
    """Float atomics: two runs agree to float32 tolerances; their last bits may differ
    (printed, not asserted: the order of the atomics is up to the GPU)."""
    op, _, options, device, grad_output = case_in(name, "float32")
    first = op.backward(cupy.asarray(grad_output), **device, **options)
    again = op.backward(cupy.asarray(grad_output), **device, **options)
    rtol, atol = TOLERANCES[numpy.dtype(numpy.float32)]
    differing = 0
    for got, want in zip(again, first):
        if want is not None:
            numpy.testing.assert_allclose(to_host(got), to_host(want), rtol=rtol, atol=atol)
            differing += int((to_host(got) != to_host(want)).sum())
    print(f"\n{name}: {differing} elements differ in their last bits between two runs")


ENVIRONMENT_SCRIPT = """
import json, numpy, cupy, cudeform
from cudeform._gpu import launch
from tests.helpers import conv_case, split_case

names = []
real = launch.cuda_launch
def recording(kernel, *args, **kwargs):
    names.append(kernel.name)
    return real(kernel, *args, **kwargs)
launch.cuda_launch = recording

arrays, options = split_case(conv_case(numpy.random.default_rng(0), dtype=numpy.float32,
                                       offset_scale=6.0))
device = {k: None if v is None else cupy.asarray(v) for k, v in arrays.items()}
output = cudeform.deform_conv2d(**device, **options)
grads = [cudeform.deform_conv2d_backward(cupy.ones_like(output), **device, **options).input
         for _ in range(2)]
print(json.dumps({"deterministic": cudeform.is_deterministic(), "kernels": sorted(set(names)),
                  "same": bool((grads[0] == grads[1]).all())}))
"""


def test_environment_variable_turns_on_fixed_point_kernels():
    env = dict(os.environ, CUDEFORM_DETERMINISTIC="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run([sys.executable, "-c", ENVIRONMENT_SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["deterministic"] and report["same"]
    assert {"deform_col2im_bound", "fixed_point_to_float"} <= set(report["kernels"])
