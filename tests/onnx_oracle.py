"""onnxruntime's DeformConv (opset 19, CPU) as an independent oracle for the forward."""

from __future__ import annotations

import functools

import numpy
import pytest

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

_TYPES = {numpy.dtype("float32"): TensorProto.FLOAT, numpy.dtype("float64"): TensorProto.DOUBLE}


@functools.lru_cache(maxsize=64)
def _session(dtype, kernel, stride, padding, dilation, groups, offset_groups, bias, mask):
    elem = _TYPES[numpy.dtype(dtype)]
    inputs = ["X", "W", "offset", "B" if bias else "", "mask" if mask else ""]
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node(
        "DeformConv", inputs, ["Y"], kernel_shape=list(kernel), strides=list(stride),
        pads=[padding[0], padding[1], padding[0], padding[1]], dilations=list(dilation),
        group=groups, offset_group=offset_groups)
    value_infos = [helper.make_tensor_value_info(name, elem, None)
                   for name in inputs if name]
    graph = helper.make_graph([node], "deform_conv", value_infos,
                              [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def ort_deform_conv2d(input, offset, weight, bias=None, *, stride, padding, dilation,
                      mask=None):
    """Run onnxruntime's DeformConv with cudeform's argument conventions."""
    kh, kw = weight.shape[2:]
    groups = input.shape[1] // weight.shape[1]
    offset_groups = offset.shape[1] // (2 * kh * kw)
    session = _session(input.dtype.str, (kh, kw), tuple(stride), tuple(padding),
                       tuple(dilation), groups, offset_groups, bias is not None,
                       mask is not None)
    feeds = {"X": input, "W": weight, "offset": offset}
    if bias is not None:
        feeds["B"] = bias
    if mask is not None:
        feeds["mask"] = mask
    feeds = {k: numpy.ascontiguousarray(v) for k, v in feeds.items()}
    return session.run(None, feeds)[0]
