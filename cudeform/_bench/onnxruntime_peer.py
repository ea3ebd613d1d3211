"""onnxruntime's ``DeformConv`` (opset 19, CPU, forward only) as a peer.

The session runs as many intra-op threads as cudeform has workers, with
``session.intra_op.allow_spinning = 0``: spinning workers would keep the cores busy
after each run and slow the interleaved cudeform call that follows.
"""

from __future__ import annotations

import functools

import numpy

from cudeform._bench.core_sides import core_sides
from cudeform._bench.imports import optional
from cudeform._bench.pairs import FORWARD, Pair, Side, Skip, deform_names, labels
from cudeform._bench.cases import KERNEL
from cudeform._cpu.parallel import worker_count

NAME = "onnxruntime DeformConv"


def deform_conv_model(onnx, padding, dilation, offset_groups, mask, element_type="FLOAT",
                      opset=19):
    """A serialized ONNX model of one ``DeformConv`` node of the bench's 3x3 layers:
    inputs X, W, offset (and mask), output Y, all of ``onnx.TensorProto.<element_type>``."""
    helper, types = onnx.helper, onnx.TensorProto
    inputs = ["X", "W", "offset", "", "mask"] if mask else ["X", "W", "offset"]
    node = helper.make_node(
        "DeformConv", inputs, ["Y"], kernel_shape=[KERNEL, KERNEL],
        pads=[padding] * 4, dilations=[dilation] * 2, offset_group=offset_groups)
    element = getattr(types, element_type)
    graph = helper.make_graph(
        [node], "deform_conv",
        [helper.make_tensor_value_info(name, element, None) for name in inputs if name],
        [helper.make_tensor_value_info("Y", element, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString()


class OnnxRuntimePeer:
    name = NAME

    def __init__(self):
        self._onnxruntime = optional("onnxruntime")
        self._onnx = optional("onnx")

    @functools.lru_cache(maxsize=16)
    def _session(self, padding, dilation, offset_groups, mask, threads):
        options = self._onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return self._onnxruntime.InferenceSession(
            deform_conv_model(self._onnx, padding, dilation, offset_groups, mask), options,
            providers=["CPUExecutionProvider"])

    def pairs(self, case, dtype, arrays):
        if dtype != "float32":
            raise Skip("the bench builds float32 models only", scope="dtype")
        session = self._session(case.padding, case.dilation, case.offset_groups, case.mask,
                                worker_count())
        feeds = {"X": arrays["input"], "W": arrays["weight"], "offset": arrays["offset"]}
        if case.mask:
            feeds["mask"] = arrays["mask"]
        feeds = {key: numpy.ascontiguousarray(value) for key, value in feeds.items()}

        def forward():
            return session.run(None, feeds)[0]

        label, shape = labels(case)
        cudeform_side = core_sides(numpy, arrays, case)[FORWARD]
        return [Pair(label, shape, dtype, FORWARD, self.name, cudeform_side,
                     Side(forward, lambda y: (y,), None), deform_names(FORWARD, case.mask))]
