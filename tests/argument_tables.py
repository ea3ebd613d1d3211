"""Table-driven argument-error checks shared by the core's and the adapters' tests.

A table maps a function's name to ``(function, valid, optional)``: ``valid()`` returns
``(arrays, options)`` of a valid call (keyword arguments), ``optional`` names the array
arguments that may be None. Layers map to the keyword arguments they need.
"""

from __future__ import annotations

import inspect
import re

import pytest

# Bad kinds of a scalar option: each is a TypeError naming it.
WRONG_KIND_OPTIONS = ["0.5", None, b"1"]
# Out-of-range values of a scalar option, by option: each is a ValueError naming it.
REAL_OPTIONS = ("spatial_scale", "gamma", "trans_std")


def array_cases(table):
    """``(function name, argument, optional)`` for every array argument in ``table``."""
    for name, (_, valid, optional) in table.items():
        for argument in valid()[0]:
            yield name, argument, argument in optional


def option_cases(table):
    """``(function name, option)`` for every scalar option in ``table``."""
    for name, (_, valid, _) in table.items():
        for option in valid()[1]:
            yield name, option


def run_valid_calls(table):
    """Every valid call runs, so that each error a test provokes comes from its change."""
    for run, valid, _ in table.values():
        arrays, options = valid()
        run(**arrays, **options)


def call_with(table, function, **changes):
    """Call ``function`` of ``table`` with its valid arguments and ``changes``."""
    run, valid, _ = table[function]
    arrays, options = valid()
    arguments = {**arrays, **options, **changes}
    return run(**arguments)


def check_wrong_kind_option(table, function, option, value):
    """A string, None or bytes where a number goes: a TypeError naming ``option``."""
    if option == "part_size" and value is None:
        value = "2"  # None is part_size's default
    given = "None" if value is None else f"{type(value).__name__} {value!r}"
    with pytest.raises(TypeError, match=rf"^{option} is not valid: .*, got "
                                        rf"{re.escape(given)}$"):
        call_with(table, function, **{option: value})


def check_nan_or_negative_option(table, function, option):
    """NaN for a real option, -1 for an int one: a ValueError naming ``option``."""
    value = float("nan") if option in REAL_OPTIONS else -1
    with pytest.raises(ValueError, match=rf"^{option} is not valid: expected "):
        call_with(table, function, **{option: value})


def layer_argument_cases(layers, skip=()):
    """``pytest.param(layer, required, argument)`` for every constructor argument."""
    for layer, required in layers.items():
        for name in inspect.signature(layer).parameters:
            if name not in skip:
                yield pytest.param(layer, required, name, id=f"{layer.__qualname__}-{name}")


def check_layer_argument(layer, required, argument):
    """A string, bytes or an object for ``argument``: a TypeError naming it; and None
    too where None is not its default."""
    layer(**required)
    bad = ["1", b"1", object()]
    if inspect.signature(layer).parameters[argument].default is not None:
        bad.append(None)
    for value in bad:
        with pytest.raises(TypeError, match=rf"^{argument} is not valid: expected "):
            layer(**{**required, argument: value})
