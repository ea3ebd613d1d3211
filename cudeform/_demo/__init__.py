"""``python -m cudeform demo``: a plain and a deformable CNN learn a task of varying scale.

Trains a small CNN and the same CNN with its last two convolutions made deformable
(``DeformConv2dPack``) on shapes drawn at random size and rotation, prints both test
accuracies, and draws where one unit of each network samples the image, as in
figure 5 of Dai et al., "Deformable Convolutional Networks", 2017.
"""

from __future__ import annotations

import argparse
import time
from typing import List, Optional

import numpy

from cudeform._cli import (
    Parser, UsageError, add_device_option, require_cuda, require_packages, require_settings,
    require_writable_file, why_no_cuda,
)

__all__ = ["main"]

DEMO_PACKAGES = ("torch", "tqdm", "matplotlib")


def _at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}")
        return value
    return parse


def _parser():
    parser = Parser(prog="python -m cudeform demo",
                    description="A plain and a deformable CNN learn a task of varying scale; "
                                "prints both test accuracies and draws where they sample. "
                                "Needs torch, tqdm and matplotlib (the demo extra).")
    parser.add_argument("--steps", type=_at_least(1), default=400,
                        help="training steps of each network")
    parser.add_argument("--batch-size", type=_at_least(1), default=32,
                        help="images per training step")
    parser.add_argument("--out", default="cudeform_demo.png",
                        help="where to write the picture (PNG)")
    add_device_option(parser, "cuda when torch and CuPy see a GPU, else cpu")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights, the training batches and the test set")
    parser.add_argument("--test-size", type=_at_least(4), default=1000,
                        help="test images, drawn once")
    return parser


def _device(choice):
    """``"cpu"`` or ``"cuda"``; ``--device cuda`` without a usable GPU is a UsageError."""
    import torch

    if choice == "cpu":
        return "cpu"
    if choice == "cuda":
        require_cuda()
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: this torch build sees no CUDA device (install "
                             "a CUDA build of torch)")
        return "cuda"
    return "cuda" if why_no_cuda() is None and torch.cuda.is_available() else "cpu"


def _pick_examples(test, correct, count=4, within=2.0):
    """Indices of ``count`` correctly classified test images spanning the sizes, from
    smallest to largest, of different classes where one lies within ``within`` pixels
    of the size wanted."""
    candidates = numpy.flatnonzero(correct)
    if len(candidates) < count:
        candidates = numpy.arange(len(test.labels))
    targets = numpy.quantile(test.length[candidates], numpy.linspace(0.02, 0.98, count))
    picked = []
    for target in targets:
        distance = numpy.abs(test.length[candidates] - target)
        order = [i for i in candidates[numpy.argsort(distance, kind="stable")] if i not in picked]
        new_class = [i for i in order if abs(test.length[i] - target) <= within
                     and test.labels[i] not in test.labels[picked]]
        picked.append((new_class or order)[0])
    return numpy.array(picked)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    require_settings()
    require_packages("the demo", "demo", DEMO_PACKAGES)
    require_writable_file("--out", args.out)
    import torch

    from cudeform._demo import figure, nets, sampling, training
    from cudeform._demo.shapes import CLASS_NAMES, make_shapes

    start = time.perf_counter()
    device = _device(args.device)
    print(f"Task: {len(CLASS_NAMES)} classes ({', '.join(CLASS_NAMES)}), long side 10 to 30 "
          f"pixels of 32, any rotation. Device: {device}.")
    test = make_shapes(args.test_size, numpy.random.default_rng([args.seed, 1]))
    torch.manual_seed(args.seed)
    plain, deformable = nets.plain_and_deformable(len(CLASS_NAMES))

    accuracy, seconds, correct = {}, {}, {}
    for label, net in (("plain CNN", plain), ("deformable CNN", deformable)):
        seconds[label] = training.train(net, args.steps, args.batch_size, learning_rate=5e-3,
                                        seed=args.seed, device=device, label=label)
        correct[label] = training.predict(net, test.images, device) == test.labels
        accuracy[label] = correct[label].mean()
    large = test.length >= numpy.median(test.length)
    for label in accuracy:
        print(f"{label:15s} test accuracy {accuracy[label]:6.1%} (small shapes "
              f"{correct[label][~large].mean():6.1%}, large {correct[label][large].mean():6.1%})"
              f" after {args.steps} steps of {args.batch_size} images in "
              f"{seconds[label]:.1f} s")

    # Where the unit at each shape's centre samples, in both networks.
    units = numpy.rint(test.centre / nets.FEATURE_STRIDE)
    convs = [getattr(deformable, name) for name in nets.DEFORMABLE_LAYERS]
    offsets = sampling.layer_offsets(deformable, nets.DEFORMABLE_LAYERS, test.images, device)
    learned = sampling.sampling_points(convs, offsets, units, nets.FEATURE_STRIDE)
    regular = sampling.sampling_points(convs, [numpy.zeros_like(o) for o in offsets], units,
                                       nets.FEATURE_STRIDE)
    spread = sampling.spread(learned)
    small = test.length < numpy.quantile(test.length, 1 / 3)
    big = test.length >= numpy.quantile(test.length, 2 / 3)
    print(f"Sampling spread of the deformable unit (RMS radius of its 81 points): "
          f"{spread[small].mean():.1f} px on the smallest third of the shapes, "
          f"{spread[big].mean():.1f} px on the largest third; correlation with shape size "
          f"r = {numpy.corrcoef(spread, test.length)[0, 1]:.2f}. The plain grid: "
          f"{sampling.spread(regular).mean():.1f} px on every image.")

    shown = _pick_examples(test, correct["deformable CNN"])
    titles = [f"{CLASS_NAMES[test.labels[i]]}, {test.length[i]:.0f} px" for i in shown]
    figure.draw(args.out, test.images[shown, 0], titles, units[shown] * nets.FEATURE_STRIDE,
                regular[shown], learned[shown], test.length, spread,
                sampling.spread(regular[:1])[0])
    print(f"Wrote {args.out}. Total time {time.perf_counter() - start:.0f} s.")
    return 0
