"""Validation of the layers' constructor arguments, shared by the framework adapters.

A layer checks its arguments when it is built, so a wrong combination fails with the
names the user passed (``num_classes``, ``output_dim``) rather than later, in
``forward``, with a message about an array the layer made itself. Each adapter passes
its own argument names (``ksize`` or ``kernel_size``, ``pad`` or ``padding``).
"""

from __future__ import annotations

from typing import Tuple

from cudeform._shapes import _finite_float, _positive_float, _positive_int, pair


def positive_int(value: int, name: str) -> int:
    """``value`` as an int >= 1, else ValueError naming ``name``."""
    return _positive_int(value, name)


def non_negative_int(value: int, name: str) -> int:
    """``value`` as an int >= 0, else ValueError naming ``name``."""
    return _positive_int(value, name, minimum=0)


def positive_float(value: float, name: str) -> float:
    """``value`` as a finite float > 0, else ValueError naming ``name``."""
    return _positive_float(value, name)


def finite_float(value: float, name: str) -> float:
    """``value`` as a finite float, else ValueError naming ``name``."""
    return _finite_float(value, name)


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
    return dict(output_size=pair(output_size, "output_size", minimum=1),
                spatial_scale=positive_float(spatial_scale, "spatial_scale"),
                sampling_ratio=non_negative_int(sampling_ratio, "sampling_ratio"),
                gamma=finite_float(gamma, "gamma"))


def psroi_pool_layer(output_dim, group_size, pooled_size, part_size, sample_per_part,
                     spatial_scale, trans_std, num_classes=1):
    """The options of a position-sensitive RoI pooling layer, as the core takes them
    (``num_classes`` checked against ``output_dim`` but not returned)."""
    output_dim = positive_int(output_dim, "output_dim")
    pooled_size = positive_int(pooled_size, "pooled_size")
    divisor(num_classes, "num_classes", output_dim=output_dim)
    return dict(output_dim=output_dim, group_size=positive_int(group_size, "group_size"),
                pooled_size=pooled_size,
                part_size=None if part_size is None else positive_int(part_size, "part_size"),
                sample_per_part=positive_int(sample_per_part, "sample_per_part"),
                spatial_scale=positive_float(spatial_scale, "spatial_scale"),
                trans_std=finite_float(trans_std, "trans_std"))
