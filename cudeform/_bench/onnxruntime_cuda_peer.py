"""onnxruntime's ``DeformConv`` on its CUDA execution provider (forward only) as a GPU peer.

Loaded only when ``onnxruntime.get_available_providers()`` lists
``CUDAExecutionProvider`` (the onnxruntime-gpu build). The session may not fall back to
the CPU (``session.disable_cpu_ep_fallback``), so a type its CUDA kernel lacks fails
the set-up and skips the pair rather than timing the CPU. Inputs and output are bound
to the same CUDA tensors that cudeform's PyTorch adapter reads (I/O binding): nothing
is copied between host and device in a timed call. float32 and float16 (opset 19).
"""

from __future__ import annotations

import functools

from cudeform._bench.imports import Missing, optional
from cudeform._bench.onnxruntime_peer import deform_conv_model
from cudeform._bench.pairs import FORWARD, Pair, Side, Skip, deform_names, labels
from cudeform._bench.torch_peers import deform_sides, tensors

NAME = "onnxruntime DeformConv (CUDA)"
PROVIDER = "CUDAExecutionProvider"
# dtype: the ONNX element type and the NumPy dtype name of the I/O binding
ELEMENT_TYPES = {"float32": ("FLOAT", "float32"), "float16": ("FLOAT16", "float16")}


class OnnxRuntimeCudaPeer:
    name = NAME

    def __init__(self, onnxruntime=None, onnx=None, torch=None, adapter=None, device="cuda"):
        """The modules default to the real ones; tests pass fakes and ``device="cpu"``."""
        self.device = device
        self.onnxruntime = onnxruntime or optional("onnxruntime")
        providers = self.onnxruntime.get_available_providers()
        if PROVIDER not in providers:
            raise Missing(f"onnxruntime {self.onnxruntime.__version__} has no {PROVIDER} "
                          f"(providers: {', '.join(providers)}; onnxruntime-gpu has it)")
        self.onnx = onnx or optional("onnx")
        self.torch = torch or optional("torch")
        self.adapter = adapter or optional("cudeform.adapters.torch")
        self.numpy = optional("numpy")

    @functools.lru_cache(maxsize=16)
    def _session(self, padding, dilation, offset_groups, mask, element_type, device_index):
        options = self.onnxruntime.SessionOptions()
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return self.onnxruntime.InferenceSession(
            deform_conv_model(self.onnx, padding, dilation, offset_groups, mask, element_type),
            options, providers=[(PROVIDER, {"device_id": device_index})])

    def _bound_forward(self, session, inputs, output, numpy_dtype):
        """A call running ``session`` on ``inputs`` (CUDA tensors by ONNX name) into
        ``output``, through an I/O binding."""
        binding = session.io_binding()
        for name, tensor in (*inputs.items(), ("Y", output)):
            bind = binding.bind_output if name == "Y" else binding.bind_input
            bind(name, "cuda", tensor.device.index or 0, self.numpy.dtype(numpy_dtype),
                 list(tensor.shape), tensor.data_ptr())

        def forward():
            session.run_with_iobinding(binding)
            return output
        return forward

    def pairs(self, case, dtype, arrays):
        if dtype not in ELEMENT_TYPES:
            raise Skip(f"the bench binds {' and '.join(ELEMENT_TYPES)} only", scope="dtype")
        element_type, numpy_dtype = ELEMENT_TYPES[dtype]
        inputs = tensors(self.torch, arrays, dtype, self.device)
        x = inputs["input"]
        session = self._session(case.padding, case.dilation, case.offset_groups, case.mask,
                                element_type, x.device.index or 0)
        named = {"X": x, "W": inputs["weight"], "offset": inputs["offset"]}
        if case.mask:
            named["mask"] = inputs["mask"]
        output = self.torch.empty((case.batch, case.out_channels, case.height, case.width),
                                  dtype=x.dtype, device=x.device)
        peer = Side(self._bound_forward(session, named, output, numpy_dtype), lambda y: (y,),
                    None)
        cudeform_side = deform_sides(self.torch, self.adapter.deform_conv2d, inputs, case,
                                     memory=None)[FORWARD]
        label, shape = labels(case)
        return [Pair(label, shape, dtype, FORWARD, self.name, cudeform_side, peer,
                     deform_names(FORWARD, case.mask))]
