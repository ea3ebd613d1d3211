"""The demo's task, drawn on the spot: ellipses and rectangles of three aspect ratios.

Each image holds one filled shape at a random size (its long side from 10 to 30
pixels of a 32-pixel image), rotation and position, with Gaussian noise. The six
classes are the two kinds times the three aspect ratios. Telling the aspect ratio
needs a view of the whole shape; corners and edges alone do not give it away.
"""

from __future__ import annotations

import dataclasses

import numpy

ASPECT_RATIOS = (1.0, 1.6, 2.5)
KINDS = ("ellipse", "rectangle")
CLASS_NAMES = tuple(f"{kind} {ratio:g}:1" for kind in KINDS for ratio in ASPECT_RATIOS)
IMAGE_SIZE = 32


@dataclasses.dataclass
class Shapes:
    """``images (n, 1, size, size)`` float32 and ``labels (n,)``, with how each was drawn."""

    images: numpy.ndarray
    labels: numpy.ndarray
    length: numpy.ndarray     # long side in pixels
    centre: numpy.ndarray     # (n, 2) centre (y, x) in pixel coordinates


def _column(values):
    return numpy.asarray(values, dtype=numpy.float32)[:, None, None]


def _signed_distance(kind, u, v, half_long, half_short):
    """Approximate distance to the outline in shape coordinates (u, v); negative inside."""
    with numpy.errstate(divide="ignore", invalid="ignore"):
        radius = numpy.sqrt((u / half_long) ** 2 + (v / half_short) ** 2)
        slope = numpy.sqrt((u / half_long**2) ** 2 + (v / half_short**2) ** 2) / radius
        ellipse = numpy.nan_to_num((radius - 1) / slope, nan=-1.0)
    rectangle = numpy.maximum(numpy.abs(u) - half_long, numpy.abs(v) - half_short)
    return numpy.where(kind == 0, ellipse, rectangle)


def make_shapes(n, rng, size=IMAGE_SIZE, min_length=10.0, max_length=30.0, noise=0.05):
    """``n`` random examples drawn with ``rng`` (a ``numpy.random.Generator``)."""
    kind = rng.integers(0, len(KINDS), n)
    ratio_index = rng.integers(0, len(ASPECT_RATIOS), n)
    length = numpy.exp(rng.uniform(numpy.log(min_length), numpy.log(max_length), n))
    angle = rng.uniform(0, numpy.pi, n)
    room = (size - length) / 2   # keeps the shape's long axis inside the image
    shift = rng.uniform(-1, 1, (n, 2)) * room[:, None]

    grid = numpy.arange(size, dtype=numpy.float32) - (size - 1) / 2
    y = grid[None, :, None] - _column(shift[:, 0])
    x = grid[None, None, :] - _column(shift[:, 1])
    cos, sin = _column(numpy.cos(angle)), _column(numpy.sin(angle))
    half_long = _column(length / 2)
    half_short = half_long / _column(numpy.asarray(ASPECT_RATIOS)[ratio_index])
    distance = _signed_distance(_column(kind), cos * x + sin * y, cos * y - sin * x,
                                half_long, half_short)
    images = numpy.clip(0.5 - distance, 0, 1)  # a one-pixel anti-aliased edge
    images += rng.normal(0, noise, images.shape).astype(numpy.float32)
    labels = kind * len(ASPECT_RATIOS) + ratio_index
    return Shapes(images[:, None], labels, length, shift + (size - 1) / 2)
