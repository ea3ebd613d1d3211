"""The GPU bench's newer peers on the host: deformops' drop-in deform_conv2d and
onnxruntime's CUDA ``DeformConv``, wired with fakes on CPU tensors (this machine has no
GPU), and every GPU peer that cannot load reported as missing, never a crash."""

from __future__ import annotations

import ctypes
import types

import numpy
import pytest

from cudeform._bench import cases, gpu_peers
from cudeform._bench.imports import Missing, load_peers
from tests.test_bench import DCNV2, DILATED, run_pairs

torch = pytest.importorskip("torch")


def test_every_gpu_peer_that_cannot_load_is_reported_missing():
    peers, missing = load_peers(gpu_peers.LOADERS)  # raises if a loader crashes
    names = [name for name, _ in missing] + [peer.name for peer in peers]
    assert set(names) == {name for name, _ in gpu_peers.LOADERS}
    assert all(reason for _, reason in missing)
    if not torch.cuda.is_available():  # each torch peer says why it cannot run
        reasons = dict(missing)
        for name in ("torchvision deform_conv2d", "deformops deform_conv2d",
                     "cuDNN conv2d (floor)"):
            assert "sees no CUDA device" in reasons[name] or "not installed" in reasons[name]


def test_deformops_missing_is_named():
    from cudeform._bench.torch_peers import DeformopsPeer

    try:
        import deformops  # noqa: F401
    except ImportError:
        with pytest.raises(Missing, match="not installed"):
            DeformopsPeer("cpu")
    else:
        pytest.skip("deformops is installed here")


@pytest.mark.parametrize("broken", [False, True], ids=["agrees", "wrong-dilation"])
def test_deformops_peer_on_cpu_tensors(broken):
    """The peer calls deformops' drop-in with torchvision's arguments; a stand-in (cudeform's
    adapter, or with the wrong dilation) shows the agreement check and the rows."""
    from cudeform._bench.torch_peers import DeformopsPeer
    from cudeform.adapters import torch as adapter

    def undilated(x, offset, weight, mask=None, padding=0, dilation=1):
        return adapter.deform_conv2d(x, offset, weight, mask=mask, padding=1, dilation=1)

    ops = types.SimpleNamespace(deform_conv2d=undilated if broken else adapter.deform_conv2d)
    peer = DeformopsPeer("cpu", deformops_ops=ops)
    assert peer.name == "deformops deform_conv2d"
    report = run_pairs(peer.pairs(DILATED, "float32", cases.inputs(DILATED)))
    assert [row.passes for row in report.rows] == ["fwd", "fwd+bwd"]
    assert len(report.warnings) == (2 if broken else 0)


# --- onnxruntime on CUDA, with a fake onnxruntime whose "CUDA" session runs on the CPU -------


def _host_array(pointer, shape, dtype):
    """A NumPy view of host memory at ``pointer`` (the fake binding's "device" memory)."""
    dtype = numpy.dtype(dtype)
    size = int(numpy.prod(shape)) * dtype.itemsize
    buffer = (ctypes.c_char * size).from_address(pointer)
    return numpy.frombuffer(buffer, dtype=dtype).reshape(shape)


class FakeBinding:
    def __init__(self, session):
        self.session, self.inputs, self.outputs, self.devices = session, {}, {}, set()

    def bind_input(self, name, device, index, dtype, shape, pointer):
        self.devices.add((device, index))
        self.inputs[name] = (pointer, shape, dtype)

    def bind_output(self, name, device, index, dtype, shape, pointer):
        self.devices.add((device, index))
        self.outputs[name] = (pointer, shape, dtype)


class FakeOnnxRuntime:
    """onnxruntime with a CUDA provider whose sessions run the real CPU session on the
    bound memory, recording the options and bindings."""

    def __init__(self, real, providers):
        self.real, self.providers, self.__version__ = real, providers, "fake"
        self.SessionOptions = real.SessionOptions
        self.sessions = []

    def get_available_providers(self):
        return self.providers

    def InferenceSession(self, model, options, providers):  # noqa: N802 (onnxruntime's name)
        fake = types.SimpleNamespace(providers=providers, options=options, bindings=[])
        cpu = self.real.InferenceSession(model, providers=["CPUExecutionProvider"])

        def io_binding():
            binding = FakeBinding(fake)
            fake.bindings.append(binding)
            return binding

        def run_with_iobinding(binding):
            feeds = {name: _host_array(*bound).copy() for name, bound in binding.inputs.items()}
            _host_array(*binding.outputs["Y"])[...] = cpu.run(None, feeds)[0]

        fake.io_binding, fake.run_with_iobinding = io_binding, run_with_iobinding
        self.sessions.append(fake)
        return fake


def test_onnxruntime_without_its_cuda_provider_is_missing():
    onnxruntime = pytest.importorskip("onnxruntime")
    from cudeform._bench.onnxruntime_cuda_peer import OnnxRuntimeCudaPeer

    fake = FakeOnnxRuntime(onnxruntime, ["CPUExecutionProvider"])
    with pytest.raises(Missing, match="has no CUDAExecutionProvider .*onnxruntime-gpu"):
        OnnxRuntimeCudaPeer(onnxruntime=fake)


def test_onnxruntime_cuda_peer_binds_the_tensors_cudeform_reads():
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from cudeform._bench.onnxruntime_cuda_peer import OnnxRuntimeCudaPeer
    from cudeform._bench.pairs import Skip

    fake = FakeOnnxRuntime(onnxruntime, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    peer = OnnxRuntimeCudaPeer(onnxruntime=fake, device="cpu")
    with pytest.raises(Skip):
        peer.pairs(DCNV2, "bfloat16", cases.inputs(DCNV2))
    pairs = peer.pairs(DCNV2, "float32", cases.inputs(DCNV2))
    report = run_pairs(pairs)
    assert [(row.passes, row.peer) for row in report.rows] == [
        ("fwd", "onnxruntime DeformConv (CUDA)")]
    assert not report.warnings and report.rows[0].ratio > 0
    session, = fake.sessions
    assert session.providers == [("CUDAExecutionProvider", {"device_id": 0})]
    assert session.options.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    binding, = session.bindings
    assert set(binding.inputs) == {"X", "W", "offset", "mask"}
    assert binding.devices == {("cuda", 0)}
