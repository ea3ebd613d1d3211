"""The PyTorch adapter on the CPU: the custom ops against the core, ``opcheck`` on
contiguous, non-contiguous and channels_last inputs, ``gradcheck``, ``torch.compile``,
the first-order-only backward, errors in torch terms and zero-copy DLPack. Symbolic
shapes are in ``test_adapter_torch_shapes.py``, 16-bit tensors and autocast in
``test_adapter_torch_dtypes.py``, the CUDA tests in ``test_adapter_torch_gpu.py``.

Skipped when PyTorch cannot be imported (install the ``torch`` extra).
"""

from __future__ import annotations

import numpy
import pytest

torch = pytest.importorskip("torch")

import cudeform  # noqa: E402
from cudeform.adapters import torch as adapter  # noqa: E402
from cudeform.adapters.torch._to_core import to_array, to_tensor  # noqa: E402
from tests.helpers import CONV_CASES, conv_case  # noqa: E402
from tests.psroi_cases import psroi_case, smooth_case  # noqa: E402
from tests.roi_pool_cases import off_kink_case, roi_pool_case  # noqa: E402

ops = torch.ops.cudeform


def tensors(arrays, requires_grad=()):
    """Tensors of a dict of NumPy arrays (None stays None); the named ones require grad."""
    return {k: None if v is None else
            torch.tensor(v, requires_grad=k in requires_grad) for k, v in arrays.items()}


def conv_tensors(case, requires_grad=()):
    """``(tensors, options)`` of a ``conv_case``: the op's arguments by name."""
    options = {k: list(case[k]) for k in ("stride", "padding", "dilation")}
    arrays = {k: case[k] for k in ("input", "offset", "weight", "bias", "mask")}
    return tensors(arrays, requires_grad), options


def conv_args(t, options):
    """The positional arguments of ``cudeform::deform_conv2d``."""
    return (t["input"], t["offset"], t["weight"], t["bias"], options["stride"],
            options["padding"], options["dilation"], t["mask"])


def roi_args(t, options):
    o = options
    return (t["input"], t["rois"], t["offset"], list(o["output_size"]),
            float(o["spatial_scale"]), o["sampling_ratio"], float(o["gamma"]))


def psroi_args(t, options):
    o = options
    part_size = o["pooled_size"] if o.get("part_size") is None else o["part_size"]
    return (t["input"], t["rois"], t["offset"], o["output_dim"], o["group_size"],
            o["pooled_size"], part_size, o["sample_per_part"], float(o["spatial_scale"]),
            float(o["trans_std"]))


SMALL_CONV = dict(batch=1, in_channels=2, out_channels=2, size=(4, 5))


def op_cases(rng, dtype):
    """``(forward op, backward op, positional args)`` of a small case of each op."""
    t, options = conv_tensors(conv_case(rng, dtype=dtype, offset_groups=2, **SMALL_CONV),
                              ("input", "offset", "weight", "bias", "mask"))
    yield ops.deform_conv2d, ops.deform_conv2d_backward, conv_args(t, options)
    t, options = conv_tensors(conv_case(rng, dtype=dtype, mask=False, bias=False,
                                        **SMALL_CONV), ("input", "offset", "weight"))
    yield ops.deform_conv2d, ops.deform_conv2d_backward, conv_args(t, options)
    arrays, options = roi_pool_case(rng, rois=3, dtype=dtype, sampling_ratio=2)
    yield ops.deform_roi_pool, ops.deform_roi_pool_backward, roi_args(
        tensors(arrays, ("input", "offset")), options)
    arrays, options = psroi_case(rng, num_classes=2, output_dim=2, rois=3, dtype=dtype)
    yield ops.deform_psroi_pool, ops.deform_psroi_pool_backward, psroi_args(
        tensors(arrays, ("input", "offset")), options)
    arrays["offset"] = None
    yield ops.deform_psroi_pool, ops.deform_psroi_pool_backward, psroi_args(
        tensors(arrays, ("input",)), options)


def detached(args):
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


LAYOUTS = ("contiguous", "non-contiguous", "channels_last")


def in_layout(tensor, layout):
    """``tensor``'s values in ``layout`` (a leaf again if it required grad): 4-D tensors
    channels_last, or any tensor with its last two axes' strides swapped (a 1-D one
    every other element of a buffer)."""
    if not isinstance(tensor, torch.Tensor) or layout == "contiguous":
        return tensor
    value = tensor.detach()
    if layout == "channels_last":
        if value.dim() == 4:
            value = value.contiguous(memory_format=torch.channels_last)
    elif value.dim() >= 2:
        value = value.transpose(-1, -2).contiguous().transpose(-1, -2)
    else:
        value = torch.stack([value, torch.zeros_like(value)], dim=-1)[..., 0]
    assert torch.equal(value, tensor.detach())
    return value.requires_grad_(tensor.requires_grad)


def args_in_layout(args, layout):
    return tuple(in_layout(a, layout) for a in args)


# --- the ops against the core ---------------------------------------------------------


@pytest.mark.parametrize("name", ["dcnv2", "dcnv1-no-bias", "kernel32-stride21-pad10-dil21",
                                  "batch0", "across-borders"])
def test_deform_conv2d_equals_core(name):
    case = conv_case(numpy.random.default_rng(30), dtype=numpy.float32, **CONV_CASES[name])
    t, options = conv_tensors(case)
    y = adapter.deform_conv2d(**t, **options)
    numpy.testing.assert_array_equal(y.numpy(), cudeform.deform_conv2d(**case))
    grad_output = torch.ones_like(y)
    grads = ops.deform_conv2d_backward(grad_output, *conv_args(t, options))
    expected = cudeform.deform_conv2d_backward(grad_output.numpy(), **case)
    for got, want in zip(grads, expected):
        assert (got is None) == (want is None)
        if want is not None:
            numpy.testing.assert_array_equal(got.numpy(), want)


def test_pools_equal_core():
    rng = numpy.random.default_rng(31)
    arrays, options = roi_pool_case(rng, sampling_ratio=0)
    t = tensors(arrays)
    numpy.testing.assert_array_equal(adapter.deform_roi_pool(**t, **options).numpy(),
                                     cudeform.deform_roi_pool(**arrays, **options))
    arrays, options = psroi_case(rng, num_classes=2, output_dim=4)
    t = tensors(arrays)
    numpy.testing.assert_array_equal(adapter.deform_psroi_pool(**t, **options).numpy(),
                                     cudeform.deform_psroi_pool(**arrays, **options))
    grad_output = numpy.ones(cudeform.deform_psroi_pool(**arrays, **options).shape)
    grads = ops.deform_psroi_pool_backward(torch.tensor(grad_output), *psroi_args(t, options))
    expected = cudeform.deform_psroi_pool_backward(grad_output, **arrays, **options)
    for got, want in zip(grads, expected):
        numpy.testing.assert_array_equal(got.numpy(), want)


# --- opcheck, gradcheck, torch.compile ------------------------------------------------


@pytest.mark.parametrize("dtype, layout", [
    (numpy.float32, "contiguous"), (numpy.float64, "non-contiguous"),
    (numpy.float32, "channels_last"),
], ids=["float32-contiguous", "float64-non-contiguous", "float32-channels_last"])
def test_opcheck(dtype, layout):
    """Schema, autograd registration, fake against real kernel (shapes, dtypes and
    strides) and AOT dispatch with dynamic shapes, for every forward and backward op."""
    for forward, backward, args in op_cases(numpy.random.default_rng(32), dtype):
        args = args_in_layout(args, layout)
        torch.library.opcheck(forward, args)
        grad_output = in_layout(torch.randn(forward(*args).shape, dtype=args[0].dtype,
                                            generator=torch.Generator().manual_seed(0)),
                                layout)
        # Inputs without grad: differentiating the backward op raises by design.
        torch.library.opcheck(backward, (grad_output,) + detached(args))


def gradcheck(function, inputs):
    assert torch.autograd.gradcheck(function, inputs)


@pytest.mark.parametrize("name", ["dcnv2", "dcnv1-no-bias", "groups2-offset-groups4",
                                  "kernel32-stride21-pad10-dil21", "across-borders"])
def test_deform_conv2d_gradcheck(name):
    settings = {**dict(CONV_CASES[name]), "batch": 1, "off_kinks": True}
    settings.setdefault("size", (4, 5))
    settings.update(in_channels=4, out_channels=4) if "groups" in settings else \
        settings.update(in_channels=2, out_channels=2)
    if name == "across-borders":
        settings["offset_scale"] = 6.0
    t, options = conv_tensors(conv_case(numpy.random.default_rng(33), **settings))
    names = [k for k, v in t.items() if v is not None]
    for k in names:
        t[k].requires_grad_(True)

    def function(*inputs):
        return adapter.deform_conv2d(**dict(zip(names, inputs)), **options)

    gradcheck(function, tuple(t[k] for k in names))


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_deform_roi_pool_gradcheck(sampling_ratio):
    arrays, options = off_kink_case(numpy.random.default_rng(34), spatial_scale=0.5,
                                    sampling_ratio=sampling_ratio, gamma=0.1)
    t = tensors(arrays, ("input", "offset"))
    gradcheck(lambda x, offset: adapter.deform_roi_pool(x, t["rois"], offset, **options),
              (t["input"], t["offset"]))
    gradcheck(lambda x: adapter.deform_roi_pool(x, t["rois"], **options), (t["input"],))


@pytest.mark.parametrize("options", [
    dict(),
    dict(output_dim=2, num_classes=2, part_size=2, group_size=1),
], ids=["basic", "classes2-part2"])
def test_deform_psroi_pool_gradcheck(options):
    arrays, kwargs = smooth_case(numpy.random.default_rng(35), rois=2, **options)
    t = tensors(arrays, ("input", "offset"))
    gradcheck(lambda x, offset: adapter.deform_psroi_pool(x, t["rois"], offset, **kwargs),
              (t["input"], t["offset"]))
    gradcheck(lambda x: adapter.deform_psroi_pool(x, t["rois"], **kwargs), (t["input"],))


def test_offset_gradient_border_rule():
    """Zero offsets with padding 1 put the top taps exactly on ``py = -1``: their dy
    gradient is 0 (mmcv's rule), where the derivative from above (torchvision's choice
    there) is not. At an integer position inside the map the gradient is the
    derivative from above. Checked against forward differences of the op itself."""
    x = torch.arange(1.0, 10.0, dtype=torch.float64).reshape(1, 1, 3, 3)
    weight = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    offset = torch.zeros(1, 18, 3, 3, dtype=torch.float64, requires_grad=True)
    y = adapter.deform_conv2d(x, offset, weight, padding=1)
    grad, = torch.autograd.grad(y[0, 0, 0, 1], offset)  # output (0, 1): top taps at py = -1

    def from_above(channel, step=1e-7):
        moved = offset.detach().clone()
        moved[0, channel, 0, 1] += step
        return ((adapter.deform_conv2d(x, moved, weight, padding=1) - y.detach())[0, 0, 0, 1]
                / step).item()

    for tap in (0, 1, 2):  # the top row of the kernel: dy channel 2*tap
        assert grad[0, 2 * tap, 0, 1] == 0
        assert from_above(2 * tap) == pytest.approx(x[0, 0, 0, tap].item(), rel=1e-6)
    centre = 4  # tap (1, 1) samples (0, 1), an integer position inside the map
    assert grad[0, 2 * centre, 0, 1].item() == pytest.approx(from_above(2 * centre), rel=1e-6)
    assert grad[0, 2 * centre, 0, 1] == x[0, 0, 1, 1] - x[0, 0, 0, 1]


def test_rois_get_no_gradient():
    arrays, options = roi_pool_case(numpy.random.default_rng(36))
    t = tensors(arrays, ("input", "rois", "offset"))
    adapter.deform_roi_pool(**t, **options).sum().backward()
    assert t["input"].grad is not None and t["offset"].grad is not None
    assert t["rois"].grad is None


def test_torch_compile_fullgraph_matches_eager():
    """Forward and backward of each op under ``torch.compile(fullgraph=True)``, with
    the ``aot_eager`` backend (AOTAutograd tracing through the fakes, no inductor)."""
    for forward, _, args in op_cases(numpy.random.default_rng(37), numpy.float64):
        def loss(*args):
            y = forward(*args)
            return (y * y).sum()

        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        eager = torch.autograd.grad(loss(*args), inputs)
        torch._dynamo.reset()
        compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
        value = compiled(*args)
        torch.testing.assert_close(value, loss(*args), rtol=0, atol=0)
        for got, want in zip(torch.autograd.grad(value, inputs), eager):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


# --- first-order backward, errors -----------------------------------------------------


def test_double_backward_raises_a_clear_error():
    for forward, backward, args in op_cases(numpy.random.default_rng(38), numpy.float64):
        x = args[0]
        y = forward(*args)
        gx, = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        name = backward.default._schema.name
        with pytest.raises(RuntimeError, match=f"{name}: .*double backward is not supported"):
            gx.sum().backward()


def test_errors_speak_of_tensors():
    """Dtype and device errors name tensors and torch dtypes; shape errors keep the
    core's wording; a non-tensor argument is a one-line TypeError."""
    case = conv_case(numpy.random.default_rng(39))
    t, options = conv_tensors(case)
    with pytest.raises(ValueError, match=r"offset.shape is not valid: expected \(2, 18, 7, 6\)"):
        adapter.deform_conv2d(**{**t, "offset": t["offset"][:, :, :, :5]}, **options)
    with pytest.raises(TypeError, match=r"^offset has dtype torch.float32 but input has dtype "
                                        r"torch.float64; pass tensors of one dtype$"):
        adapter.deform_conv2d(**{**t, "offset": t["offset"].float()}, **options)
    integers = {k: None if v is None else v.long() for k, v in t.items()}
    with pytest.raises(TypeError, match=r"^input has dtype torch.int64, which cudeform does "
                                        r"not support for tensors; expected one of "
                                        r"torch.float16, "):
        adapter.deform_conv2d(**integers, **options)
    for name, value in (("offset", case["offset"]), ("weight", case["weight"].tolist()),
                        ("mask", 1.0)):
        with pytest.raises(TypeError) as error:
            adapter.deform_conv2d(**{**t, name: value}, **options)
        kind = type(value).__module__ + "." + type(value).__name__ \
            if isinstance(value, numpy.ndarray) else type(value).__name__
        assert str(error.value) == f"{name} must be a torch.Tensor, got {kind}"
    with pytest.raises(ValueError, match="stride is not valid"):
        adapter.deform_conv2d(**t, **{**options, "stride": 0})
    arrays, roi_options = roi_pool_case(numpy.random.default_rng(39))
    with pytest.raises(ValueError, match="output_size is not valid"):
        adapter.deform_roi_pool(**tensors(arrays), **{**roi_options, "output_size": (0, 2)})
    with pytest.raises(ValueError, match="spatial_scale is not valid"):
        adapter.deform_roi_pool(**tensors(arrays), **{**roi_options, "spatial_scale": -1})
    with pytest.raises(TypeError, match="^rois must be a torch.Tensor, got numpy.ndarray$"):
        adapter.deform_roi_pool(**{**tensors(arrays), "rois": arrays["rois"]}, **roi_options)
    arrays, ps_options = psroi_case(numpy.random.default_rng(39))
    with pytest.raises(ValueError, match=r"input.shape\[1\] is not valid"):
        adapter.deform_psroi_pool(**tensors(arrays), **{**ps_options, "output_dim": 3})
    with pytest.raises(TypeError, match="^input must be a torch.Tensor, got list$"):
        adapter.deform_psroi_pool(**{**tensors(arrays), "input": [[1.0]]}, **ps_options)


def test_no_error_mentions_arrays():
    """Every dtype or device error raised through the adapter, from the real kernels
    and the fakes alike, is worded for tensors."""
    case = conv_case(numpy.random.default_rng(42))
    t, options = conv_tensors(case)
    meta = {k: None if v is None else v.to("meta") for k, v in t.items()}
    for arguments, other in ((t, meta), (meta, t)):
        wrong = (dict(offset=arguments["offset"].float()), dict(input=arguments["input"].int()),
                 dict(mask=other["mask"]))
        for change in wrong:
            with pytest.raises(TypeError) as error:
                adapter.deform_conv2d(**{**arguments, **change}, **options)
            message = str(error.value)
            assert "tensor" in message and "array" not in message.lower(), message


def test_fake_kernels_validate_shapes():
    """On meta tensors only the fakes run: right shapes, the core's ValueErrors."""
    case = conv_case(numpy.random.default_rng(40))
    t, options = conv_tensors(case)
    meta = {k: None if v is None else v.to("meta") for k, v in t.items()}
    assert adapter.deform_conv2d(**meta, **options).shape == (2, 6, 7, 6)
    grad_output = torch.empty(2, 6, 7, 6, dtype=torch.float64, device="meta")
    grads = ops.deform_conv2d_backward(grad_output, *conv_args(meta, options))
    assert [g.shape for g in grads] == [v.shape for v in meta.values()]
    with pytest.raises(ValueError, match=r"grad_output.shape is not valid"):
        ops.deform_conv2d_backward(grad_output[..., :5], *conv_args(meta, options))
    with pytest.raises(ValueError, match=r"mask.shape is not valid"):
        adapter.deform_conv2d(**{**meta, "mask": meta["mask"][:, :4]}, **options)
    arrays, ps_options = psroi_case(numpy.random.default_rng(40), num_classes=2, output_dim=4)
    meta = {k: v.to("meta") for k, v in tensors(arrays).items()}
    assert adapter.deform_psroi_pool(**meta, **ps_options).shape == (10, 4, 3, 3)
    with pytest.raises(ValueError, match=r"offset.shape\[1\] is not valid"):
        adapter.deform_psroi_pool(**{**meta, "offset": meta["offset"][:, :3]}, **ps_options)


# --- DLPack ---------------------------------------------------------------------------


def test_cpu_dlpack_is_zero_copy():
    x = torch.arange(12.0).reshape(3, 4)[:, 1:]  # a strided view shares memory too
    array = to_array(x, x.dtype)
    assert array.ctypes.data == x.data_ptr() and array.strides == (16, 4)
    back = to_tensor(numpy.ascontiguousarray(array[:, :1]), x.dtype)
    assert back.is_contiguous()
    contiguous = numpy.ones((2, 3), numpy.float32)
    back = to_tensor(contiguous, torch.float32)
    back[0, 0] = -1.0
    assert contiguous[0, 0] == -1.0  # the core's output becomes the tensor, no copy
    y = to_array(x.requires_grad_(True), x.dtype)  # tensors that require grad as well
    assert numpy.shares_memory(y, array)


def test_compile_with_inductor_matches_eager():
    """The default backend too: the custom ops stay opaque nodes in the graph."""
    rng = numpy.random.default_rng(31)
    x, offset, weight = (torch.tensor(rng.standard_normal(shape), dtype=torch.float32,
                                      requires_grad=True)
                         for shape in ((2, 4, 8, 8), (2, 18, 8, 8), (6, 4, 3, 3)))

    def loss(x, offset, weight):
        return (adapter.deform_conv2d(x, offset, weight, padding=1) * 2).relu().sum()

    compiled = torch.compile(loss, fullgraph=True)(x, offset, weight)
    compiled.backward()
    compiled_grads = [t.grad.clone() for t in (x, offset, weight)]
    for t in (x, offset, weight):
        t.grad = None
    eager = loss(x, offset, weight)
    eager.backward()
    torch.testing.assert_close(compiled, eager)
    for got, t in zip(compiled_grads, (x, offset, weight)):
        torch.testing.assert_close(got, t.grad)


def test_each_call_follows_torchs_determinism_and_tf32_flags(monkeypatch):
    from cudeform.adapters.torch import _to_core

    seen = []

    def record(**arrays):
        seen.append((cudeform.is_deterministic(), cudeform.allow_tf32()))
        return arrays["input"]

    x = torch.ones(2, 3)
    assert not torch.are_deterministic_algorithms_enabled()
    _to_core.run_core(record, dict(input=x))
    try:
        torch.use_deterministic_algorithms(True)
        _to_core.run_core(record, dict(input=x))
    finally:
        torch.use_deterministic_algorithms(False)
    monkeypatch.setattr(_to_core, "torch_allows_tf32", lambda: True)
    _to_core.run_core(record, dict(input=x))
    cudeform.set_deterministic(True)  # torch's flag off: cudeform's own setting stands
    try:
        _to_core.run_core(record, dict(input=x))
    finally:
        cudeform.set_deterministic(None)
    assert seen == [(False, False), (True, False), (False, True), (True, True)]
    assert not cudeform.is_deterministic() and not cudeform.allow_tf32()  # calls only


def test_torch_tf32_flag_is_read_from_either_api(monkeypatch):
    from cudeform.adapters.torch import _to_core

    matmul = torch.backends.cuda.matmul
    if getattr(matmul, "fp32_precision", None) is None:
        pytest.skip("this torch has no fp32_precision")
    monkeypatch.setattr(type(matmul), "fp32_precision", property(lambda self: "tf32"),
                        raising=False)
    assert _to_core.torch_allows_tf32()
    monkeypatch.setattr(type(matmul), "fp32_precision", property(lambda self: "ieee"),
                        raising=False)
    assert not _to_core.torch_allows_tf32()
