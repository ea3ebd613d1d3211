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


def _conv():
    arrays = dict(input=numpy.zeros((1, 2, 5, 5)), offset=numpy.zeros((1, 18, 3, 3)),
                  weight=numpy.zeros((2, 2, 3, 3)), bias=numpy.zeros(2),
                  mask=numpy.zeros((1, 9, 3, 3)))
    return arrays, dict(stride=1, padding=0, dilation=1), (1, 2, 3, 3)


def _roi_pool():
    arrays = dict(input=numpy.zeros((1, 2, 5, 5)), rois=numpy.array([[0, 0, 0, 4, 4.]]),
                  offset=numpy.zeros((1, 2, 2, 2)))
    return arrays, dict(output_size=2, spatial_scale=0.5, sampling_ratio=1, gamma=0.1), \
        (1, 2, 2, 2)


def _psroi_pool():
    arrays = dict(input=numpy.zeros((1, 8, 5, 5)), rois=numpy.array([[0, 0, 0, 4, 4.]]),
                  offset=numpy.zeros((1, 2, 2, 2)))
    options = dict(output_dim=2, group_size=2, pooled_size=2, part_size=2, sample_per_part=2,
                   spatial_scale=0.5, trans_std=0.1)
    return arrays, options, (1, 2, 2, 2)


# (function, valid call, optional arrays, whether it takes grad_output)
FUNCTIONS = {
    "deform_conv2d": (cudeform.deform_conv2d, _conv, ("bias", "mask"), False),
    "deform_conv2d_backward": (cudeform.deform_conv2d_backward, _conv, ("bias", "mask"), True),
    "deform_roi_pool": (cudeform.deform_roi_pool, _roi_pool, ("offset",), False),
    "deform_roi_pool_backward": (cudeform.deform_roi_pool_backward, _roi_pool, ("offset",),
                                 True),
    "deform_psroi_pool": (cudeform.deform_psroi_pool, _psroi_pool, ("offset",), False),
    "deform_psroi_pool_backward": (cudeform.deform_psroi_pool_backward, _psroi_pool,
                                   ("offset",), True),
}


def _call(name):
    function, valid, optional, backward = FUNCTIONS[name]
    arrays, options, output_shape = valid()
    if backward:
        arrays = dict(grad_output=numpy.zeros(output_shape), **arrays)
    return function, arrays, options, optional


def _arrays_of_every_function():
    for name in FUNCTIONS:
        _, arrays, _, optional = _call(name)
        for argument in arrays:
            yield name, argument, argument in optional


def _options_of_every_function():
    for name in FUNCTIONS:
        _, _, options, _ = _call(name)
        for option in options:
            yield name, option


def test_every_valid_call_runs():  # so that each error below comes from its one change
    for name in FUNCTIONS:
        function, arrays, options, _ = _call(name)
        function(**arrays, **options)


@pytest.mark.parametrize("function, argument, optional", list(_arrays_of_every_function()))
def test_an_array_of_the_wrong_kind_names_it(function, argument, optional):
    run, arrays, options, _ = _call(function)
    junk = [arrays[argument].tolist(), 1.0, "input", numpy.float64(1)] + [None] * (not optional)
    for value in junk:
        kind = type(value).__name__ if type(value).__module__ == "builtins" else \
            f"{type(value).__module__}.{type(value).__name__}"
        with pytest.raises(TypeError, match=rf"^{argument} must be a numpy.ndarray or "
                                            rf"cupy.ndarray, got {re.escape(kind)}$"):
            run(**{**arrays, argument: value}, **options)


@pytest.mark.parametrize("function, argument, optional", list(_arrays_of_every_function()))
@pytest.mark.parametrize("dtype", [object, numpy.int32, numpy.int64, numpy.complex128,
                                   numpy.bool_, numpy.float16, numpy.str_])
def test_an_unsupported_dtype_is_named_as_such(function, argument, optional, dtype):
    # Not as a mix of dtypes ("offset has dtype float64 but input has dtype object").
    run, arrays, options, _ = _call(function)
    bad = arrays[argument].astype(dtype)
    with pytest.raises(TypeError, match=rf"^{argument} has dtype {re.escape(str(bad.dtype))}, "
                                        r"which NumPy \(CPU\) arrays do not support; "
                                        r"expected one of float32, float64$"):
        run(**{**arrays, argument: bad}, **options)


@pytest.mark.parametrize("function, option", list(_options_of_every_function()))
@pytest.mark.parametrize("value", ["0.5", None, b"1", [1.0, 1.0]])
def test_an_option_of_the_wrong_kind_names_it(function, option, value):
    run, arrays, options, _ = _call(function)
    if option == "part_size" and value is None:
        value = "2"  # None is part_size's default
    given = "None" if value is None else f"{type(value).__name__} {value!r}"
    with pytest.raises(TypeError, match=rf"^{option} is not valid: expected .*, got "
                                        rf"{re.escape(given)}$"):
        run(**arrays, **{**options, option: value})


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
    (name, option, value, error) for name, option in _options_of_every_function()
    for value, error in _out_of_range(option)])
def test_an_option_out_of_range_names_it(function, option, value, error):
    run, arrays, options, _ = _call(function)
    with pytest.raises(error, match=rf"^{option} is not valid: expected "):
        run(**arrays, **{**options, option: value})


@pytest.mark.parametrize("function, option", [
    (name, option) for name, option in _options_of_every_function()
    if option not in ("spatial_scale", "gamma", "trans_std")])
def test_a_bool_where_an_int_goes_is_a_type_error(function, option):
    # As set_workspace_limit rejects bools: True is not an int option's 1.
    run, arrays, options, _ = _call(function)
    with pytest.raises(TypeError, match=rf"^{option} is not valid: expected .*, got bool True$"):
        run(**arrays, **{**options, option: True})
    with pytest.raises(TypeError, match=r"^nbytes must be an int number of bytes or None, got "
                                        r"bool True$"):
        cudeform.set_workspace_limit(True)


def test_a_real_option_rejects_bools_too():
    run, arrays, options, _ = _call("deform_roi_pool")
    for option in ("spatial_scale", "gamma"):
        with pytest.raises(TypeError, match=rf"^{option} is not valid: expected a "
                                            rf"(positive|finite) number, got bool False$"):
            run(**arrays, **{**options, option: False})
