"""The CPU run: cudeform's core NumPy API against onnxruntime's ``DeformConv``,
Chainer's sampler on NumPy arrays and torch's ``conv2d`` (the floor)."""

from __future__ import annotations

import gc
import os
import sys

import numpy


DTYPES = ("float32",)
MEMORY_NOTE = ("NumPy-based sides (cudeform, Chainer) through tracemalloc; onnxruntime's and "
               "torch's CPU allocations are invisible to it.")
CUDEFORM_API = ("cudeform's core NumPy API (cudeform.deform_conv2d, "
                "cudeform.deform_conv2d_backward)")


class CpuDevice:
    name = "cpu"

    @staticmethod
    def sync():
        return None

    @staticmethod
    def release():
        gc.collect()


def _onnxruntime():
    from cudeform._bench.onnxruntime_peer import OnnxRuntimePeer

    return OnnxRuntimePeer()


def _chainer():
    from cudeform._bench.chainer_peer import ChainerPeer

    return ChainerPeer(numpy, memory="tracemalloc")


def passive_openmp():
    """Make torch's OpenMP workers sleep rather than spin when idle, if torch is not
    loaded yet and the user did not choose: spinning workers take the cores from
    the interleaved neighbour (as onnxruntime's do, whose spinning is turned off)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _conv_floor():
    from cudeform._bench.torch_peers import ConvFloorPeer

    passive_openmp()
    return ConvFloorPeer("cpu")


def notes():
    """How many threads each CPU implementation uses, in words."""
    from cudeform._cpu.parallel import worker_count

    parts = [f"cudeform NumPy path {worker_count()}"]
    if "onnxruntime" in sys.modules:
        parts.append(f"onnxruntime {os.cpu_count()} intra-op (spinning off)")
    torch = sys.modules.get("torch")
    if torch is not None:
        policy = os.environ.get("OMP_WAIT_POLICY", "default")
        parts.append(f"torch {torch.get_num_threads()} (OMP_WAIT_POLICY={policy})")
    return "threads: " + ", ".join(parts)


# (name, loader): the names appear in the list of skipped peers.
LOADERS = (
    ("onnxruntime DeformConv", _onnxruntime),
    ("chainer sampler", _chainer),
    ("torch conv2d (floor)", _conv_floor),
)
