"""Every array argument and every scalar option of every public core function: the wrong
kind is a TypeError naming the argument, a value out of range a ValueError naming it.

(The adapters' functions and layers: ``test_argument_errors_torch.py`` and
``test_argument_errors_chainer.py``; random invalid calls: ``test_fuzz_invalid_calls.py``.)
"""

from __future__ import annotations

import re

import numpy
import pytest

import cudeform
from tests.argument_tables import (
    REAL_OPTIONS, WRONG_KIND_OPTIONS, array_cases, call_with, check_wrong_kind_option,
    option_cases, run_valid_calls,
)


def _conv():
    arrays = dict(input=numpy.zeros((1, 2, 5, 5)), offset=numpy.zeros((1, 18, 3, 3)),
                  weight=numpy.zeros((2, 2, 3, 3)), bias=numpy.zeros(2),
                  mask=numpy.zeros((1, 9, 3, 3)))
    return arrays, dict(stride=1, padding=0, dilation=1)


def _roi_pool():
    arrays = dict(input=numpy.zeros((1, 2, 5, 5)), rois=numpy.array([[0, 0, 0, 4, 4.]]),
                  offset=numpy.zeros((1, 2, 2, 2)))
    return arrays, dict(output_size=2, spatial_scale=0.5, sampling_ratio=1, gamma=0.1)


def _psroi_pool():
    arrays = dict(input=numpy.zeros((1, 8, 5, 5)), rois=numpy.array([[0, 0, 0, 4, 4.]]),
                  offset=numpy.zeros((1, 2, 2, 2)))
    options = dict(output_dim=2, group_size=2, pooled_size=2, part_size=2, sample_per_part=2,
                   spatial_scale=0.5, trans_std=0.1)
    return arrays, options


def _backward(valid, output_shape):
    def call():
        arrays, options = valid()
        return dict(grad_output=numpy.zeros(output_shape), **arrays), options
    return call


# name -> (function, valid call, optional arrays)
FUNCTIONS = {
    "deform_conv2d": (cudeform.deform_conv2d, _conv, ("bias", "mask")),
    "deform_conv2d_backward": (cudeform.deform_conv2d_backward,
                               _backward(_conv, (1, 2, 3, 3)), ("bias", "mask")),
    "deform_roi_pool": (cudeform.deform_roi_pool, _roi_pool, ("offset",)),
    "deform_roi_pool_backward": (cudeform.deform_roi_pool_backward,
                                 _backward(_roi_pool, (1, 2, 2, 2)), ("offset",)),
    "deform_psroi_pool": (cudeform.deform_psroi_pool, _psroi_pool, ("offset",)),
    "deform_psroi_pool_backward": (cudeform.deform_psroi_pool_backward,
                                   _backward(_psroi_pool, (1, 2, 2, 2)), ("offset",)),
}


def test_every_valid_call_runs():
    run_valid_calls(FUNCTIONS)


@pytest.mark.parametrize("function, argument, optional", list(array_cases(FUNCTIONS)))
def test_an_array_of_the_wrong_kind_names_it(function, argument, optional):
    array = FUNCTIONS[function][1]()[0][argument]
    junk = [array.tolist(), 1.0, "input", numpy.float64(1)] + [None] * (not optional)
    for value in junk:
        kind = type(value).__name__ if type(value).__module__ == "builtins" else \
            f"{type(value).__module__}.{type(value).__name__}"
        with pytest.raises(TypeError, match=rf"^{argument} must be a numpy.ndarray or "
                                            rf"cupy.ndarray, got {re.escape(kind)}$"):
            call_with(FUNCTIONS, function, **{argument: value})


@pytest.mark.parametrize("function, argument, optional", list(array_cases(FUNCTIONS)))
@pytest.mark.parametrize("dtype", [object, numpy.int32, numpy.int64, numpy.complex128,
                                   numpy.bool_, numpy.float16, numpy.str_])
def test_an_unsupported_dtype_is_named_as_such(function, argument, optional, dtype):
    # Not as a mix of dtypes ("offset has dtype float64 but input has dtype object").
    bad = FUNCTIONS[function][1]()[0][argument].astype(dtype)
    with pytest.raises(TypeError, match=rf"^{argument} has dtype {re.escape(str(bad.dtype))}, "
                                        r"which NumPy \(CPU\) arrays do not support; "
                                        r"expected one of float32, float64$"):
        call_with(FUNCTIONS, function, **{argument: bad})


@pytest.mark.parametrize("function, option", list(option_cases(FUNCTIONS)))
@pytest.mark.parametrize("value", WRONG_KIND_OPTIONS + [[1.0, 1.0]])
def test_an_option_of_the_wrong_kind_names_it(function, option, value):
    check_wrong_kind_option(FUNCTIONS, function, option, value)


def _out_of_range(option):
    """Bad values of ``option`` and their errors: NaN is not an int (TypeError); out of
    range is a ValueError."""
    nan, inf = float("nan"), float("inf")
    if option == "spatial_scale":
        return [(nan, ValueError), (inf, ValueError), (0, ValueError), (-1, ValueError)]
    if option in ("gamma", "trans_std"):  # any finite number
        return [(nan, ValueError), (-inf, ValueError), (10**400, ValueError)]
    return [(nan, TypeError), (-1, ValueError), (2**31, ValueError)]


@pytest.mark.parametrize("function, option, value, error", [
    (name, option, value, error) for name, option in option_cases(FUNCTIONS)
    for value, error in _out_of_range(option)])
def test_an_option_out_of_range_names_it(function, option, value, error):
    with pytest.raises(error, match=rf"^{option} is not valid: expected "):
        call_with(FUNCTIONS, function, **{option: value})


@pytest.mark.parametrize("function, option", [
    (name, option) for name, option in option_cases(FUNCTIONS) if option not in REAL_OPTIONS])
def test_a_bool_where_an_int_goes_is_a_type_error(function, option):
    # As set_workspace_limit rejects bools: True is not an int option's 1.
    with pytest.raises(TypeError, match=rf"^{option} is not valid: expected .*, got bool True$"):
        call_with(FUNCTIONS, function, **{option: True})
    with pytest.raises(TypeError, match=r"^nbytes must be an int number of bytes or None, got "
                                        r"bool True$"):
        cudeform.set_workspace_limit(True)


def test_a_real_option_rejects_bools_too():
    for option in ("spatial_scale", "gamma"):
        with pytest.raises(TypeError, match=rf"^{option} is not valid: expected a "
                                            rf"(positive|finite) number, got bool False$"):
            call_with(FUNCTIONS, "deform_roi_pool", **{option: False})
