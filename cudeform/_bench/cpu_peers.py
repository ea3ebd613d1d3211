"""The CPU run: cudeform's core NumPy API against onnxruntime's ``DeformConv``,
OpenVINO's ``DeformableConvolution``, Chainer's sampler on NumPy arrays,
torchvision's CPU ``deform_conv2d`` and torch's ``conv2d`` (the floor), and
against itself (``own_times``).

Every pair runs at each of the device's thread counts: cudeform with that many
workers (``CUDEFORM_NUM_THREADS``; BLAS is held to one thread per worker, also
with one worker), onnxruntime with that many intra-op threads, OpenVINO with
``INFERENCE_NUM_THREADS``, Chainer with OpenBLAS held to that many threads, torch
with ``torch.set_num_threads``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys

import numpy

from cudeform._cpu import parallel

DTYPES = ("float32",)
MEMORY_NOTE = ("NumPy-based sides (cudeform, Chainer) through tracemalloc; onnxruntime's, "
               "OpenVINO's and torch's CPU allocations are invisible to it.")
CUDEFORM_API = ("cudeform's core NumPy API (cudeform.deform_conv2d, "
                "cudeform.deform_conv2d_backward), through its PyTorch adapter against "
                "torchvision")


class CpuDevice:
    """The CPU at a few thread counts: all of cudeform's workers, and one in a full run."""

    name = "cpu"

    def __init__(self, quick=False, thread_counts=None):
        workers = parallel.worker_count()
        if thread_counts is None:
            thread_counts = (workers,) if quick or workers == 1 else (1, workers)
        self.thread_counts = tuple(thread_counts)
        self.current = workers

    def label(self):
        return f"cpu ({self.current} thread{'s' if self.current > 1 else ''})"

    @contextlib.contextmanager
    def threads(self, count):
        """Run cudeform with ``count`` workers (the peers read it) and torch with
        ``count`` threads."""
        saved = os.environ.get(parallel.ENVIRONMENT_VARIABLE)
        torch = sys.modules.get("torch")
        torch_threads = torch.get_num_threads() if torch is not None else None
        os.environ[parallel.ENVIRONMENT_VARIABLE] = str(count)
        if torch is not None:
            torch.set_num_threads(count)
        self.current = count
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop(parallel.ENVIRONMENT_VARIABLE, None)
            else:
                os.environ[parallel.ENVIRONMENT_VARIABLE] = saved
            if torch is not None:
                torch.set_num_threads(torch_threads)

    @staticmethod
    def sync():
        return None

    @staticmethod
    def release():
        gc.collect()


class BlasThreads:
    """A NumPy-based peer whose side runs with OpenBLAS held to cudeform's worker count."""

    def __init__(self, peer):
        self.peer = peer
        self.name = peer.name

    def pairs(self, case, dtype, arrays):
        import threadpoolctl

        def limited(run):
            def call():
                with threadpoolctl.threadpool_limits(parallel.worker_count(), user_api="blas"):
                    return run()
            return call

        return [dataclasses.replace(pair, other=dataclasses.replace(
                    pair.other, run=limited(pair.other.run)))
                for pair in self.peer.pairs(case, dtype, arrays)]


def _onnxruntime():
    from cudeform._bench.onnxruntime_peer import OnnxRuntimePeer

    return OnnxRuntimePeer()


def _openvino():
    from cudeform._bench.openvino_peer import OpenVinoPeer

    return OpenVinoPeer()


def _chainer():
    from cudeform._bench.chainer_peer import ChainerPeer

    return BlasThreads(ChainerPeer(numpy, memory="tracemalloc"))


def passive_openmp():
    """Make torch's OpenMP workers sleep rather than spin when idle, if torch is not
    loaded yet and the user did not choose: spinning workers take the cores from
    the interleaved neighbour (as onnxruntime's do, whose spinning is turned off)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _torchvision():
    from cudeform._bench.torch_peers import TorchvisionPeer

    passive_openmp()
    return TorchvisionPeer("cpu")


def _conv_floor():
    from cudeform._bench.torch_peers import ConvFloorPeer

    passive_openmp()
    return ConvFloorPeer("cpu")


def _own_times():
    from cudeform._bench.own_times import BackwardOverForward

    return BackwardOverForward()


def _one_worker():
    from cudeform._bench.own_times import OneWorker

    return OneWorker()


def notes():
    """How each CPU implementation is set up, in words."""
    parts = ["cudeform NumPy path: CUDEFORM_NUM_THREADS workers, OpenBLAS held to one "
             "thread per worker"]
    if "onnxruntime" in sys.modules:
        parts.append("onnxruntime: as many intra-op threads, session.intra_op.allow_spinning=0")
    if "openvino" in sys.modules:
        parts.append("OpenVINO: CPU plugin, INFERENCE_NUM_THREADS as many, f32")
    if "chainer" in sys.modules:
        parts.append("Chainer: OpenBLAS held to as many threads")
    torch = sys.modules.get("torch")
    if torch is not None:
        policy = os.environ.get("OMP_WAIT_POLICY", "default")
        parts.append(f"torch: as many threads (OMP_WAIT_POLICY={policy})")
    return "threads: " + "; ".join(parts) + "."


# (name, loader): the names appear in the list of skipped peers.
LOADERS = (
    ("onnxruntime DeformConv", _onnxruntime),
    ("OpenVINO DeformableConvolution", _openvino),
    ("chainer sampler", _chainer),
    ("torchvision deform_conv2d", _torchvision),
    ("torch conv2d (floor)", _conv_floor),
    ("cudeform deform_conv2d (fwd)", _own_times),
    ("cudeform, 1 thread", _one_worker),
)
