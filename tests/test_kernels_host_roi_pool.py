"""Host run of kernels/deform_roi_pool.cu against the NumPy path.

As in test_kernels_host.py, ``tests/host`` compiles the kernel source as C++ (one
thread walks each grid-stride loop) and ``cudeform._gpu.deform_roi_pool`` drives
it with ``xp=numpy``. That checks the kernels' RoI, bin and window arithmetic,
the bad-RoI guards and the host logic without a GPU; not atomicAdd races, not the
16-bit types. Both sides compute sample positions with the same float operations
in the same order, so they agree even on RoIs too large for those positions to
mean anything.
"""

from __future__ import annotations

import numpy
import pytest

from cudeform._cpu import deform_roi_pool as cpu
from cudeform._gpu import deform_roi_pool as gpu
from cudeform._gpu.signatures import (
    DEFORM_ROI_POOL_KERNELS, FIXED_POINT_TO_FLOAT, MAX_ABS_EXPONENT,
)
from cudeform._shapes import deform_roi_pool_geometry
from tests.helpers import dtypes, force_64_bit_indices
from tests.host.compare import HostOp, recording_launch, scatter_modes
from tests.host.loader import compiler
from tests.roi_pool_cases import ROI_POOL_CASES, off_kink_case, roi_pool_case, with_bad_rois

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")

FORWARD, BACKWARD_INPUT, BACKWARD_OFFSET = DEFORM_ROI_POOL_KERNELS
ROI_POOL = HostOp(gpu, cpu, deform_roi_pool_geometry, operand_names=("input", "rois", "offset"),
                  grad_names=("input", "offset"))


@scatter_modes
@dtypes
@pytest.mark.parametrize("name", ROI_POOL_CASES)
def test_matches_numpy(name, dtype, deterministic):
    rng = numpy.random.default_rng(3000 + list(ROI_POOL_CASES).index(name))
    arrays, options = roi_pool_case(rng, dtype=dtype, **ROI_POOL_CASES[name])
    arrays, bad = with_bad_rois(rng, arrays, options)
    output, grads = ROI_POOL.assert_matches_numpy(arrays, options,
                                                  ROI_POOL.grad_output(rng, arrays, options),
                                                  deterministic=deterministic)
    assert (output[bad] == 0).all()
    if grads[1] is not None:
        assert (grads[1][bad] == 0).all()


@scatter_modes
@dtypes
def test_64_bit_index_instantiation(monkeypatch, dtype, deterministic):
    rng = numpy.random.default_rng(3100)
    arrays, options = roi_pool_case(rng, dtype=dtype, spatial_scale=1 / 16, output_size=(3, 2))
    arrays, _ = with_bad_rois(rng, arrays, options)
    force_64_bit_indices(monkeypatch, gpu)
    calls = []
    ROI_POOL.assert_matches_numpy(arrays, options, ROI_POOL.grad_output(rng, arrays, options),
                                  launch=recording_launch(calls), deterministic=deterministic)
    scatter = ([MAX_ABS_EXPONENT, BACKWARD_INPUT, FIXED_POINT_TO_FLOAT] if deterministic
               else [BACKWARD_INPUT])
    assert [kernel for kernel, _, _ in calls] == [FORWARD, *scatter, BACKWARD_OFFSET]
    assert all(bits == 64 for _, bits, _ in calls)


def test_small_cases_use_32_bit_indices_and_no_offset_kernel_without_offset():
    rng = numpy.random.default_rng(3200)
    arrays, options = roi_pool_case(rng, offset=False)
    calls = []
    grads = ROI_POOL.backward(ROI_POOL.grad_output(rng, arrays, options), arrays, options,
                              launch=recording_launch(calls))
    assert grads[1] is None
    assert [(kernel, bits) for kernel, bits, _ in calls] == [(BACKWARD_INPUT, 32)]
    rois = ROI_POOL.geometry(arrays, options).rois
    assert calls[0][2] == rois * 3 * 2 * 3  # one thread per output


@scatter_modes
@dtypes
def test_zero_rois(dtype, deterministic):
    input = numpy.ones((2, 3, 4, 5), dtype)
    arrays = dict(input=input, rois=numpy.zeros((0, 5), dtype),
                  offset=numpy.zeros((0, 2, 2, 3), dtype))
    options = dict(output_size=(2, 3), spatial_scale=1.0, sampling_ratio=0, gamma=0.1)
    output = ROI_POOL.forward(arrays, options)
    assert output.shape == (0, 3, 2, 3) and output.dtype == dtype
    grad_input, grad_offset = ROI_POOL.backward(output, arrays, options,
                                                deterministic=deterministic)
    assert grad_input.shape == input.shape and not grad_input.any()
    assert grad_offset.shape == (0, 2, 2, 3)


@scatter_modes
@pytest.mark.parametrize("spatial_scale, sampling_ratio, gamma", [(1.0, 0, 0.1), (1 / 16, 2, 0.5)])
def test_host_backward_matches_central_differences(spatial_scale, sampling_ratio, gamma,
                                                   deterministic):
    """The host-run backward is the derivative of the host-run forward (float64)."""
    rng = numpy.random.default_rng(3300 + sampling_ratio)
    arrays, options = off_kink_case(rng, spatial_scale=spatial_scale,
                                    sampling_ratio=sampling_ratio, gamma=gamma)
    ROI_POOL.assert_backward_matches_central_differences(
        arrays, options, ROI_POOL.grad_output(rng, arrays, options), deterministic=deterministic)
