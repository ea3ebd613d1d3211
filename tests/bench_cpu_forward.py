"""Time cudeform's NumPy forward against onnxruntime's DeformConv, interleaved.

Shape: input (4, 64, 56, 56), 64 outputs, 3x3, padding 1, offsets of about 2
pixels, float32. Prints the medians and their ratio (cudeform / onnxruntime).

    python tests/bench_cpu_forward.py [--repeats 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy
import onnxruntime
from onnx import TensorProto, helper

import cudeform


def onnxruntime_deform_conv(threads):
    node = helper.make_node("DeformConv", ["X", "W", "offset"], ["Y"], kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "deform_conv",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("X", "W", "offset")],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle onnxruntime workers spin by default and would steal a core from the
    # interleaved cudeform run; the comparison is fairer without spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    return lambda x, w, offset: session.run(None, {"X": x, "W": w, "offset": offset})[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = parser.parse_args()

    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((4, 64, 56, 56)).astype(numpy.float32)
    weight = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(numpy.float32)
    offset = (rng.standard_normal((4, 18, 56, 56)) * 2).astype(numpy.float32)
    peer = onnxruntime_deform_conv(args.threads)
    runs = {
        "cudeform": lambda: cudeform.deform_conv2d(x, offset, weight, padding=1),
        "onnxruntime": lambda: peer(x, weight, offset),
    }
    numpy.testing.assert_allclose(runs["cudeform"](), runs["onnxruntime"](), rtol=1e-4, atol=1e-4)
    for run in runs.values():  # warm-up
        run()
        run()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for name, ms in medians.items():
        print(f"{name:12s} median {ms:8.2f} ms over {args.repeats} runs")
    print(f"ratio cudeform / onnxruntime = {medians['cudeform'] / medians['onnxruntime']:.2f}")


if __name__ == "__main__":
    main()
