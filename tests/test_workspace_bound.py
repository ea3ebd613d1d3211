"""The workspace limit bounds every buffer that a GPU op call allocates besides its outputs
and gradients, in all three ops and both scatter modes.

The GPU host logic runs on the real shapes of the bench layers (S1-S4 at batch 16) and of
two RoI pooling heads at batch 16, on uninitialised NumPy arrays, with a launcher that
checks each launch's arguments and runs nothing (``counting_launch``) and a GEMM twin that
checks the views cuBLAS would use and computes nothing. tracemalloc sees every NumPy buffer
the host logic allocates, whether through the array module, an array method or an
operator, so the peak of the traced memory, less the outputs, is the workspace the same
code allocates from CuPy on the GPU.
"""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc

import numpy
import pytest

import cudeform
from cudeform import _shapes, _workspace
from cudeform._bench.cases import GPU_CASES_BATCH_16, KERNEL
from cudeform._cpu import deform_psroi_pool as cpu_deform_psroi_pool
from cudeform._cpu import deform_roi_pool as cpu_deform_roi_pool
from cudeform._gpu import deform_conv, deform_psroi_pool, deform_roi_pool
from cudeform._gpu.gemm import checked_views
from cudeform._gpu.scatter import scatter_bytes
from cudeform._gpu.signatures import (
    DEFORM_PSROI_POOL_BACKWARD_INPUT, DEFORM_ROI_POOL_BACKWARD_INPUT,
)
from tests.host.compare import HostOp, counting_launch, recording_launch
from tests.host.loader import compiler
from tests.psroi_cases import psroi_case
from tests.roi_pool_cases import roi_pool_case

LIMIT = 64 * 2**20
# tracemalloc also counts the Python objects of the call (array headers, argument dicts,
# the chunk objects), which are not device memory: a few kilobytes.
PYTHON_OBJECTS = 64 * 2**10
# Storage dtypes: bfloat16 runs on 16-bit integer views, as the torch adapter hands it.
DTYPES = {"float32": numpy.float32, "float16": numpy.float16, "bfloat16": numpy.uint16}
MODES = pytest.mark.parametrize("deterministic", [False, True],
                                ids=["default", "deterministic"])


@pytest.fixture(autouse=True)
def limit(monkeypatch):
    monkeypatch.setattr(_workspace, "_limit", None)  # restored after the test
    cudeform.set_workspace_limit(LIMIT)


def workspace_peak(run):
    """``(results, peak bytes)``: the peak of what ``run()`` allocates, less its results."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        results = run()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    flat = results if isinstance(results, tuple) else (results,)
    return results, peak - sum(a.nbytes for a in flat if a is not None)


def scalar_launch(calls):
    """``counting_launch`` that also records each launch's scalar arguments (recording
    the arrays would keep the buffers alive and change the peak)."""
    counting = counting_launch([])

    def launch(kernel, dtype_name, bits, count, **args):
        counting(kernel, dtype_name, bits, count, **args)
        calls.append((kernel, {k: v for k, v in args.items()
                               if isinstance(v, (int, float, numpy.number))}))
    return launch


def engine(dtype_name, deterministic, calls):
    return dict(dtype_name=dtype_name, xp=numpy, launch=scalar_launch(calls),
                gemm=checked_views, deterministic=deterministic)


# --- deform_conv2d -------------------------------------------------------------------------


def conv_arrays(case, dtype):
    """Uninitialised arrays of the layer with a bias (never read: nothing is computed)."""
    n, taps = case.batch, KERNEL * KERNEL
    spatial = (case.height, case.width)
    shapes = dict(input=(n, case.in_channels, *spatial),
                  offset=(n, 2 * case.offset_groups * taps, *spatial),
                  weight=(case.out_channels, case.in_channels, KERNEL, KERNEL),
                  bias=(case.out_channels,),
                  mask=(n, case.offset_groups * taps, *spatial) if case.mask else None)
    return {k: None if s is None else numpy.empty(s, dtype) for k, s in shapes.items()}


def conv_geometry(case, arrays):
    shapes = [None if arrays[k] is None else arrays[k].shape
              for k in ("input", "offset", "weight", "bias", "mask")]
    return _shapes.deform_conv2d_geometry(*shapes, padding=case.padding,
                                          dilation=case.dilation)


@MODES
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("case", GPU_CASES_BATCH_16, ids=lambda c: c.name)
def test_conv_workspace_stays_under_the_limit(case, dtype_name, deterministic):
    dtype = numpy.dtype(DTYPES[dtype_name])
    arrays = conv_arrays(case, dtype)
    g = conv_geometry(case, arrays)
    operands = [arrays[k] for k in ("input", "offset", "weight", "bias", "mask")]
    grad_output = numpy.empty(g.output_shape, dtype)
    for backward in (False, True):
        if not backward and deterministic:
            continue  # the forward has no scatter: one mode is enough
        calls = []
        if backward:
            run = lambda: deform_conv.backward(  # noqa: E731
                grad_output, *operands, g, **engine(dtype_name, deterministic, calls))
        else:
            run = lambda: deform_conv.forward(  # noqa: E731
                *operands, g, **engine(dtype_name, deterministic, calls))
        _, peak = workspace_peak(run)
        per_image = deform_conv.workspace_per_image(
            g, dtype_name, dtype.itemsize, backward=backward, deterministic=deterministic,
            mask=case.mask)
        per_call = deform_conv.workspace_per_call(g, dtype_name, dtype.itemsize,
                                                  backward=backward)
        # A chunk holds at least one image: one image over the limit is processed alone.
        bound = max(LIMIT, per_call + per_image)
        where = f"{case.name} {dtype_name} {'backward' if backward else 'forward'}"
        assert peak <= bound + PYTHON_OBJECTS, (
            f"{where}: {peak / 2**20:.1f} MiB > {bound / 2**20:.1f} MiB")
        assert calls, where  # the host logic ran its launches
        if per_call + per_image <= LIMIT:
            assert peak <= LIMIT + PYTHON_OBJECTS, where


@MODES
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_conv_estimate_bounds_one_image(dtype_name, deterministic):
    """With the limit at 1 byte every chunk is one image, whose buffers the estimate
    bounds (S3 keeps both ones and partial sums in play)."""
    case = dataclasses.replace(GPU_CASES_BATCH_16[2], batch=2)
    dtype = numpy.dtype(DTYPES[dtype_name])
    arrays = conv_arrays(case, dtype)
    g = conv_geometry(case, arrays)
    operands = [arrays[k] for k in ("input", "offset", "weight", "bias", "mask")]
    grad_output = numpy.empty(g.output_shape, dtype)
    cudeform.set_workspace_limit(1)
    calls = []
    _, peak = workspace_peak(lambda: deform_conv.backward(
        grad_output, *operands, g, **engine(dtype_name, deterministic, calls)))
    per_image = deform_conv.workspace_per_image(g, dtype_name, dtype.itemsize, backward=True,
                                                deterministic=deterministic)
    per_call = deform_conv.workspace_per_call(g, dtype_name, dtype.itemsize, backward=True)
    assert peak <= per_image + per_call + PYTHON_OBJECTS
    # and it is not loose: the columns alone are most of it
    columns = g.in_channels * g.taps * g.out_h * g.out_w * dtype.itemsize
    assert peak >= columns


# --- the RoI poolings ----------------------------------------------------------------------

ROI_POOL = dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=2, gamma=0.1)
PSROI_POOL = dict(output_dim=21, group_size=7, pooled_size=7, sample_per_part=2,
                  spatial_scale=1 / 16, trans_std=0.1)
# Mask R-CNN's c4 at 800x1344 (256 channels), and R-FCN's position-sensitive head for
# 21 classes (21 * 7 * 7 channels), each with 16 images and 128 RoIs per image.
ROI_HEADS = {
    "roi_pool": (deform_roi_pool, _shapes.deform_roi_pool_geometry, 256, ROI_POOL),
    "psroi_pool": (deform_psroi_pool, _shapes.deform_psroi_pool_geometry, 21 * 49, PSROI_POOL),
}


@MODES
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("head", ROI_HEADS)
def test_roi_pool_workspace_stays_under_the_limit(head, dtype_name, deterministic):
    module, geometry, channels, options = ROI_HEADS[head]
    dtype = numpy.dtype(DTYPES[dtype_name])
    batch, rois = 16, 16 * 128
    input = numpy.empty((batch, channels, 50, 84), dtype)
    boxes = numpy.empty((rois, 5), dtype)
    offset = numpy.empty((rois, 2, 7, 7), dtype)  # one class for the R-FCN head
    g = geometry(input.shape, boxes.shape, offset.shape, **options)
    grad_output = numpy.empty(g.output_shape, dtype)
    calls = []
    (grad_input, _), peak = workspace_peak(lambda: module.backward(
        grad_output, input, boxes, offset, g, **engine(dtype_name, deterministic, calls)))
    per_image = scatter_bytes(dtype_name, dtype.itemsize, deterministic) * input[0].size
    assert peak <= max(LIMIT, per_image) + PYTHON_OBJECTS, f"{peak / 2**20:.1f} MiB"
    if per_image:  # the scatter covers every image once, in ranges under the limit
        ranges = [(args["first_image"], args["images"]) for args in _scatter_args(calls)]
        assert len(ranges) > 1 and ranges[0][0] == 0
        assert all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:]))
        assert sum(n for _, n in ranges) == batch


def _scatter_args(calls):
    return [args for _, args in calls if "first_image" in args]


# Where the limit splits the RoI poolings' input-gradient scatter by images, the results
# stay the NumPy path's (the kernels compiled for the host, so this needs a C++ compiler).
HOST_HEADS = {
    "roi_pool": (HostOp(deform_roi_pool, cpu_deform_roi_pool, _shapes.deform_roi_pool_geometry,
                        operand_names=("input", "rois", "offset"),
                        grad_names=("input", "offset")),
                 lambda rng: roi_pool_case(rng, batch=3, rois=12),
                 DEFORM_ROI_POOL_BACKWARD_INPUT),
    "psroi_pool": (HostOp(deform_psroi_pool, cpu_deform_psroi_pool,
                          _shapes.deform_psroi_pool_geometry,
                          operand_names=("input", "rois", "offset"),
                          grad_names=("input", "offset")),
                   lambda rng: psroi_case(rng, batch=3, rois=12),
                   DEFORM_PSROI_POOL_BACKWARD_INPUT),
}


@MODES
@pytest.mark.parametrize("head", HOST_HEADS)
def test_roi_pool_scatter_by_images_matches_numpy(head, deterministic):
    if compiler() is None:
        pytest.skip("no C++ compiler to build the kernels for the host")
    host_op, make_case, scatter_kernel = HOST_HEADS[head]
    rng = numpy.random.default_rng(41)
    arrays, options = make_case(rng)
    grad_output = host_op.grad_output(rng, arrays, options)
    images = arrays["input"].shape[0]
    image_bytes = arrays["input"][0].size * scatter_bytes("float64", 8, deterministic)
    cudeform.set_workspace_limit(max(1, image_bytes))  # one image per range
    calls = []
    host_op.assert_matches_numpy(arrays, options, grad_output, launch=recording_launch(calls),
                                 deterministic=deterministic)
    scatters = [kernel for kernel, _, _ in calls if kernel is scatter_kernel]
    # float64 atomics add straight into the gradient: no buffer, one range
    assert len(scatters) == (images if deterministic else 1)
