"""float16 and bfloat16 CPU tensors, and CPU autocast, through the PyTorch adapter.

The NumPy path has no 16-bit types: the adapter computes in float32 and returns the
input's dtype, gradients included. The oracle is the NumPy core itself, in float32 on
the same 16-bit values (bit for bit after rounding) and in float64 (within a few unit
roundoffs).

Skipped when PyTorch cannot be imported (install the ``torch`` extra).
"""

from __future__ import annotations

import numpy
import pytest

torch = pytest.importorskip("torch")

import cudeform  # noqa: E402
from cudeform.adapters import torch as adapter  # noqa: E402
from tests.test_adapter_torch import conv_tensors, op_cases  # noqa: E402
from tests.helpers import conv_case  # noqa: E402
from tests.roi_pool_cases import roi_pool_case  # noqa: E402

SIXTEEN_BIT = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
CORE = {"deform_conv2d": (cudeform.deform_conv2d, cudeform.deform_conv2d_backward),
        "deform_roi_pool": (cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward),
        "deform_psroi_pool": (cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward)}
ARRAY_NAMES = {"deform_conv2d": ("input", "offset", "weight", "bias", "stride", "padding",
                                 "dilation", "mask"),
               "deform_roi_pool": ("input", "rois", "offset", "output_size", "spatial_scale",
                                   "sampling_ratio", "gamma"),
               "deform_psroi_pool": ("input", "rois", "offset", "output_dim", "group_size",
                                     "pooled_size", "part_size", "sample_per_part",
                                     "spatial_scale", "trans_std")}


def core_call(op, args, numpy_dtype):
    """The core's forward and backward functions and the op's positional ``args`` as
    their keyword arguments, tensors as NumPy arrays of ``numpy_dtype``."""
    name = op.default._schema.name.split("::")[1]
    kwargs = {}
    for key, value in zip(ARRAY_NAMES[name], args):
        if isinstance(value, torch.Tensor):
            value = value.detach().double().numpy().astype(numpy_dtype)
        kwargs[key] = value
    return CORE[name], kwargs


def leaves(args, dtype):
    """``args`` with every tensor rounded to ``dtype``, as a leaf that keeps
    ``requires_grad``."""
    return tuple(a.detach().to(dtype).requires_grad_(a.requires_grad)
                 if isinstance(a, torch.Tensor) else a for a in args)


@SIXTEEN_BIT
def test_16_bit_cpu_tensors_compute_in_float32_and_keep_their_dtype(dtype):
    """Forward and every gradient, through autograd, of each op on 16-bit CPU tensors:
    exactly the float32 core on the same values, rounded to ``dtype``; and within 4
    unit roundoffs (times max|reference|) of the float64 core."""
    for forward, _, args in op_cases(numpy.random.default_rng(70), numpy.float64):
        args = leaves(args, dtype)
        output = forward(*args)
        assert output.dtype == dtype
        grad_output = torch.randn(output.shape, generator=torch.Generator().manual_seed(1),
                                  dtype=torch.float64).to(dtype)
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        grads = torch.autograd.grad(output, inputs, grad_output)
        (core_forward, core_backward), exact = core_call(forward, args, numpy.float64)
        _, single = core_call(forward, args, numpy.float32)
        go = grad_output.double().numpy()
        names = [k for k, a in zip(exact, args) if isinstance(a, torch.Tensor)
                 and a.requires_grad]
        expected_single = [core_forward(**single)] + [
            getattr(core_backward(go.astype(numpy.float32), **single), k) for k in names]
        expected_exact = [core_forward(**exact)] + [
            getattr(core_backward(go, **exact), k) for k in names]
        for got, want, reference in zip((output, *grads), expected_single, expected_exact):
            assert got.dtype == dtype
            torch.testing.assert_close(got, torch.from_numpy(want).to(dtype), rtol=0, atol=0)
            atol = 4 * UNIT_ROUNDOFF[dtype] * numpy.abs(reference).max(initial=0.0)
            numpy.testing.assert_allclose(got.detach().double().numpy(), reference, rtol=0,
                                          atol=atol)


@SIXTEEN_BIT
def test_a_16_bit_layer_trains(dtype):
    torch.manual_seed(71)
    layer = adapter.ModulatedDeformConv2dPack(3, 4, 3, padding=1).to(dtype)
    x, target = torch.randn(2, 3, 6, 6, dtype=dtype), torch.randn(2, 4, 6, 6, dtype=dtype)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        loss = (layer(x).float() - target.float()).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad.dtype == dtype for p in layer.parameters())
    assert losses[-1] < losses[0]


def test_cpu_autocast_runs_in_the_autocast_dtype():
    """Under ``torch.autocast("cpu")`` a layer's output stays in the autocast dtype:
    every floating input is cast to it, as autocast does for ``conv2d``; the gradients
    come back in each leaf's own dtype."""
    torch.manual_seed(72)
    layer = adapter.DeformConv2dPack(4, 6, 3, padding=1)
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.3)
    x = torch.randn(2, 4, 7, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        offset = layer.conv_offset(x)  # nn.Conv2d under autocast: bfloat16 already
    assert y.dtype == torch.bfloat16 and offset.dtype == torch.bfloat16
    expected = adapter.deform_conv2d(x.detach().bfloat16(), offset.detach(),
                                     layer.weight.detach().bfloat16(), padding=1)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
    assert layer.conv_offset.weight.grad.abs().max() > 0

    case = conv_case(numpy.random.default_rng(73), dtype=numpy.float32)
    t, options = conv_tensors(case)
    with torch.autocast("cpu", dtype=torch.float16):
        y = adapter.deform_conv2d(**{**t, "input": t["input"].double()}, **options)
    assert y.dtype == torch.float16  # float64 inputs are cast down too


def test_cpu_autocast_under_torch_compile():
    arrays, options = roi_pool_case(numpy.random.default_rng(74))
    t = {k: torch.tensor(v, dtype=torch.float32) for k, v in arrays.items()}

    def pool(x, rois, offset):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return adapter.deform_roi_pool(x, rois, offset, **options)

    y = pool(t["input"], t["rois"], t["offset"])
    assert y.dtype == torch.bfloat16
    torch._dynamo.reset()
    compiled = torch.compile(pool, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(t["input"], t["rois"], t["offset"]), y,
                               rtol=0, atol=0)
