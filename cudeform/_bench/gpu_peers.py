"""The GPU run: torchvision's ``deform_conv2d``, deformops' fused Triton deformable
convolution, onnxruntime's CUDA ``DeformConv`` (forward) and cuDNN's ``conv2d`` (the
floor) against cudeform's PyTorch adapter on the same CUDA tensors, and Chainer's
sampler against cudeform's core API on the same CuPy arrays. A peer that is not
installed (or, for onnxruntime, has no CUDA provider) is reported as skipped.

Every timed call sits between two device-wide synchronisations
(``cudaDeviceSynchronize``), which wait for CuPy's and torch's streams alike.
TF32 is turned off for cuDNN, so float32 means float32 on both sides (CuPy's and
torch's GEMMs do not use TF32 by default).
"""

from __future__ import annotations

import gc
import sys

import cudeform
from cudeform._bench import determinism_peer, fused_peer
from cudeform._bench.imports import Missing, optional

MEMORY_NOTE = ("cudeform against torch peers: the peak of torch's allocator, which serves "
               "cudeform's workspaces and outputs through the adapter as well as the gradient "
               "of ones and autograd, plus the peak of CuPy's pool (expected to stay 0); "
               "against Chainer: CuPy's pool on both sides.")
QUICK_DTYPES = ("float32",)
FULL_DTYPES = ("float32", "float16", "bfloat16")
CUDEFORM_API = ("cudeform's PyTorch adapter (cudeform.adapters.torch.deform_conv2d) against "
                "the torch peers, its core API on CuPy arrays against Chainer")


class CudaDevice:
    name = "cuda"

    def __init__(self):
        self.cupy = optional("cupy")

    def sync(self):
        self.cupy.cuda.runtime.deviceSynchronize()

    def release(self):
        """Give cached blocks back between layers, so that the big layers fit."""
        gc.collect()
        self.sync()
        self.cupy.get_default_memory_pool().free_all_blocks()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def _torch_settings():
    torch = optional("torch")
    # The legacy flag sets cuDNN's conv and RNN precision together; setting only
    # the conv one through the new API makes torch refuse to read the legacy flag.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    return torch


def _torchvision():
    from cudeform._bench.torch_peers import TorchvisionPeer

    _torch_settings()
    return TorchvisionPeer("cuda")


def _deformops():
    from cudeform._bench.torch_peers import DeformopsPeer

    _torch_settings()
    return DeformopsPeer("cuda")


def _onnxruntime_cuda():
    from cudeform._bench.onnxruntime_cuda_peer import OnnxRuntimeCudaPeer

    _torch_settings()
    return OnnxRuntimeCudaPeer()


def _chainer():
    from cudeform._bench.chainer_peer import ChainerPeer

    peer = ChainerPeer(optional("cupy"), memory="cupy")
    cuda = peer.chainer.backends.cuda
    if not cuda.available:
        error = getattr(cuda, "_resolution_error", None)
        raise Missing("Chainer cannot use CuPy" + (f": {error}" if error else ""))
    return peer


def _conv_floor():
    from cudeform._bench.torch_peers import ConvFloorPeer

    _torch_settings()
    return ConvFloorPeer("cuda")


def notes():
    """The settings that shape the GPU timings, in words."""
    parts = [f"cudeform workspace limit {cudeform.workspace_limit() / 2**20:.0f} MiB"]
    deformops = sys.modules.get("deformops")
    if deformops is not None:
        parts.append(f"deformops {deformops.__version__}")
    onnxruntime = sys.modules.get("onnxruntime")
    if onnxruntime is not None:
        parts.append(f"onnxruntime {onnxruntime.__version__}")
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            tf32 = torch.backends.cudnn.allow_tf32
        except RuntimeError as error:  # flags set elsewhere through both APIs
            tf32 = f"unknown ({error})"
        parts.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuDNN "
                     f"{torch.backends.cudnn.version()}, cudnn.benchmark "
                     f"{torch.backends.cudnn.benchmark}, TF32 in cuDNN {tf32}")
    return "settings: " + "; ".join(parts)


LOADERS = (
    ("torchvision deform_conv2d", _torchvision),
    ("deformops deform_conv2d", _deformops),
    ("onnxruntime DeformConv (CUDA)", _onnxruntime_cuda),
    ("chainer sampler", _chainer),
    ("cuDNN conv2d (floor)", _conv_floor),
    ("cudeform default backward", determinism_peer.load),
    (fused_peer.NAME, fused_peer.load),
)
