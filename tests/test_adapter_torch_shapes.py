"""Symbolic shapes and memory formats through the PyTorch adapter, on the CPU.

- The fake kernels give the real kernels' shapes, dtypes, strides and devices, for
  every forward and backward op, on contiguous, non-contiguous and channels_last
  inputs in every dtype.
- ``torch.export`` with a dynamic batch and dynamic spatial sizes exports one program
  that runs at other sizes.
- ``torch.compile(dynamic=True, fullgraph=True)`` compiles once for several batch sizes
  and heights (dynamo's frame counter).
- An inductor-compiled channels_last model of all three ops trains as eager does.

Skipped when PyTorch cannot be imported (install the ``torch`` extra).
"""

from __future__ import annotations

import numpy
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.export import Dim  # noqa: E402

from cudeform.adapters import torch as adapter  # noqa: E402
from tests.test_adapter_torch import LAYOUTS, args_in_layout, detached, op_cases  # noqa: E402

# torch.export's own pytree code, not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def in_dtype(args, dtype):
    return tuple(a.detach().to(dtype) if isinstance(a, torch.Tensor) else a for a in args)


def metadata(result):
    results = result if isinstance(result, tuple) else (result,)
    return [None if t is None else (tuple(t.shape), t.dtype, t.stride(), t.device)
            for t in results]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_outputs_equal_real_outputs(layout):
    """Shape, dtype, strides and device of every output of every op: the fake kernel
    (under FakeTensorMode) against the real one, in each dtype."""
    for dtype in DTYPES:
        for forward, backward, args in op_cases(numpy.random.default_rng(60), numpy.float64):
            args = args_in_layout(in_dtype(args, dtype), layout)
            output = forward(*args)
            grad_output = args_in_layout((torch.ones_like(output),), layout)[0]
            grads = backward(grad_output, *detached(args))
            mode = FakeTensorMode()
            with mode:
                fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                  for a in args)
                fake_grad = mode.from_tensor(grad_output)
                fake_output = forward(*fake_args)
                fake_grads = backward(fake_grad, *fake_args)
            assert metadata(fake_output) == metadata(output), (dtype, forward)
            assert metadata(fake_grads) == metadata(grads), (dtype, backward)
            assert output.is_contiguous() and all(g is None or g.is_contiguous()
                                                  for g in grads)


def randomised(module):
    """``module`` with its zero-initialised offset predictors drawn at random."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "offset" in name:
                parameter.normal_(0, 0.3)
    return module.eval()


@pytest.mark.parametrize("layer", ["DeformConv2dPack", "ModulatedDeformConv2dPack"])
def test_export_with_dynamic_batch_and_spatial_sizes(layer):
    torch.manual_seed(61)
    model = randomised(getattr(adapter, layer)(4, 6, 3, stride=2, padding=1,
                                               deform_groups=2))
    dims = {0: Dim("batch"), 2: Dim("height", min=3), 3: Dim("width", min=3)}
    program = torch.export.export(model, (torch.randn(2, 4, 9, 8),),
                                  dynamic_shapes={"x": dims})
    exported = program.module()
    for shape in ((1, 4, 9, 8), (3, 4, 12, 7), (5, 4, 6, 11)):
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(exported(x), model(x), rtol=0, atol=0)


def test_export_of_roi_pooling_with_dynamic_roi_count():
    torch.manual_seed(62)
    pool = adapter.ModulatedDeformRoIPoolPack(2, 4, deform_fc_channels=8, spatial_scale=0.5)
    with torch.no_grad():
        pool.offset_fc[-1].weight.normal_(0, 0.1)
    x, rois = torch.randn(2, 4, 9, 8), torch.tensor([[0, 1, 1, 9, 12], [1, 0, 2, 7, 7.]])
    program = torch.export.export(pool, (x, rois), dynamic_shapes={
        "input": {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")},
        "rois": {0: Dim("rois")}})
    x = torch.randn(3, 4, 11, 6)
    rois = torch.tensor([[2, 1, 1, 9, 12], [0, 0, 2, 7, 7], [1, 3, 3, 5, 9.]])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x, rois), pool(x, rois), rtol=0, atol=0)


def test_compile_dynamic_compiles_once_for_every_batch_and_height():
    torch.manual_seed(63)
    conv = randomised(adapter.ModulatedDeformConv2dPack(4, 6, 3, stride=2, padding=1))
    pool = adapter.DeformPSRoIPool(output_dim=2, group_size=2, pooled_size=2)

    def loss(x, rois, offset):
        y = conv(x)[:, :, :, :4]  # 2*2*2 = 8 channels: the score maps
        y = torch.cat([y, y[:, :2]], dim=1)
        return (pool(y, rois, offset) ** 2).sum()

    # (batch, height, rois). The first call's sizes differ from each other and from
    # every channel count: torch's duck sizing would tie equal sizes together, and a
    # batch tied to a channel count would be specialised with it.
    shapes = ((3, 9, 7), (5, 9, 4), (2, 12, 3), (4, 15, 9))
    inputs = []
    for batch, height, count in shapes:
        x = torch.randn(batch, 4, height, 10, requires_grad=True)
        rois = torch.tensor([[i % batch, 0.5, 0.5, 3.0 + i, 4.0] for i in range(count)])
        inputs.append((x, rois, torch.randn(count, 2, 2, 2, requires_grad=True)))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, backend=counter, dynamic=True, fullgraph=True)
    values = [compiled(*inputs[0])]
    # The first compilation may call the backend twice: dynamo restarts its analysis
    # once to make the pooling's float arguments constants. It is one graph.
    first = counter.frame_count
    values += [compiled(*args) for args in inputs[1:]]
    assert counter.frame_count == first  # no recompilation for a new batch or height
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # +1 per recompile
    for (x, rois, offset), value in zip(inputs, values):
        got = torch.autograd.grad(value, (x, offset))
        expected_value = loss(x, rois, offset)
        torch.testing.assert_close(value, expected_value, rtol=0, atol=0)
        for g, e in zip(got, torch.autograd.grad(expected_value, (x, offset))):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


class ThreeOps(nn.Module):
    """A deformable convolution, a deformable RoI pooling and a position-sensitive one."""

    def __init__(self):
        super().__init__()
        self.conv = adapter.DeformConv2dPack(3, 8, 3, padding=1, bias=True)
        self.roi_pool = adapter.DeformRoIPoolPack(2, 8, deform_fc_channels=16,
                                                  spatial_scale=0.5)
        self.psroi_pool = adapter.DeformPSRoIPoolPack(8, output_dim=2, group_size=2,
                                                      pooled_size=2)

    def forward(self, x, rois):
        y = torch.relu(self.conv(x))
        return self.roi_pool(y, rois).square().mean() + \
            self.psroi_pool(y, y, rois).square().mean()


def train(model, x, rois, steps):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        loss = model(x, rois)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


def test_inductor_trains_a_channels_last_model_of_all_three_ops():
    torch.manual_seed(64)
    eager = randomised(ThreeOps()).train()
    compiled_model = ThreeOps()
    compiled_model.load_state_dict(eager.state_dict())
    eager, compiled_model = (m.to(memory_format=torch.channels_last)
                             for m in (eager, compiled_model))
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    rois = torch.tensor([[0, 1, 1, 12, 10], [1, 2, 0, 9, 14], [1, 0, 3, 15, 15.]])
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)  # inductor
    expected = train(eager, x, rois, steps=2)
    got = train(compiled, x, rois, steps=2)
    torch.testing.assert_close(got, expected)
    assert got[1] < got[0]
    for (name, a), b in zip(compiled_model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    assert eager.conv.conv_offset.weight.grad.abs().max() > 0
