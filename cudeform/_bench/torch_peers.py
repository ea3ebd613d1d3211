"""The torch peers: ``torchvision.ops.deform_conv2d``, deformops' drop-in for it, and
the plain ``conv2d`` of the same shape (the floor a deformable layer can approach:
cuDNN on the GPU).

On the GPU cudeform runs through its PyTorch adapter on the same tensors; on
the CPU the floor is timed against cudeform's core NumPy API. Forward passes
run under ``torch.no_grad()``; forward+backward passes make fresh leaves of the
inputs each call and call ``backward`` with a gradient of ones, so every call
computes every gradient and none accumulates.
"""

from __future__ import annotations

import numpy

from cudeform._bench.core_sides import core_conv_references, core_sides, on_device
from cudeform._bench.imports import Missing, optional
from cudeform._bench.pairs import (
    CONV_RESULTS, FORWARD, FORWARD_BACKWARD, Pair, Side, deform_names, labels,
)


def _output_shape(case):
    return (case.batch, case.out_channels, case.height, case.width)


def tensors(torch, arrays, dtype, device):
    """The float32 NumPy ``arrays`` of a case as torch tensors of ``dtype`` on ``device``."""
    torch_dtype = getattr(torch, dtype)
    return {name: None if array is None else
            torch.from_numpy(array).to(device=device, dtype=torch_dtype)
            for name, array in arrays.items()}


def deform_sides(torch, deform_conv2d, inputs, case, *, memory):
    """``{pass: Side}`` of a torchvision-style ``deform_conv2d`` on ``inputs`` (tensors)."""
    x, offset, weight, mask = (inputs[k] for k in ("input", "offset", "weight", "mask"))
    options = dict(padding=case.padding, dilation=case.dilation)
    ones = torch.ones(_output_shape(case), dtype=x.dtype, device=x.device)

    def forward():
        with torch.no_grad():
            return deform_conv2d(x, offset, weight, mask=mask, **options)

    def forward_backward():
        leaves = [t.detach().requires_grad_() for t in (x, offset, weight, mask)
                  if t is not None]
        y = deform_conv2d(*leaves[:3], mask=leaves[3] if mask is not None else None, **options)
        y.backward(ones)
        return (y.detach(),) + tuple(leaf.grad for leaf in leaves)

    return {FORWARD: Side(forward, lambda y: (y,), memory),
            FORWARD_BACKWARD: Side(forward_backward, tuple, memory)}


def conv_sides(torch, inputs, case, *, memory):
    """``{pass: Side}`` of ``torch.nn.functional.conv2d`` with the layer's stride,
    padding and dilation (results: output, grad input, grad weight)."""
    conv2d = torch.nn.functional.conv2d
    x, weight = inputs["input"], inputs["weight"]
    options = dict(stride=1, padding=case.padding, dilation=case.dilation,
                   groups=x.shape[1] // weight.shape[1])
    ones = torch.ones(_output_shape(case), dtype=x.dtype, device=x.device)

    def forward():
        with torch.no_grad():
            return conv2d(x, weight, None, **options)

    def forward_backward():
        leaves = [x.detach().requires_grad_(), weight.detach().requires_grad_()]
        y = conv2d(*leaves, None, **options)
        y.backward(ones)
        return (y.detach(),) + tuple(leaf.grad for leaf in leaves)

    return {FORWARD: Side(forward, lambda y: (y,), memory),
            FORWARD_BACKWARD: Side(forward_backward, tuple, memory)}


class _TorchPeer:
    """Shared set-up: torch, and cudeform's adapter when cudeform runs on tensors."""

    def __init__(self, device, *, adapter):
        self.torch = optional("torch")
        self.device = device
        self.cuda = device.startswith("cuda")
        if self.cuda and not self.torch.cuda.is_available():
            raise Missing(f"torch {self.torch.__version__} sees no CUDA device")
        self.adapter = optional("cudeform.adapters.torch") if adapter else None
        # torch reports device memory only on CUDA; its CPU allocations are invisible.
        self.peer_memory = "torch" if self.cuda else None
        self.cudeform_memory = "cupy+torch" if self.cuda else None

    def adapter_sides(self, inputs, case):
        return deform_sides(self.torch, self.adapter.deform_conv2d, inputs, case,
                            memory=self.cudeform_memory)


class TorchvisionPeer(_TorchPeer):
    """``torchvision.ops.deform_conv2d`` against cudeform's PyTorch adapter."""

    name = "torchvision deform_conv2d"

    def __init__(self, device="cuda", torchvision_ops=None):
        super().__init__(device, adapter=True)
        self.ops = torchvision_ops if torchvision_ops is not None else optional("torchvision.ops")

    def pairs(self, case, dtype, arrays):
        inputs = tensors(self.torch, arrays, dtype, self.device)
        cudeform_sides = self.adapter_sides(inputs, case)
        peer_sides = deform_sides(self.torch, self.ops.deform_conv2d, inputs, case,
                                  memory=self.peer_memory)
        label, shape = labels(case)
        return [Pair(label, shape, dtype, passes, self.name, cudeform_sides[passes],
                     peer_sides[passes], deform_names(passes, case.mask))
                for passes in (FORWARD, FORWARD_BACKWARD)]


class DeformopsPeer(TorchvisionPeer):
    """deformops' drop-in ``torchvision.ops.deform_conv2d``
    (``deformops.integrations.torchvision``): its backend registry picks the fused Triton
    kernel on CUDA; the call includes its moves to and from its channels-last layout."""

    name = "deformops deform_conv2d"

    def __init__(self, device="cuda", deformops_ops=None):
        super().__init__(device, torchvision_ops=deformops_ops if deformops_ops is not None
                         else optional("deformops.integrations.torchvision"))


class ConvFloorPeer(_TorchPeer):
    """``torch.nn.functional.conv2d`` of the same shape: the time of the convolution
    alone. Checked against cudeform with zero offsets and no mask, which is that
    convolution. cudeform runs through its core NumPy API on the CPU and through
    its PyTorch adapter on CUDA."""

    def __init__(self, device="cpu", adapter=None):
        cuda = device.startswith("cuda")
        super().__init__(device, adapter=cuda if adapter is None else adapter)
        self.name = "cuDNN conv2d (floor)" if cuda else "torch conv2d (floor)"

    def pairs(self, case, dtype, arrays):
        inputs = tensors(self.torch, arrays, dtype, self.device)
        if self.adapter is not None:
            cudeform_sides = self.adapter_sides(inputs, case)
            zero = dict(inputs, offset=self.torch.zeros_like(inputs["offset"]), mask=None)
            zero_sides = deform_sides(self.torch, self.adapter.deform_conv2d, zero, case,
                                      memory=None)
            references = {FORWARD: zero_sides[FORWARD],
                          FORWARD_BACKWARD: Side(zero_sides[FORWARD_BACKWARD].run,
                                                 lambda r: (r[0], r[1], r[3]))}
        else:
            host = on_device(numpy, arrays, dtype)
            cudeform_sides = core_sides(numpy, host, case)
            references = core_conv_references(numpy, host, case)
        floor_sides = conv_sides(self.torch, inputs, case, memory=self.peer_memory)
        label, shape = labels(case)
        return [Pair(label, shape, dtype, passes, self.name, cudeform_sides[passes],
                     floor_sides[passes], CONV_RESULTS[passes], reference=references[passes])
                for passes in (FORWARD, FORWARD_BACKWARD)]
