"""Export to ONNX: ``torch.onnx.export(dynamo=True, opset_version=19)`` with cudeform's
translation table emits the standard ``DeformConv`` node, and onnxruntime's CPU kernel
gives the module's output.

Skipped without PyTorch, onnxscript or onnxruntime.
"""

from __future__ import annotations

import numpy
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from cudeform.adapters import torch_layers as layers  # noqa: E402
from cudeform.adapters.torch_onnx import onnx_translation_table  # noqa: E402
from tests.helpers import assert_close  # noqa: E402

# torch.export's own pytree code, not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


class WithOffsetConv(nn.Module):
    """``DeformConv2d`` whose offset and mask come from plain convolutions."""

    def __init__(self, modulated, bias):
        super().__init__()
        self.offset = nn.Conv2d(4, 2 * 2 * 6, (3, 2), stride=(2, 1), padding=(1, 0),
                                dilation=(2, 1))  # 2 offset groups, taps 3x2
        self.mask = nn.Conv2d(4, 2 * 6, (3, 2), stride=(2, 1), padding=(1, 0),
                              dilation=(2, 1)) if modulated else None
        self.conv = layers.DeformConv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0),
                                        dilation=(2, 1), groups=2, bias=bias)

    def forward(self, x):
        mask = None if self.mask is None else torch.sigmoid(self.mask(x))
        return self.conv(x, self.offset(x), mask)


def randomise_offsets(model):
    """Non-zero offset predictors, so that the samples move off the grid."""
    for name, parameter in model.named_parameters():
        if "offset" in name or "mask" in name:
            parameter.normal_(0, 0.3)


MODELS = {
    "DeformConv2d": lambda: WithOffsetConv(modulated=False, bias=True),
    "DeformConv2d-mask-no-bias": lambda: WithOffsetConv(modulated=True, bias=False),
    "DeformConv2dPack": lambda: layers.DeformConv2dPack(4, 6, 3, stride=2, padding=1,
                                                        groups=2, deform_groups=2),
    "ModulatedDeformConv2dPack": lambda: layers.ModulatedDeformConv2dPack(
        4, 6, 3, padding=2, dilation=2, deform_groups=4),
}


def export(model, x):
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=19,
                                custom_translation_table=onnx_translation_table(),
                                verbose=False)
    return program.model_proto


def run_onnxruntime(proto, x):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_export_to_deform_conv_matches_onnxruntime(name):
    torch.manual_seed(7)
    model = MODELS[name]().eval()
    with torch.no_grad():
        randomise_offsets(model)
        x = torch.randn(2, 4, 9, 8)
        expected = model(x).numpy()
    proto = export(model, x)
    deform_nodes = [node for node in proto.graph.node if node.op_type == "DeformConv"]
    assert len(deform_nodes) == 1 and deform_nodes[0].domain in ("", "ai.onnx")
    assert {opset.domain: opset.version for opset in proto.opset_import}[""] == 19
    assert not [node for node in proto.graph.node if node.domain == "cudeform"]
    assert_close(run_onnxruntime(proto, x.numpy()), expected, numpy.float32)


def test_translation_maps_the_attributes():
    torch.manual_seed(7)
    model = WithOffsetConv(modulated=True, bias=False).eval()
    proto = export(model, torch.randn(1, 4, 9, 8))
    (node,) = [node for node in proto.graph.node if node.op_type == "DeformConv"]
    attributes = {a.name: (list(a.ints) if a.ints else a.i) for a in node.attribute}
    assert attributes == dict(dilations=[2, 1], group=2, kernel_shape=[3, 2], offset_group=2,
                              pads=[1, 0, 1, 0], strides=[2, 1])
    assert len(node.input) == 5 and node.input[3] == ""  # no bias, a mask
