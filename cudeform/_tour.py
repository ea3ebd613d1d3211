"""``python -m cudeform [tour]``: a short tour of deform_conv2d on this machine.

It runs DCNv2 forward and backward on NumPy arrays (and on CuPy arrays when a
GPU is present), and shows two facts of the operator: a one-pixel offset reads
the neighbouring pixel, and a half-pixel offset reads the mean of the two.
"""

from __future__ import annotations

import time
from typing import List, Optional

import numpy

import cudeform
from cudeform._cli import (
    Parser, add_device_option, require_cuda, require_settings, why_no_cuda,
)


def _tour(xp, device):
    rng = numpy.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((2, 8, 16, 16)).astype(numpy.float32))
    weight = xp.asarray(rng.standard_normal((16, 8, 3, 3)).astype(numpy.float32))
    offset = xp.asarray(rng.uniform(-2, 2, (2, 18, 16, 16)).astype(numpy.float32))
    mask = xp.asarray(rng.uniform(0, 1, (2, 9, 16, 16)).astype(numpy.float32))

    start = time.perf_counter()
    y = cudeform.deform_conv2d(x, offset, weight, padding=1, mask=mask)
    grads = cudeform.deform_conv2d_backward(xp.ones_like(y), x, offset, weight, padding=1,
                                            mask=mask)
    elapsed = (time.perf_counter() - start) * 1e3
    print(f"[{device}] DCNv2 forward+backward of input {tuple(x.shape)}: output "
          f"{tuple(y.shape)}, gradients {', '.join(grads._fields)} in {elapsed:.1f} ms")

    # A 1x1 kernel with offset (dy, dx) = (0, 1) reads the pixel to the right,
    # and (0, 0.5) the mean of the two (bilinear sampling).
    unit = xp.ones((1, 1, 1, 1), dtype=x.dtype)
    channel = x[:, :1]
    shift = xp.zeros((2, 2, 16, 16), dtype=x.dtype)
    shift[:, 1] = 1.0
    moved = cudeform.deform_conv2d(channel, shift, unit)[:, 0, :, :-1]
    half = cudeform.deform_conv2d(channel, shift * 0.5, unit)[:, 0, :, :-1]
    right = channel[:, 0, :, 1:]
    reads_right = bool(xp.allclose(moved, right))
    reads_mean = bool(xp.allclose(half, (channel[:, 0, :, :-1] + right) / 2))
    print(f"[{device}] offset (0, 1) reads the right neighbour: {reads_right}; "
          f"offset (0, 0.5) reads the mean of both: {reads_mean}")
    return reads_right and reads_mean


def _parser():
    parser = Parser(prog="python -m cudeform tour",
                    description="A short tour of deform_conv2d on this machine: DCNv2 forward "
                                "and backward, and two facts of its sampling rule.")
    add_device_option(parser, "the CPU, then the GPU when CuPy sees one")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    require_settings()
    if args.device == "cuda":
        require_cuda()
    print(f"cudeform {cudeform.__version__}; workspace limit {cudeform.workspace_limit()} bytes")
    ok = True
    if args.device in ("auto", "cpu"):
        ok = _tour(numpy, "cpu") and ok
    no_cuda = None if args.device == "cuda" else why_no_cuda()
    if args.device != "cpu" and no_cuda is None:
        import cupy

        ok = _tour(cupy, "cuda") and ok
    elif args.device == "auto":
        print(f"[cuda] skipped: {no_cuda}")
    return 0 if ok else 1
