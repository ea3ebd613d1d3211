"""The PyTorch adapter on CUDA, and the bfloat16 int16-view path it relies on.

The first part runs anywhere: the bfloat16 views of the core (CuPy has no bfloat16,
so the adapter hands bfloat16 tensors over as int16 views inside
``cudeform._arrays.bfloat16_views``) are checked on the host, with the float32 host
build of the kernels standing in for the ``__nv_bfloat16`` instantiation (load,
compute in float32, round each stored value: what the CUDA kernels do). The second
part needs a CUDA device, CuPy and a CUDA build of PyTorch: torchvision's
``deform_conv2d``, ``opcheck`` on CUDA (channels_last included), float16/bfloat16
against float64, autocast in float16 and bfloat16, torch's current stream, an
inductor-compiled channels_last model, and export (torch.export, ONNX) from a CUDA
model.
"""

from __future__ import annotations

import numpy
import pytest

torch = pytest.importorskip("torch")

import cudeform  # noqa: E402
from cudeform import _arrays  # noqa: E402
from cudeform._gpu import deform_conv as gpu_conv  # noqa: E402
from cudeform._gpu import deform_roi_pool as gpu_roi_pool  # noqa: E402
from cudeform._gpu.signatures import IN, OUT  # noqa: E402
from cudeform._gpu.storage import narrow, values  # noqa: E402
from cudeform._shapes import deform_conv2d_geometry, deform_roi_pool_geometry  # noqa: E402
from cudeform.adapters import torch as adapter  # noqa: E402
from tests.gpu import NO_GPU, UNIT_ROUNDOFF  # noqa: E402
from tests.helpers import conv_case, split_case  # noqa: E402
from tests.host.loader import compiler, host_launch  # noqa: E402
from tests.psroi_cases import psroi_case  # noqa: E402
from tests.roi_pool_cases import roi_pool_case  # noqa: E402
from tests.test_adapter_torch import conv_tensors, op_cases  # noqa: E402

BF16 = "bfloat16"


def bfloat16_view(array):
    """``array`` rounded to bfloat16, as an int16 view (torch does the rounding)."""
    return torch.tensor(array, dtype=torch.float32).bfloat16().view(torch.int16).numpy()


def test_storage_round_trip_matches_torch_bfloat16():
    rng = numpy.random.default_rng(50)
    x = numpy.concatenate([rng.standard_normal(1000) * 10.0 ** rng.integers(-30, 30, 1000),
                           [0.0, -0.0, numpy.inf, -numpy.inf, 3.4e38, 1e-40]]).astype(
        numpy.float32)
    view = narrow(x, numpy.dtype(numpy.int16), BF16, numpy)
    numpy.testing.assert_array_equal(view, bfloat16_view(x))
    expected = torch.from_numpy(bfloat16_view(x)).view(torch.bfloat16).float().numpy()
    numpy.testing.assert_array_equal(values(view, BF16, numpy), expected)
    assert numpy.isnan(values(narrow(numpy.float32([numpy.nan]), view.dtype, BF16, numpy),
                              BF16, numpy)).all()
    assert values(x, "float32", numpy) is x  # other dtypes pass through


def test_bfloat16_views_only_apply_to_cupy_inside_the_context():
    int16 = numpy.dtype(numpy.int16)
    with _arrays.bfloat16_views():
        assert _arrays.element_type(int16, numpy) == "int16"
        assert _arrays.element_type(int16, object()) == BF16  # any non-NumPy module
    assert _arrays.element_type(int16, object()) == "int16"


def emulated_bfloat16_launch(kernel, dtype_name, bits, count, **args):
    """The bfloat16 kernel on int16 views, emulated with the float32 host kernel."""
    assert dtype_name == BF16
    params = dict(kernel.params)
    converted = {k: values(v, BF16, numpy) if params[k] in (IN, OUT) and v is not None
                 else v for k, v in args.items()}
    host_launch(kernel, "float32", bits, count, **converted)
    for name, value in args.items():
        if params[name] == OUT and value is not None:
            value[...] = narrow(converted[name], value.dtype, BF16, numpy)


def assert_within_roundoff(actual, expected, units):
    for index, (got, want) in enumerate(zip(actual, expected)):
        if want is None:
            assert got is None, index
            continue
        got = values(got, BF16, numpy).astype(numpy.float64)
        atol = units * UNIT_ROUNDOFF[BF16] * numpy.abs(want).max(initial=0.0)
        numpy.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=str(index))


@pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_conv_host_logic_on_bfloat16_views(bias):
    """GEMMs, bias and casts of ``_gpu.deform_conv`` on int16 views: within 16 unit
    roundoffs of float64 on the same bfloat16 values (the bound of the float16/bfloat16
    tests of ``test_deform_conv_gpu.py``)."""
    rng = numpy.random.default_rng(51)
    arrays, options = split_case(conv_case(rng, bias=bias, groups=2, in_channels=4,
                                           out_channels=4, offset_groups=2))
    views = {k: None if v is None else bfloat16_view(v) for k, v in arrays.items()}
    exact = {k: None if v is None else values(v, BF16, numpy).astype(numpy.float64)
             for k, v in views.items()}
    g = deform_conv2d_geometry(arrays["input"].shape, arrays["offset"].shape,
                               arrays["weight"].shape, **options)
    run = dict(dtype_name=BF16, xp=numpy, launch=emulated_bfloat16_launch)
    args = [views[k] for k in ("input", "offset", "weight", "bias", "mask")] + [g]
    output = gpu_conv.forward(*args, **run)
    assert output.dtype == numpy.int16
    expected = cudeform.deform_conv2d(**exact, **options)
    assert_within_roundoff([output], [expected], units=16)
    grad_output = bfloat16_view(rng.standard_normal(expected.shape))
    grads = gpu_conv.backward(grad_output, *args, **run)
    expected = cudeform.deform_conv2d_backward(values(grad_output, BF16, numpy).astype(
        numpy.float64), **exact, **options)
    assert_within_roundoff(grads, expected, units=16)


@pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")
def test_roi_pool_backward_casts_bfloat16_views():
    rng = numpy.random.default_rng(52)
    arrays, options = roi_pool_case(rng, sampling_ratio=2)
    views = {k: bfloat16_view(v) for k, v in arrays.items()}
    exact = {k: values(v, BF16, numpy).astype(numpy.float64) for k, v in views.items()}
    g = deform_roi_pool_geometry(arrays["input"].shape, arrays["rois"].shape,
                                 arrays["offset"].shape, **options)
    grad_output = bfloat16_view(rng.standard_normal(g.output_shape))
    grads = gpu_roi_pool.backward(grad_output, views["input"], views["rois"],
                                  views["offset"], g, dtype_name=BF16, xp=numpy,
                                  launch=emulated_bfloat16_launch)
    expected = cudeform.deform_roi_pool_backward(
        values(grad_output, BF16, numpy).astype(numpy.float64), **exact, **options)
    assert_within_roundoff(grads[:1], expected[:1], units=4)


# --- CUDA -----------------------------------------------------------------------------

cuda = pytest.mark.skipif(
    NO_GPU is not None or not torch.cuda.is_available(),
    reason=str(NO_GPU) if NO_GPU is not None else "PyTorch has no CUDA device")

def on_cuda(t, dtype=None):
    return {k: None if v is None else v.detach().to("cuda", dtype).requires_grad_(
        v.requires_grad) for k, v in t.items()}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_deform_conv2d_matches_torchvision(dtype):
    torchvision_ops = pytest.importorskip("torchvision.ops")
    case = conv_case(numpy.random.default_rng(53), off_kinks=True, offset_groups=2)
    names = ("input", "offset", "weight", "bias", "mask")
    t, options = conv_tensors(case, names)
    t = on_cuda(t, dtype)
    results = []
    for function in (adapter.deform_conv2d, torchvision_ops.deform_conv2d):
        y = function(**t, **options)
        grads = torch.autograd.grad((y * y).sum(), [t[k] for k in names])
        results.append((y, *grads))
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.gpu
@cuda
def test_opcheck_on_cuda():
    for forward, backward, args in op_cases(numpy.random.default_rng(54), numpy.float32):
        args = tuple(a.detach().cuda().requires_grad_(a.requires_grad)
                     if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(forward, args)
        grad_output = torch.ones_like(forward(*args))
        plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(backward, (grad_output,) + plain)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_16_bit_within_roundoff_of_float64(dtype):
    """Forward and every gradient of each op, within 16 unit roundoffs times
    max|reference| of float64 on the same 16-bit values (see test_deform_conv_gpu.py)."""
    unit = UNIT_ROUNDOFF[str(dtype).split(".")[1]]
    for forward, backward, args in op_cases(numpy.random.default_rng(55), numpy.float64):
        low = tuple(a.detach().cuda().to(dtype) if isinstance(a, torch.Tensor) and
                    a.is_floating_point() else a for a in args)
        exact = tuple(a.double() if isinstance(a, torch.Tensor) else a for a in low)
        y, y_exact = forward(*low), forward(*exact)
        grad_output = torch.ones_like(y)
        results = (y, *backward(grad_output, *low))
        expected = (y_exact, *backward(grad_output.double(), *exact))
        for got, want in zip(results, expected):
            if want is None:
                assert got is None
                continue
            assert got.dtype == dtype and torch.isfinite(got).all()
            atol = 16 * unit * want.abs().max().item()
            torch.testing.assert_close(got.double(), want, rtol=0, atol=atol)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_autocast_runs_in_the_autocast_dtype(dtype):
    arrays, options = psroi_case(numpy.random.default_rng(56))
    t = {k: torch.tensor(v, dtype=torch.float32, device="cuda", requires_grad=k != "rois")
         for k, v in arrays.items()}
    with torch.autocast("cuda", dtype=dtype):
        y = adapter.deform_psroi_pool(**t, **options)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert t["input"].grad.dtype == torch.float32


@pytest.mark.gpu
@cuda
def test_runs_on_torchs_current_stream():
    """On a side stream, an input written after a long sleep: kernels launched on any
    other stream would read it before it is written."""
    case = conv_case(numpy.random.default_rng(57))
    t, options = conv_tensors(case)
    t = on_cuda(t)
    expected = adapter.deform_conv2d(**{**t, "input": t["input"] * 2}, **options)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)
        doubled = t["input"] * 2
        y = adapter.deform_conv2d(**{**t, "input": doubled}, **options)
    torch.cuda.synchronize()
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.gpu
@cuda
def test_opcheck_and_fakes_on_cuda_channels_last():
    """opcheck (fake against real strides included) on channels_last CUDA tensors, and
    C-contiguous outputs and gradients from every op."""
    from tests.test_adapter_torch import args_in_layout

    for forward, backward, args in op_cases(numpy.random.default_rng(58), numpy.float32):
        args = args_in_layout(tuple(a.detach().cuda().requires_grad_(a.requires_grad)
                                    if isinstance(a, torch.Tensor) else a for a in args),
                              "channels_last")
        torch.library.opcheck(forward, args)
        output = forward(*args)
        grad_output = torch.ones_like(output).contiguous(memory_format=torch.channels_last)
        plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(backward, (grad_output,) + plain)
        grads = backward(grad_output, *plain)
        assert output.is_contiguous() and all(g is None or g.is_contiguous() for g in grads)


@pytest.mark.gpu
@cuda
def test_inductor_trains_a_channels_last_cuda_model():
    from tests.test_adapter_torch_shapes import ThreeOps, randomised, train

    torch.manual_seed(59)
    eager = randomised(ThreeOps()).train()
    compiled_model = ThreeOps()
    compiled_model.load_state_dict(eager.state_dict())
    eager, compiled_model = (m.cuda().to(memory_format=torch.channels_last)
                             for m in (eager, compiled_model))
    x = torch.randn(2, 3, 8, 8, device="cuda").contiguous(memory_format=torch.channels_last)
    rois = torch.tensor([[0, 1, 1, 12, 10], [1, 2, 0, 9, 14], [1, 0, 3, 15, 15.]],
                        device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    expected = train(eager, x, rois, steps=2)
    got = train(compiled, x, rois, steps=2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled_model.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@cuda
def test_export_from_a_cuda_model():
    """torch.export with a dynamic batch, and a plain ONNX export whose graph
    onnxruntime (CPU) runs at batch 1, 3 and 8, from a model on CUDA."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from torch.export import Dim

    torch.manual_seed(60)
    model = adapter.ModulatedDeformConv2dPack(4, 6, 3, stride=2, padding=1, deform_groups=2)
    with torch.no_grad():
        model.conv_offset.weight.normal_(0, 0.3)
    model = model.cuda().eval()
    dynamic = {"x": {0: Dim("batch"), 2: Dim("height", min=5), 3: Dim("width", min=5)}}
    x = torch.randn(2, 4, 9, 8, device="cuda")
    program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
    proto = torch.onnx.export(model, (x,), dynamo=True, opset_version=19, verbose=False,
                              dynamic_shapes=dynamic).model_proto
    assert [n.op_type for n in proto.graph.node].count("DeformConv") == 1
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    for shape in ((1, 4, 9, 8), (3, 4, 12, 7), (8, 4, 7, 10)):
        x = torch.randn(shape, device="cuda")
        with torch.no_grad():
            expected = model(x)
            torch.testing.assert_close(program.module()(x), expected)
        got = session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0]
        numpy.testing.assert_allclose(got, expected.cpu().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_autocast_keeps_the_layers_in_the_autocast_dtype(dtype):
    """A float32 model under CUDA autocast: every op's output in the autocast dtype,
    near the float32 result; the float32 parameters get float32 gradients."""
    from tests.test_adapter_torch_shapes import ThreeOps, randomised

    torch.manual_seed(61)
    model = randomised(ThreeOps()).cuda()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    rois = torch.tensor([[0, 1, 1, 12, 10], [1, 2, 0, 9, 14.]], device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        y = model.conv(x)
        pooled = model.roi_pool(y, rois)
    assert y.dtype == dtype and pooled.dtype == dtype
    with torch.no_grad():
        y32 = model.conv(x)
    unit = UNIT_ROUNDOFF[str(dtype).split(".")[1]]
    torch.testing.assert_close(y.float(), y32, rtol=0, atol=64 * unit * y32.abs().max().item())
    with torch.autocast("cuda", dtype=dtype):
        loss = model(x, rois)
    loss.float().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert model.conv.conv_offset.weight.grad.abs().max() > 0
