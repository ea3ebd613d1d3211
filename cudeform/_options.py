"""The rules of the ops' scalar options (``stride``, ``spatial_scale``...), shared by
every backend and adapter.

Options are checked first for their kind, then for their value: a string, None, a bool
or a float where an int is expected is a ``TypeError``; a value out of range
(negative, NaN, infinite, past a 32-bit C int) is a ``ValueError``. Both messages name
the argument, what was expected and what was given.
"""

from __future__ import annotations

import itertools
import math
import numbers

# Integer options reach the kernels as sizes of their index type, 32-bit in most calls.
MAX_INT_OPTION = 2**31 - 1


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _wrong_kind(name, expected, value):
    """The TypeError of an option of the wrong kind (a string, None, a bool, a float...)."""
    given = "None" if value is None else f"{type(value).__name__} {value!r}"
    return TypeError(f"{name} is not valid: expected {expected}, got {given}")


def _bounded(values, value, name, minimum, what="values"):
    if min(values) < minimum:
        raise ValueError(f"{name} is not valid: expected {what} >= {minimum}, got {value!r}")
    if max(values) > MAX_INT_OPTION:
        raise ValueError(f"{name} is not valid: expected {what} <= {MAX_INT_OPTION} (a "
                         f"32-bit C int), got {value!r}")


def integer(value, name, *, minimum):
    """``value`` as a Python int in ``[minimum, MAX_INT_OPTION]``.

    Raises:
        TypeError: ``value`` is not an int (a bool, a float, a string, None...).
        ValueError: ``value`` is out of that range.
    """
    if not _is_int(value):
        raise _wrong_kind(name, f"an int >= {minimum}", value)
    _bounded((value,), value, name, minimum, what="an int")
    return int(value)


def pair(value, name, *, minimum):
    """Return ``value`` as a pair of Python ints, each in ``[minimum, MAX_INT_OPTION]``.

    Args:
        value: an int or a sequence of two ints.
        name: the argument name used in error messages.
        minimum: the smallest allowed value.

    Raises:
        TypeError: ``value`` is neither an int nor a sequence of ints (a bool, a float,
            a string, None...).
        ValueError: a sequence whose length is not 2, or a value out of range.
    """
    expected = "an int or a pair of ints"
    if _is_int(value):
        values = (int(value), int(value))
    else:
        if isinstance(value, (str, bytes)):
            raise _wrong_kind(name, expected, value)
        try:  # at most three items: enough to tell a pair, and no hang on an endless one
            values = tuple(itertools.islice(iter(value), 3))
        except TypeError:
            raise _wrong_kind(name, expected, value) from None
        if len(values) != 2:
            raise ValueError(f"{name} is not valid: expected {expected}, got {value!r}")
        if not all(_is_int(v) for v in values):
            raise _wrong_kind(name, expected, value)
        values = (int(values[0]), int(values[1]))
    _bounded(values, value, name, minimum)
    return values


def _real(value, name, expected):
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise _wrong_kind(name, expected, value)
    try:
        return float(value)
    except OverflowError:  # an int past the float range
        raise ValueError(f"{name} is not valid: expected {expected}, got {value!r}") from None


def positive_number(value, name):
    """``value`` as a finite Python float > 0.

    Raises:
        TypeError: ``value`` is not a real number (a string, None, a bool...).
        ValueError: ``value`` is 0, negative, infinite or NaN.
    """
    expected = "a positive number"
    number = _real(value, name, expected)
    if not 0 < number < math.inf:
        raise ValueError(f"{name} is not valid: expected {expected}, got {value!r}")
    return number


def finite_number(value, name):
    """``value`` as a finite Python float.

    Raises:
        TypeError: ``value`` is not a real number (a string, None, a bool...).
        ValueError: ``value`` is infinite or NaN.
    """
    expected = "a finite number"
    number = _real(value, name, expected)
    if number != number or abs(number) == math.inf:  # (comparisons: torch.compile traces them)
        raise ValueError(f"{name} is not valid: expected {expected}, got {value!r}")
    return number


def conv_options(stride, padding, dilation, names=("stride", "padding", "dilation")):
    """The options of a ``deform_conv2d`` call, validated, as pairs of Python ints
    (``names``: the caller's names for them, e.g. Chainer's ``pad`` and ``dilate``)."""
    return dict(stride=pair(stride, names[0], minimum=1),
                padding=pair(padding, names[1], minimum=0),
                dilation=pair(dilation, names[2], minimum=1))


def roi_pool_options(output_size, spatial_scale, sampling_ratio, gamma):
    """The options of a ``deform_roi_pool`` call, validated, as Python ints and floats."""
    return dict(output_size=pair(output_size, "output_size", minimum=1),
                spatial_scale=positive_number(spatial_scale, "spatial_scale"),
                sampling_ratio=integer(sampling_ratio, "sampling_ratio", minimum=0),
                gamma=finite_number(gamma, "gamma"))


def psroi_pool_options(output_dim, group_size, pooled_size, part_size, sample_per_part,
                       spatial_scale, trans_std):
    """The options of a ``deform_psroi_pool`` call, validated, as Python ints and floats
    (``part_size`` stays None when it is None)."""
    return dict(output_dim=integer(output_dim, "output_dim", minimum=1),
                group_size=integer(group_size, "group_size", minimum=1),
                pooled_size=integer(pooled_size, "pooled_size", minimum=1),
                part_size=None if part_size is None else integer(part_size, "part_size",
                                                                 minimum=1),
                sample_per_part=integer(sample_per_part, "sample_per_part", minimum=1),
                spatial_scale=positive_number(spatial_scale, "spatial_scale"),
                trans_std=finite_number(trans_std, "trans_std"))
