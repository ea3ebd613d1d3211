"""Where the NumPy path's deformable convolution spends its time, per layer: the GEMMs
against everything else (the bilinear sampling that builds the columns, the offset and
mask gradients and, in the backward, the scatter of the input gradient).

It runs the bench's CPU layers (C1-C6) on one thread (``CUDEFORM_NUM_THREADS=1``,
BLAS held to one thread as always), and times every GEMM inside the real call: the
``numpy.matmul`` calls of ``cudeform._cpu.deform_conv`` and ``cudeform._cpu.columns``
whose operands are both matrices go through a clock. The backward's scatter
(``_scatter``) is clocked the same way. Everything else in the call is "sampling and
the rest". onnxruntime's ``DeformConv`` forward on one thread, when it is installed,
runs interleaved with cudeform's forward for comparison.

Times are the CPU time of the calling thread (``time.thread_time``): everything runs on
that one thread (BLAS and onnxruntime too, each held to one thread), so on an idle
machine this is the wall time, and on a busy one it leaves out the time the thread
waits for a core. Each row shows the round whose total is the median of the rounds,
with its parts; onnxruntime's figure is its median.

Regenerate the performance page's table with::

    python docs/time_split.py --markdown time-split.md

``--quick`` runs C1 once (a smoke test). The numbers depend on the machine and its
load; the table's first line names both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

os.environ["CUDEFORM_NUM_THREADS"] = "1"  # before cudeform reads it: one thread

import numpy  # noqa: E402

import cudeform  # noqa: E402
from cudeform._bench import environment  # noqa: E402
from cudeform._bench.cases import CPU_CASES, CPU_LAYERS  # noqa: E402
from cudeform._cpu import columns as columns_module  # noqa: E402
from cudeform._cpu import deform_conv as conv_module  # noqa: E402


clock = time.thread_time


class Clocks:
    """Seconds spent in GEMMs and in the input-gradient scatter during one call."""

    def __init__(self):
        self.gemm = 0.0
        self.scatter = 0.0


class _GemmClockedNumpy:
    """``numpy`` as the conv modules see it, with matrix-matrix ``matmul`` clocked.

    A product whose second operand is a vector (``(..., K, 1)``: the corner
    gradients of the backward) is not a GEMM and is not clocked.
    """

    def __init__(self, clocks):
        self._clocks = clocks

    def __getattr__(self, name):
        return getattr(numpy, name)

    def matmul(self, a, b, *args, **kwargs):
        if numpy.ndim(b) < 2 or numpy.shape(b)[-1] == 1:
            return numpy.matmul(a, b, *args, **kwargs)
        start = clock()
        result = numpy.matmul(a, b, *args, **kwargs)
        self._clocks.gemm += clock() - start
        return result


@contextlib.contextmanager
def clocked(clocks):
    """Within this context the NumPy convolution adds its GEMM and scatter time to
    ``clocks``."""
    scatter = conv_module._scatter

    def clocked_scatter(*args):
        start = clock()
        scatter(*args)
        clocks.scatter += clock() - start

    proxy = _GemmClockedNumpy(clocks)
    saved = conv_module.numpy, columns_module.numpy
    conv_module.numpy = columns_module.numpy = proxy
    conv_module._scatter = clocked_scatter
    try:
        yield
    finally:
        conv_module.numpy, columns_module.numpy = saved
        conv_module._scatter = scatter


def _options(case, arrays):
    return dict(padding=case.padding, dilation=case.dilation, mask=arrays["mask"])


def _split(call):
    """``(total, gemm, scatter)`` seconds of one clocked ``call()``."""
    clocks = Clocks()
    with clocked(clocks):
        start = clock()
        call()
        total = clock() - start
    return total, clocks.gemm, clocks.scatter


def _onnxruntime_forward(case, arrays):
    """onnxruntime's one-thread forward of ``case``, or None when it is not installed."""
    try:
        from cudeform._bench.onnxruntime_peer import OnnxRuntimePeer

        return OnnxRuntimePeer().pairs(case, "float32", arrays)[0].other.run
    except ImportError:
        return None


def measure(case, rounds):
    """Rows ``{layer, pass, total, gemm, scatter, rest, onnxruntime}`` in ms: the parts of
    the median round, and onnxruntime's median."""
    arrays = case.arrays()
    x, offset, weight = arrays["input"], arrays["offset"], arrays["weight"]
    options = _options(case, arrays)
    ones = numpy.ones((case.batch, case.out_channels, case.height, case.width), numpy.float32)
    passes = {
        "fwd": lambda: cudeform.deform_conv2d(x, offset, weight, **options),
        "bwd": lambda: cudeform.deform_conv2d_backward(ones, x, offset, weight, **options),
    }
    onnxruntime = _onnxruntime_forward(case, arrays)
    rows = []
    for name, call in passes.items():
        call()  # warm-up
        samples, peer = [], []
        for _ in range(rounds):
            samples.append(_split(call))
            if name == "fwd" and onnxruntime is not None:
                start = clock()
                onnxruntime()
                peer.append(clock() - start)
        total, gemm, scatter = (seconds * 1e3 for seconds in sorted(samples)[len(samples) // 2])
        rows.append(dict(layer=case.name, passes=name, total=total, gemm=gemm,
                         scatter=scatter if name == "bwd" else None,
                         rest=total - gemm - scatter,
                         onnxruntime=statistics.median(peer) * 1e3 if peer else None))
    return rows


def _cell(value):
    return "" if value is None else f"{value:.2f}"


def markdown(rows, cases, machine):
    """The table, after a line naming the machine (with its load average at the start
    and at the end) and the library versions."""
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine}; load average at the end "
             f"{os.getloadavg()[0]:.2f}; one thread, CPU time of the thread; "
             f"{environment.versions()}.",
             "",
             "| layer | pass | total ms | GEMM ms | GEMM share | input-gradient scatter ms "
             "| sampling and the rest ms | onnxruntime fwd ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        share = f"{100 * row['gemm'] / row['total']:.0f}%"
        lines.append(f"| {row['layer']} | {row['passes']} | {_cell(row['total'])} | "
                     f"{_cell(row['gemm'])} | {share} | {_cell(row['scatter'])} | "
                     f"{_cell(row['rest'])} | {_cell(row['onnxruntime'])} |")
    lines.append("")
    lines += [f"- {case.name}: {case.geometry()}" for case in cases]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="C1 only, one round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per pass")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table here")
    args = parser.parse_args(argv)
    cases = CPU_CASES[:1] if args.quick else CPU_CASES + CPU_LAYERS
    rounds = 1 if args.quick else args.rounds
    machine = environment.machine("cpu")
    rows = [row for case in cases for row in measure(case, rounds)]
    text = markdown(rows, cases, machine)
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "w") as file:
            file.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
