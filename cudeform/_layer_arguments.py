"""Validation of the layers' constructor arguments, shared by the framework adapters.

A layer checks its arguments when it is built, so a wrong combination fails with the
names the user passed (``num_classes``, ``output_dim``) rather than later, in
``forward``, with a message about an array the layer made itself. Each adapter passes
its own argument names (``ksize`` or ``kernel_size``, ``pad`` or ``padding``).
"""

from __future__ import annotations

from typing import Tuple

from cudeform import _shapes
from cudeform._shapes import pair


def positive_int(value: int, name: str) -> int:
    """``value`` as an int >= 1; else TypeError (not an int) or ValueError naming ``name``."""
    return _shapes.integer(value, name, minimum=1)


def divisor(value: int, name: str, **multiples: int) -> int:
    """``value`` as a positive int dividing every one of ``multiples`` (by name)."""
    value = positive_int(value, name)
    if any(multiple % value for multiple in multiples.values()):
        named = " and ".join(f"{n}={m}" for n, m in multiples.items())
        raise ValueError(f"{name} is not valid: expected a divisor of {named}, got {value}")
    return value


def conv_layer(in_channels: int, out_channels: int, groups: int) -> Tuple[int, int, int]:
    """Channels and weight groups of a deformable convolution layer."""
    in_channels = positive_int(in_channels, "in_channels")
    out_channels = positive_int(out_channels, "out_channels")
    groups = divisor(groups, "groups", in_channels=in_channels, out_channels=out_channels)
    return in_channels, out_channels, groups


def conv_geometry(kernel_size, stride, padding, dilation, *, names=("kernel_size", "stride",
                  "padding", "dilation")):
    """``(kernel, stride, padding, dilation)`` pairs; ``names`` are the layer's own."""
    minimums = (1, 1, 0, 1)
    return tuple(pair(value, name, minimum=minimum) for value, name, minimum
                 in zip((kernel_size, stride, padding, dilation), names, minimums))


def roi_pool_layer(output_size, spatial_scale, sampling_ratio, gamma):
    """The pooling options of a deformable RoI pooling layer, as the core takes them."""
    return _shapes.roi_pool_options(output_size, spatial_scale, sampling_ratio, gamma)


def psroi_pool_layer(output_dim, group_size, pooled_size, part_size, sample_per_part,
                     spatial_scale, trans_std, num_classes=1):
    """The options of a position-sensitive RoI pooling layer, as the core takes them
    (``num_classes`` checked against ``output_dim`` but not returned)."""
    options = _shapes.psroi_pool_options(output_dim, group_size, pooled_size, part_size,
                                         sample_per_part, spatial_scale, trans_std)
    divisor(num_classes, "num_classes", output_dim=options["output_dim"])
    return options
