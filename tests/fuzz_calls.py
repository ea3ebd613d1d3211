"""Hypothesis strategies for the invalid-call fuzz tests: a random valid call of each op,
and one corruption of it (an argument of the wrong kind or dtype, a wrong shape, an
option out of range, an array too large for 32-bit indices).

Arrays stay tiny. The large ones are zero-stride views (``numpy.broadcast_to``,
``Tensor.expand``) whose shapes break the call's contract, so that a call fails its
checks before anything of their size is allocated.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import numpy
from hypothesis import strategies as st

import cudeform
from cudeform import _shapes

# Elements past which 32-bit indices overflow.
LARGE = 2**31 + 1

# Bad values by option kind; each is a TypeError (wrong kind) or a ValueError.
_WRONG_KIND = ["1", b"1", None, True, [], {}, object()]
_BAD_INTS = [1.5, 2.0, float("nan"), -1, -(2**31), 2**31, 2**63, 2**70]
_BAD_PAIRS = [(1,), (1, 2, 3), (1, "1"), (1, 2.0), (True, 1), (1, 2**31), (-1, 1)]
_BAD_POSITIVE = [0, 0.0, -0.5, float("nan"), float("inf"), -float("inf"), 10**400, "0.5"]
_BAD_FINITE = [float("nan"), float("inf"), -float("inf"), 10**400, "0.1", None]


@dataclasses.dataclass
class Call:
    """One valid call of an op: its arrays (in the signature's order), options, and
    the output shape (for a backward's ``grad_output``)."""

    forward: Callable
    backward: Callable
    arrays: dict
    options: dict
    optional: tuple
    output_shape: tuple
    option_kinds: dict  # name -> ("int", minimum), ("pair", minimum), "positive", "finite"
    large_arrays: Callable  # (call, name) -> a large shape that breaks the contract, or None

    @property
    def grad_output(self):
        return numpy.zeros(self.output_shape, self.arrays["input"].dtype)

    def names(self):
        return set(self.arrays) | set(self.options) | {"grad_output"}


def _array(shape, dtype):
    return numpy.zeros(shape, dtype)


def _options(draw, pairs):
    """Each option as an int or a pair, as callers write them."""
    return {name: value[0] if value[0] == value[1] and draw(st.booleans()) else value
            for name, value in pairs.items()}


@st.composite
def conv_calls(draw):
    dtype = draw(st.sampled_from([numpy.float32, numpy.float64]))
    groups, offset_groups = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    in_channels = groups * offset_groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = [draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), d * (k - 1) + 4))
            for k, p, d in zip(kernel, padding, dilation)]
    out = [_shapes.conv_output_size(*args) for args in zip(size, kernel, stride, padding,
                                                           dilation)]
    batch, taps = draw(st.integers(0, 2)), kernel[0] * kernel[1]
    arrays = dict(
        input=_array((batch, in_channels, *size), dtype),
        offset=_array((batch, 2 * offset_groups * taps, *out), dtype),
        weight=_array((out_channels, in_channels // groups, *kernel), dtype),
        bias=_array((out_channels,), dtype) if draw(st.booleans()) else None,
        mask=_array((batch, offset_groups * taps, *out), dtype) if draw(st.booleans()) else None)
    options = _options(draw, dict(stride=stride, padding=padding, dilation=dilation))
    return Call(cudeform.deform_conv2d, cudeform.deform_conv2d_backward, arrays, options,
                ("bias", "mask"), (batch, out_channels, *out),
                dict(stride=("pair", 1), padding=("pair", 0), dilation=("pair", 1)),
                _conv_large)


def _conv_large(call, name):
    """A batch, or an output size, that no longer matches the other arrays."""
    shape = list(call.output_shape if name == "grad_output" else call.arrays[name].shape)
    if name == "input":
        shape[0] = max(shape[0] + 1, -(-LARGE // math.prod(shape[1:])))
    elif name in ("offset", "mask", "grad_output"):
        shape[3] = max(shape[3] + 1, -(-LARGE // max(1, math.prod(shape[:3]))))
        shape[0] = max(shape[0], 1)
    else:
        return None
    return tuple(shape)


@st.composite
def roi_pool_calls(draw):
    dtype = draw(st.sampled_from([numpy.float32, numpy.float64]))
    batch, channels, rois = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(0, 3))
    pooled = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    arrays = dict(input=_array((batch, channels, *size), dtype), rois=_array((rois, 5), dtype),
                  offset=_array((rois, 2, *pooled), dtype) if draw(st.booleans()) else None)
    options = dict(output_size=_options(draw, dict(o=pooled))["o"],
                   spatial_scale=draw(st.sampled_from([1.0, 0.5, 1])),
                   sampling_ratio=draw(st.integers(0, 2)),
                   gamma=draw(st.sampled_from([0.1, -0.2, 0])))
    return Call(cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward, arrays, options,
                ("offset",), (rois, channels, *pooled),
                dict(output_size=("pair", 1), spatial_scale="positive",
                     sampling_ratio=("int", 0), gamma="finite"),
                _pool_large)


@st.composite
def psroi_pool_calls(draw):
    dtype = draw(st.sampled_from([numpy.float32, numpy.float64]))
    num_classes = draw(st.integers(1, 2))
    output_dim = num_classes * draw(st.integers(1, 2))
    group_size, pooled_size = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    part_size = draw(st.sampled_from([None, 1, 2]))
    parts = pooled_size if part_size is None else part_size
    batch, rois = draw(st.integers(1, 2)), draw(st.integers(0, 3))
    size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    arrays = dict(
        input=_array((batch, output_dim * group_size**2, *size), dtype),
        rois=_array((rois, 5), dtype),
        offset=_array((rois, 2 * num_classes, parts, parts), dtype)
        if draw(st.booleans()) else None)
    options = dict(output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                   part_size=part_size, sample_per_part=draw(st.integers(1, 3)),
                   spatial_scale=draw(st.sampled_from([1.0, 0.25])),
                   trans_std=draw(st.sampled_from([0.1, 0.0, -1.0])))
    return Call(cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward, arrays,
                options, ("offset",), (rois, output_dim, pooled_size, pooled_size),
                dict(output_dim=("int", 1), group_size=("int", 1), pooled_size=("int", 1),
                     part_size=("int", 1), sample_per_part=("int", 1),
                     spatial_scale="positive", trans_std="finite"),
                _pool_large)


def _pool_large(call, name):
    """RoIs of the wrong width, or a RoI count, input or output size that no longer
    matches (for RoI pooling a larger input alone would be a valid call)."""
    shape = list(call.output_shape if name == "grad_output" else call.arrays[name].shape)
    if name == "rois":
        return (LARGE, 4)
    if name == "input":
        return (*shape[:1], LARGE, *shape[2:]) if call.forward is cudeform.deform_psroi_pool \
            else (2**11, 2**10, 2**10, 1, 1)  # psroi: channels; roi: not 4-D
    if name in ("offset", "grad_output"):
        shape[0] = max(shape[0] + 1, -(-LARGE // math.prod(shape[1:])))
        return tuple(shape)
    return None


OPS = {"deform_conv2d": conv_calls, "deform_roi_pool": roi_pool_calls,
       "deform_psroi_pool": psroi_pool_calls}


# --- corruptions ------------------------------------------------------------------------


@dataclasses.dataclass
class Corruption:
    """One change to a valid call, of argument ``name``. ``invalid``: the call is
    invalid for sure (else, e.g. for a changed size, it may still be valid); ``named``:
    its error names ``name`` (else it may name any argument of the call, as when a
    large input no longer matches the offset)."""

    name: str
    value: object
    invalid: bool
    named: bool
    what: str


def option_values(kind):
    if kind == "positive":
        return _WRONG_KIND + _BAD_POSITIVE
    if kind == "finite":
        return [v for v in _WRONG_KIND if v is not None] + _BAD_FINITE
    form, minimum = kind
    below = [minimum - 1, minimum - 2**40] if form == "int" else [(minimum - 1, minimum)]
    return _WRONG_KIND + _BAD_INTS + (_BAD_PAIRS if form == "pair" else []) + below


@dataclasses.dataclass(frozen=True)
class Array:
    """An array argument to be made in the caller's type: zeros of ``shape`` in
    ``dtype`` (a NumPy dtype, or a name the caller's type knows), a zero-stride view
    when ``large``."""

    shape: tuple
    dtype: object
    large: bool = False


@st.composite
def corruptions(draw, call, backward, caller):
    """A corruption of ``call`` (of its backward when ``backward``) for ``caller``, which
    gives the corruptions it takes (``kinds``), the bad option values
    (``option_values(kind)``), the dtypes it does not support (``bad_dtypes``) and the
    objects it rejects where an array is expected (``junk(array)``; None is added for
    required arguments)."""
    arrays = dict(call.arrays, grad_output=call.grad_output if backward else None)
    array_names = [n for n, a in arrays.items() if a is not None]
    what = draw(st.sampled_from(caller.kinds))
    if what == "option":
        name = draw(st.sampled_from(sorted(call.option_kinds)))
        value = draw(st.sampled_from(caller.option_values(call.option_kinds[name])))
        return Corruption(name, 0 if name == "part_size" and value is None else value,
                          True, True, what)  # (None is part_size's default)
    name = draw(st.sampled_from(array_names))
    array = arrays[name]
    shape, dtype = array.shape, array.dtype
    if what == "kind":
        junk = caller.junk(array) + [None] * (name not in call.optional)
        if not junk:
            return Corruption(name, Array(shape, dtype), False, False, "none")
        return Corruption(name, draw(st.sampled_from(junk)), True, True, what)
    if what == "dtype":
        return Corruption(name, Array(shape, draw(st.sampled_from(caller.bad_dtypes))), True,
                          True, what)
    if what == "mix":
        other = numpy.float64 if dtype == numpy.float32 else numpy.float32
        return Corruption(name, Array(shape, other), True, True, what)
    if what == "ndim":
        ndim_shape = shape[1:] if draw(st.booleans()) and len(shape) > 1 else (1, *shape)
        return Corruption(name, Array(ndim_shape, dtype), True, True, what)
    if what == "size":
        axis = draw(st.integers(0, len(shape) - 1))
        new = list(shape)
        new[axis] = max(0, new[axis] + draw(st.sampled_from([-1, 1, 2])))
        return Corruption(name, Array(tuple(new), dtype), False, False, what)
    large = call.large_arrays(call, name)
    if large is None:  # weight and bias: a large valid weight would be computed on
        return Corruption(name, Array(shape, dtype), False, False, "none")
    return Corruption(name, Array(large, dtype, large=True), True, False, what)


def arguments(call, corruption, backward, make):
    """The keyword arguments of the corrupted call, its arrays made by ``make(Array)``."""
    arrays = dict(call.arrays)
    if backward:
        arrays = dict(grad_output=call.grad_output, **arrays)
    arrays = {name: None if a is None else make(Array(a.shape, a.dtype))
              for name, a in arrays.items()}
    options = dict(call.options)
    value = make(corruption.value) if isinstance(corruption.value, Array) else corruption.value
    (options if corruption.name in options else arrays)[corruption.name] = value
    return {**arrays, **options}


def check_outcome(run, call, corruption):
    """Run the corrupted call: a TypeError or ValueError naming the corrupted argument
    (any argument of the call, where the corruption is not ``named``); a result only
    where the corruption may leave the call valid. Any other exception propagates."""
    try:
        run()
    except (TypeError, ValueError) as error:
        message = str(error)
        if corruption.named:
            assert _names(message, corruption.name), (corruption, message)
        else:
            assert any(_names(message, n) for n in call.names()), (corruption, message)
        return
    assert not corruption.invalid, f"an invalid call was accepted: {corruption}"


def _names(message, name):
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message) is not None
