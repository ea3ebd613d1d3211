"""cudeform against itself, so that every run shows cudeform's own times, peers or not:

- the convolution's backward (``deform_conv2d_backward``, every gradient) against
  its forward (``deform_conv2d``): ratio = backward / forward;
- the RoI ops, forward and backward, on cudeform's workers against one worker
  (``CUDEFORM_NUM_THREADS=1``): ratio = time on the workers / time on one, so the
  speed-up is 1 / ratio. Their results are checked against each other first.
"""

from __future__ import annotations

import os

import numpy

import cudeform
from cudeform._bench.core_sides import core_sides, on_device
from cudeform._bench.pairs import FORWARD, Pair, Side, Skip, deform_names, labels
from cudeform._cpu import parallel

BACKWARD = "bwd"


class BackwardOverForward:
    """The backward of each layer, timed against its forward."""

    name = "cudeform deform_conv2d (fwd)"

    def pairs(self, case, dtype, arrays):
        host = on_device(numpy, arrays, dtype)
        forward = core_sides(numpy, host, case)[FORWARD]
        x, offset, weight, mask = (host[k] for k in ("input", "offset", "weight", "mask"))
        options = dict(padding=case.padding, dilation=case.dilation, mask=mask)
        ones = numpy.ones((case.batch, case.out_channels, case.height, case.width), x.dtype)

        def backward():
            return cudeform.deform_conv2d_backward(ones, x, offset, weight, **options)

        label, shape = labels(case)
        # The two compute different things: there is nothing to check.
        return [Pair(label, shape, dtype, BACKWARD, self.name, Side(backward, lambda g: ()),
                     Side(forward.run, lambda y: ()), ())]


def _on_one_worker(function):
    def run():
        saved = os.environ.get(parallel.ENVIRONMENT_VARIABLE)
        os.environ[parallel.ENVIRONMENT_VARIABLE] = "1"
        try:
            return function()
        finally:
            if saved is None:
                del os.environ[parallel.ENVIRONMENT_VARIABLE]
            else:
                os.environ[parallel.ENVIRONMENT_VARIABLE] = saved
    return run


class OneWorker:
    """The RoI ops on cudeform's workers, timed against the same calls on one."""

    name = "cudeform, 1 thread"
    timed_ops = ("deform_roi_pool", "deform_psroi_pool")

    def pairs(self, case, dtype, arrays):
        if parallel.worker_count() == 1:
            raise Skip("cudeform has one worker here: nothing to compare")
        host = on_device(numpy, arrays, dtype)
        x, rois, offset = host["input"], host["rois"], host["offset"]
        options = case.options()
        forward_op = getattr(cudeform, case.op)
        backward_op = getattr(cudeform, case.op + "_backward")
        ones = numpy.ones_like(forward_op(x, rois, offset, **options))

        def forward():
            return forward_op(x, rois, offset, **options)

        def backward():
            return backward_op(ones, x, rois, offset, **options)

        label, shape = case.name, f"{case.name}: {case.geometry()}"
        forward_results, backward_results = (lambda y: (y,)), tuple
        return [
            Pair(label, shape, dtype, FORWARD, self.name, Side(forward, forward_results),
                 Side(_on_one_worker(forward), forward_results), deform_names(FORWARD, False),
                 op=case.op),
            Pair(label, shape, dtype, BACKWARD, self.name, Side(backward, backward_results),
                 Side(_on_one_worker(backward), backward_results), ("grad input", "grad offset"),
                 op=case.op),
        ]
