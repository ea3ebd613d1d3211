"""Parallelism as a number: the grid-stride iterations of every kernel launch of the
GPU host logic on the bench's GPU layers S1-S4, without a GPU.

The host logic of ``cudeform._gpu.deform_conv`` runs on NumPy arrays of the layers'
real shapes with a launcher that checks the arguments of each launch and records its
iteration count without running it, and a GEMM runner that only checks what cuBLAS
would be told. An H200 keeps about 270,000 threads resident; every forward and backward
launch must reach 2**17 iterations, except the last pass of the offset gradient, which
has one iteration per gradient value it writes (a further split would need another
reduction): that one is checked to have exactly that many.
"""

from __future__ import annotations

import numpy
import pytest

from cudeform._bench.cases import GPU_CASES, KERNEL
from cudeform._gpu import deform_conv as gpu
from cudeform._gpu.gemm import checked_views
from cudeform._gpu.signatures import DEFORM_COL2IM_COORD_REDUCE
from cudeform._shapes import deform_conv2d_geometry
from tests.host.compare import counting_launch

FULL = 2**17


def layer_arrays(case):
    """Uninitialised float32 arrays of a bench layer (nothing reads them here)."""
    taps = KERNEL * KERNEL
    shape = (case.batch, case.in_channels, case.height, case.width)
    spatial = (case.batch, 1, case.height, case.width)
    return dict(
        input=numpy.empty(shape, numpy.float32),
        offset=numpy.empty((case.batch, 2 * case.offset_groups * taps, *spatial[2:]),
                           numpy.float32),
        weight=numpy.empty((case.out_channels, case.in_channels, KERNEL, KERNEL), numpy.float32),
        bias=None,
        mask=(numpy.empty((case.batch, case.offset_groups * taps, *spatial[2:]), numpy.float32)
              if case.mask else None),
    )


def launches(case, deterministic):
    """``[(kernel name, iterations)]`` of the forward, then of the backward, of ``case``."""
    arrays = layer_arrays(case)
    g = deform_conv2d_geometry(arrays["input"].shape, arrays["offset"].shape,
                               arrays["weight"].shape, padding=case.padding,
                               dilation=case.dilation)
    engine = dict(dtype_name="float32", xp=numpy, gemm=checked_views,
                  deterministic=deterministic)
    order = [arrays[k] for k in ("input", "offset", "weight", "bias", "mask")]
    forward_calls, backward_calls = [], []
    gpu.forward(*order, g, launch=counting_launch(forward_calls), **engine)
    grad_output = numpy.empty(g.output_shape, numpy.float32)
    gpu.backward(grad_output, *order, g, launch=counting_launch(backward_calls), **engine)
    gradient_values = g.batch * g.offset_groups * g.taps * g.out_h * g.out_w * (
        3 if case.mask else 2)
    return forward_calls, backward_calls, gradient_values


@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize("case", GPU_CASES, ids=[case.name for case in GPU_CASES])
def test_every_launch_fills_the_gpu(case, deterministic):
    forward_calls, backward_calls, gradient_values = launches(case, deterministic)
    print(f"\n{case.name} ({case.geometry()}), {'deterministic' if deterministic else 'default'}:")
    for passes, calls in (("fwd", forward_calls), ("bwd", backward_calls)):
        for kernel, _, count in calls:
            print(f"  {passes} {kernel.name:30s} {count:>10,d}")
    assert [kernel.name for kernel, _, _ in forward_calls] == ["deform_im2col"]
    reduce_counts = [count for kernel, _, count in backward_calls
                     if kernel is DEFORM_COL2IM_COORD_REDUCE]
    assert reduce_counts == [gradient_values]
    small = [(kernel.name, count) for kernel, _, count in forward_calls + backward_calls
             if kernel is not DEFORM_COL2IM_COORD_REDUCE and count < FULL]
    assert not small, f"launches under 2**17 iterations: {small}"
