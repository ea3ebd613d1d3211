"""Host run of the CUDA kernels: the kernel source, compiled for the CPU, against the NumPy path.

``tests/host`` compiles ``kernels/*.cu`` as C++ (one thread runs each grid-stride
loop), and ``cudeform._gpu.deform_conv`` drives it with ``xp=numpy``. That checks
the kernels' index math, border rule and the GPU host logic (chunking, GEMMs)
without a GPU; what it cannot check is concurrency (atomicAdd races) and the
16-bit types.
"""

from __future__ import annotations

import numpy
import pytest

import cudeform
from cudeform import _workspace
from cudeform._cpu import deform_conv as cpu
from cudeform._gpu import deform_conv as gpu
from cudeform._gpu.signatures import DEFORM_IM2COL
from cudeform._shapes import deform_conv2d_geometry
from tests.helpers import (
    CONV_CASES as CASES, assert_outside_taps_get_zero_gradients, bad_offset_case, conv_case,
    dtypes, force_64_bit_indices, integer_offset_case, split_case,
)
from tests.host.compare import HostOp, recording_launch, scatter_modes
from tests.host.loader import compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")

GRAD_NAMES = ("input", "offset", "weight", "bias", "mask")
CONV = HostOp(gpu, cpu, deform_conv2d_geometry, operand_names=GRAD_NAMES, grad_names=GRAD_NAMES)


@scatter_modes
@dtypes
@pytest.mark.parametrize("name", CASES)
def test_matches_numpy(name, dtype, deterministic):
    rng = numpy.random.default_rng(1000 + list(CASES).index(name))
    arrays, options = split_case(conv_case(rng, dtype=dtype, **CASES[name]))
    CONV.assert_matches_numpy(arrays, options, CONV.grad_output(rng, arrays, options),
                              deterministic=deterministic)


@scatter_modes
@dtypes
def test_integer_offsets_on_borders_and_kinks(dtype, deterministic):
    # Whole-pixel offsets put samples exactly on corners, on -1 and on H / W,
    # where the border test and the one-sided derivative must agree.
    rng = numpy.random.default_rng(7)
    arrays, options = integer_offset_case(rng, dtype)
    CONV.assert_matches_numpy(arrays, options, CONV.grad_output(rng, arrays, options),
                              deterministic=deterministic)


@scatter_modes
@dtypes
def test_non_finite_and_huge_offsets(dtype, deterministic):
    rng = numpy.random.default_rng(11)
    arrays, options = bad_offset_case(rng, dtype)
    _, grads = CONV.assert_matches_numpy(arrays, options, CONV.grad_output(rng, arrays, options),
                                         deterministic=deterministic)
    assert_outside_taps_get_zero_gradients(arrays["offset"], grads[1], grads[4])


@scatter_modes
@pytest.mark.parametrize("images_per_chunk", [1, 2])
@dtypes
def test_small_workspace_limit_chunks_the_batch(monkeypatch, dtype, images_per_chunk,
                                                deterministic):
    rng = numpy.random.default_rng(23 + images_per_chunk)
    arrays, options = split_case(
        conv_case(rng, dtype=dtype, batch=5, groups=2, offset_groups=2, size=(6, 5)))
    g = CONV.geometry(arrays, options)
    itemsize = numpy.dtype(dtype).itemsize
    name = numpy.dtype(dtype).name
    pixels = g.out_h * g.out_w
    # The forward's workspace is its columns and the GEMM's result; the backward adds
    # the ones of the bias gradient, its partial sums and (deterministic) fixed point.
    forward_bytes = (g.in_channels * g.taps + g.out_channels) * pixels * itemsize
    assert gpu.workspace_per_image(g, name, itemsize, backward=False) == forward_bytes
    backward_bytes = gpu.workspace_per_image(g, name, itemsize, backward=True,
                                             deterministic=deterministic)
    assert backward_bytes > forward_bytes + pixels * itemsize
    assert gpu.workspace_per_call(g, name, itemsize, backward=True) == 0
    monkeypatch.setattr(_workspace, "_limit", None)  # restored after the test
    cudeform.set_workspace_limit(images_per_chunk * backward_bytes)

    calls = []
    CONV.assert_matches_numpy(arrays, options, CONV.grad_output(rng, arrays, options),
                              launch=recording_launch(calls), deterministic=deterministic)
    im2col_counts = [count for kernel, _, count in calls if kernel is DEFORM_IM2COL]
    forward_chunks = -(-g.batch // (images_per_chunk * backward_bytes // forward_bytes))
    backward_chunks = -(-g.batch // images_per_chunk)
    assert len(im2col_counts) == forward_chunks + backward_chunks
    # Every image's columns are built once in each pass: with 2 channels per offset
    # group, one run per (image, group, tap, pixel).
    runs = g.batch * g.offset_groups * g.taps * g.out_h * g.out_w
    assert sum(im2col_counts[:forward_chunks]) == sum(im2col_counts[forward_chunks:]) == runs


@scatter_modes
@dtypes
def test_64_bit_index_instantiation(monkeypatch, dtype, deterministic):
    rng = numpy.random.default_rng(31)
    arrays, options = split_case(conv_case(
        rng, dtype=dtype, batch=3, groups=2, offset_groups=2, kernel=(3, 2),
        stride=(2, 1), padding=(1, 0), dilation=(2, 1), size=(7, 5), offset_scale=4.0))
    force_64_bit_indices(monkeypatch, gpu)
    calls = []
    CONV.assert_matches_numpy(arrays, options, CONV.grad_output(rng, arrays, options),
                              launch=recording_launch(calls), deterministic=deterministic)
    assert calls and all(bits == 64 for _, bits, _ in calls)


def test_small_cases_use_32_bit_indices():
    rng = numpy.random.default_rng(37)
    arrays, options = split_case(conv_case(rng))
    calls = []
    CONV.backward(CONV.grad_output(rng, arrays, options), arrays, options,
                  launch=recording_launch(calls))
    assert [kernel.name for kernel, _, _ in calls] == [
        "deform_im2col", "deform_col2im", "deform_col2im_coord", "deform_col2im_coord_reduce"]
    assert all(bits == 32 for _, bits, _ in calls)


GRADCHECK_CASES = {
    "dcnv2-groups": dict(in_channels=2, out_channels=2, groups=2, offset_groups=2,
                         kernel=(2, 2), size=(4, 3), padding=(1, 0)),
    "kernel32-stride21-dil21": dict(in_channels=2, out_channels=2, offset_groups=2,
                                    kernel=(3, 2), stride=(2, 1), padding=(1, 0),
                                    dilation=(2, 1), size=(6, 4)),
}


@scatter_modes
@pytest.mark.parametrize("name", GRADCHECK_CASES)
def test_host_backward_matches_central_differences(name, deterministic):
    """The host-run backward is the derivative of the host-run forward (float64)."""
    rng = numpy.random.default_rng(41 + list(GRADCHECK_CASES).index(name))
    # Sampling positions keep a fractional part in [0.1, 0.9], so every sample
    # stays on one bilinear piece under the central-difference step.
    arrays, options = split_case(conv_case(
        rng, batch=1, dtype=numpy.float64, offset_scale=2.0, off_kinks=True,
        **GRADCHECK_CASES[name]))
    CONV.assert_backward_matches_central_differences(
        arrays, options, CONV.grad_output(rng, arrays, options), deterministic=deterministic)
