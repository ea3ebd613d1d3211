"""Export to ONNX: a plain ``torch.onnx.export(model, args, dynamo=True, opset_version=19)``,
with nothing else, emits the standard ``DeformConv`` node with a dynamic batch and
dynamic spatial sizes, and onnxruntime's CPU kernel (the oracle) gives the module's
output at batch 1, 3 and 8. The translation table still works for direct calls of the
op; the RoI poolings refuse to export with a clear message.

Skipped without PyTorch, onnxscript or onnxruntime.
"""

from __future__ import annotations

import numpy
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")  # torch.onnx.export writes the model with it
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402
from torch.export import Dim  # noqa: E402

from cudeform.adapters import torch as adapter  # noqa: E402
from cudeform.adapters.torch import mmcv  # noqa: E402
from cudeform.adapters.torch_onnx import onnx_translation_table  # noqa: E402
from tests.helpers import assert_close  # noqa: E402

# torch.export's own pytree code, not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

GEOMETRY = dict(stride=(2, 1), padding=(1, 0), dilation=(2, 1))


class WithOffsetConv(nn.Module):
    """``DeformConv2d`` (torchvision's) whose offset and mask come from plain
    convolutions: kernel 3x2, 2 weight groups, 2 offset groups."""

    def __init__(self, modulated, bias):
        super().__init__()
        self.offset = nn.Conv2d(4, 2 * 2 * 6, (3, 2), **GEOMETRY)
        self.mask = nn.Conv2d(4, 2 * 6, (3, 2), **GEOMETRY) if modulated else None
        self.conv = adapter.DeformConv2d(4, 6, (3, 2), groups=2, bias=bias, **GEOMETRY)

    def forward(self, x):
        mask = None if self.mask is None else torch.sigmoid(self.mask(x))
        return self.conv(x, self.offset(x), mask)


class DirectOp(nn.Module):
    """Calls ``torch.ops.cudeform.deform_conv2d`` itself, bypassing the functional."""

    def __init__(self):
        super().__init__()
        self.offset = nn.Conv2d(4, 18, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(6, 4, 3, 3))

    def forward(self, x):
        return torch.ops.cudeform.deform_conv2d(x, self.offset(x), self.weight, None,
                                                [1, 1], [1, 1], [1, 1], None)


def randomise_offsets(model):
    """Non-zero offset predictors, so that the samples move off the grid."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "offset" in name or "mask" in name:
                parameter.normal_(0, 0.3)
    return model.eval()


MODELS = {
    "DeformConv2d": lambda: WithOffsetConv(modulated=False, bias=True),
    "DeformConv2d-mask-no-bias": lambda: WithOffsetConv(modulated=True, bias=False),
    "DeformConv2d-mask-bias": lambda: WithOffsetConv(modulated=True, bias=True),
    "DeformConv2dPack": lambda: mmcv.DeformConv2dPack(4, 6, 3, stride=2, padding=1,
                                                      groups=2, deform_groups=2),
    "ModulatedDeformConv2dPack": lambda: mmcv.ModulatedDeformConv2dPack(
        4, 6, 3, padding=2, dilation=2, deform_groups=4),
}
DYNAMIC = {"x": {0: Dim("batch"), 2: Dim("height", min=5), 3: Dim("width", min=5)}}
SHAPES = ((1, 4, 9, 8), (3, 4, 12, 7), (8, 4, 7, 10))  # batch 1, 3 and 8


def export(model, x, **options):
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=19, verbose=False,
                                **options)
    return program.model_proto


def session(proto):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def run(session, x):
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_one_standard_deform_conv(proto):
    nodes = [node for node in proto.graph.node if node.op_type == "DeformConv"]
    assert len(nodes) == 1 and nodes[0].domain in ("", "ai.onnx")
    assert {opset.domain: opset.version for opset in proto.opset_import}[""] == 19
    assert not [node for node in proto.graph.node if node.domain == "cudeform"]
    return nodes[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_plain_export_runs_in_onnxruntime_at_every_batch_and_size(name):
    torch.manual_seed(7)
    model = randomise_offsets(MODELS[name]())
    proto = export(model, torch.randn(2, 4, 9, 8), dynamic_shapes=DYNAMIC)
    assert_one_standard_deform_conv(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 4, "height", "width"]
    runtime = session(proto)
    for shape in SHAPES:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = run(runtime, x.numpy())
        assert got.shape == expected.shape
        assert_close(got, expected, numpy.float32)


def test_attributes_of_the_node():
    torch.manual_seed(7)
    proto = export(WithOffsetConv(modulated=True, bias=False).eval(), torch.randn(1, 4, 9, 8))
    node = assert_one_standard_deform_conv(proto)
    attributes = {a.name: (list(a.ints) if a.ints else a.i) for a in node.attribute}
    assert attributes == dict(dilations=[2, 1], group=2, kernel_shape=[3, 2], offset_group=2,
                              pads=[1, 0, 1, 0], strides=[2, 1])
    assert len(node.input) == 5 and node.input[3] == ""  # no bias, a mask


def test_the_translation_table_still_serves_direct_calls_of_the_op():
    torch.manual_seed(8)
    model = randomise_offsets(DirectOp())
    x = torch.randn(2, 4, 6, 5)
    with pytest.raises(Exception, match="cudeform.deform_conv2d"):
        export(model, x)  # the op itself is opaque to the exporter
    proto = export(model, x, custom_translation_table=onnx_translation_table())
    assert_one_standard_deform_conv(proto)
    with torch.no_grad():
        assert_close(run(session(proto), x.numpy()), model(x).numpy(), numpy.float32)
    layer = randomise_offsets(mmcv.DeformConv2dPack(4, 6, 3, padding=1))
    proto = export(layer, x, custom_translation_table=onnx_translation_table())
    assert_one_standard_deform_conv(proto)  # users who pass it for a layer: unchanged


class RoIHead(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, x, rois):
        return self.pool(x, rois)


@pytest.mark.parametrize("pool, op, operator", [
    (adapter.DeformRoIPoolPack(2, 4, deform_fc_channels=8), "deform_roi_pool",
     "deformable RoI pooling"),
    (adapter.DeformPSRoIPool(output_dim=1, group_size=2, pooled_size=2), "deform_psroi_pool",
     "deformable position-sensitive RoI pooling"),
], ids=["roi", "psroi"])
def test_roi_poolings_refuse_to_export(pool, op, operator):
    x, rois = torch.randn(1, 4, 8, 8), torch.tensor([[0, 1, 1, 5, 5.]])
    with pytest.raises(Exception) as error:
        torch.onnx.export(RoIHead(pool).eval(), (x, rois), dynamo=True, opset_version=19,
                          verbose=False)
    assert f"cudeform::{op} cannot be exported to ONNX: ONNX has no {operator} operator" \
        in str(error.value)
    assert pool(x, rois).shape[0] == 1  # outside an export the layer still runs
