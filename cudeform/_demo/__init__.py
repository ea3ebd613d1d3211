"""``python -m cudeform demo``: a plain and a deformable CNN learn a task of varying scale.

Trains a small CNN and the same CNN with its last two convolutions made deformable
(``DeformConv2dPack``) on shapes drawn at random size and rotation, prints both test
accuracies, and draws where one unit of each network samples the image, as in
figure 5 of Dai et al., "Deformable Convolutional Networks", 2017.
"""

from __future__ import annotations

import argparse
import time

import numpy

__all__ = ["main"]


def _parser():
    parser = argparse.ArgumentParser(prog="python -m cudeform demo",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400,
                        help="training steps of each network (default 400)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="cudeform_demo.png",
                        help="where to write the picture (default cudeform_demo.png)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when torch and CuPy see a GPU, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-size", type=int, default=1000)
    return parser


def _device(choice):
    import torch

    if choice == "cpu":
        return "cpu"
    try:
        import cupy  # noqa: F401  (cudeform's CUDA kernels run through CuPy)
        usable = torch.cuda.is_available()
    except ImportError:
        usable = False
    if choice == "cuda" and not usable:
        raise SystemExit("--device cuda needs a CUDA build of torch, a GPU and CuPy")
    return "cuda" if usable else "cpu"


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


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.test_size < 4:
        raise SystemExit("--steps and --batch-size must be positive, --test-size at least 4")
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
