"""Validation of the layers' constructor arguments, shared by the framework adapters.

A layer checks its arguments when it is built, so a wrong combination fails with the
names the user passed (``num_classes``, ``output_dim``) rather than later, in
``forward``, with a message about an array the layer made itself. Each adapter passes
its own argument names (``ksize`` or ``kernel_size``, ``pad`` or ``padding``). An
argument of the wrong kind (a string, None, a float or a bool where an int is
expected, anything but a bool for a flag) is a ``TypeError``, a value out of range a
``ValueError``, as for the ops' options (:mod:`cudeform._options`).

The checks a layer makes in ``forward`` before its first op are here too: a layer that
computes its own offsets from the input checks that input as the op would, so that a
wrong input fails with the op's message rather than one from the offset branch.
"""

from __future__ import annotations

from typing import Tuple

import numpy

from cudeform import _options, _shapes
from cudeform._options import pair


def positive_int(value: int, name: str) -> int:
    """``value`` as an int >= 1; else TypeError (not an int) or ValueError naming ``name``."""
    return _options.integer(value, name, minimum=1)


def flag(value: bool, name: str) -> bool:
    """``value`` as a bool; anything but True or False (NumPy's included) is a TypeError
    naming ``name``."""
    if isinstance(value, (bool, numpy.bool_)):
        return bool(value)
    given = "None" if value is None else f"{type(value).__name__} {value!r}"
    raise TypeError(f"{name} is not valid: expected True or False, got {given}")


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
    return _options.roi_pool_options(output_size, spatial_scale, sampling_ratio, gamma)


def psroi_pool_layer(output_dim, group_size, pooled_size, part_size, sample_per_part,
                     spatial_scale, trans_std, num_classes=1):
    """The options of a position-sensitive RoI pooling layer, as the core takes them
    (``num_classes`` checked against ``output_dim`` but not returned)."""
    options = _options.psroi_pool_options(output_dim, group_size, pooled_size, part_size,
                                         sample_per_part, spatial_scale, trans_std)
    divisor(num_classes, "num_classes", output_dim=options["output_dim"])
    return options


# --- checks in forward ------------------------------------------------------------------


def offset_channels(offset_shape, deform_groups: int, taps: int) -> None:
    """A layer built with ``deform_groups`` takes offsets of ``2*deform_groups*kh*kw``
    channels; other offset shapes are left to the op's own checks."""
    if len(offset_shape) != 4:
        return
    expected = 2 * deform_groups * taps
    if offset_shape[1] != expected:
        raise ValueError(f"offset.shape[1] is not valid: expected 2*deform_groups*kh*kw="
                         f"{expected}, got {offset_shape[1]}")


def input_channels(input_shape, expected: int, expected_name: str, name: str = "input") -> None:
    """``input_shape`` must be 4-D with the layer's ``expected_name`` channels."""
    _shapes.require_ndim(input_shape, 4, name)
    if input_shape[1] != expected:
        raise ValueError(f"{name}.shape[1] is not valid: expected {expected_name}={expected}, "
                         f"got {input_shape[1]}")


def conv_input(input_shape, weight_shape, stride, padding, dilation) -> None:
    """What ``deform_conv2d`` checks of ``input`` with this weight and these options,
    for a layer that computes its offsets from ``input`` before it calls the op: the
    same ValueError as the layer without an offset branch (e.g. an input smaller than
    the kernel)."""
    _shapes.check_conv_input(input_shape, weight_shape, stride=stride, padding=padding,
                             dilation=dilation)
