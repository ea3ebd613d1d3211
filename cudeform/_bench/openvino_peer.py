"""OpenVINO's opset-8 ``DeformableConvolution`` (CPU plugin, float32, forward only) as
a peer.

``bilinear_interpolation_pad=True`` is the DCNv2 border rule cudeform follows (a
map zero-padded by one pixel). The model takes the input, offsets, weight and
mask as parameters, as cudeform takes them as arguments, and is compiled once per
layer and thread count, outside the timing, with ``INFERENCE_NUM_THREADS`` set to
cudeform's worker count and f32 inference precision.
"""

from __future__ import annotations

import functools

import numpy

from cudeform._bench.core_sides import core_sides
from cudeform._bench.imports import optional
from cudeform._bench.pairs import FORWARD, Pair, Side, Skip, deform_names, labels
from cudeform._cpu.parallel import worker_count

NAME = "OpenVINO DeformableConvolution"


class OpenVinoPeer:
    name = NAME

    def __init__(self):
        self._ov = optional("openvino")
        self._ops = optional("openvino.opset8")
        self._core = self._ov.Core()

    @functools.lru_cache(maxsize=16)
    def _compiled(self, shapes, padding, dilation, offset_groups, threads):
        ov, ops = self._ov, self._ops
        parameters = [ops.parameter(shape, ov.Type.f32) for shape in shapes]
        mask = parameters[3] if len(parameters) > 3 else None
        node = ops.deformable_convolution(
            *parameters[:3], strides=[1, 1], pads_begin=[padding] * 2, pads_end=[padding] * 2,
            dilations=[dilation] * 2, mask=mask, deformable_group=offset_groups,
            bilinear_interpolation_pad=True)
        return self._core.compile_model(ov.Model([node], parameters), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})

    def pairs(self, case, dtype, arrays):
        if dtype != "float32":
            raise Skip("the bench builds float32 models only", scope="dtype")
        names = ("input", "offset", "weight") + (("mask",) if case.mask else ())
        feeds = [numpy.ascontiguousarray(arrays[name]) for name in names]
        compiled = self._compiled(tuple(feed.shape for feed in feeds), case.padding,
                                  case.dilation, case.offset_groups, worker_count())
        request = compiled.create_infer_request()

        def forward():
            request.infer(feeds)
            return request.get_output_tensor(0).data

        label, shape = labels(case)
        cudeform_side = core_sides(numpy, arrays, case)[FORWARD]
        return [Pair(label, shape, dtype, FORWARD, self.name, cudeform_side,
                     Side(forward, lambda y: (y,), None), deform_names(FORWARD, case.mask))]
