"""The NumPy path's scatter-add primitives against plain loops, and the two column
orders of the convolution's GEMM against each other and finite differences."""

from __future__ import annotations

import numpy
import pytest

import cudeform
from cudeform._cpu import columns, scatter
from tests.helpers import assert_close, conv_case, numerical_gradient, split_case


def loop_sums(keys, sources, rows, weights):
    """The oracle: one Python loop over the elements, in float64."""
    sums = {}
    for key, row, weight in zip(keys.tolist(), rows.tolist(), weights.astype(numpy.float64)):
        total = sums.setdefault(key, numpy.zeros((weights.shape[1], sources.shape[1])))
        total += weight[:, None] * sources[row].astype(numpy.float64)[None, :]
    unique = numpy.array(sorted(sums), dtype=numpy.int64)
    return unique, numpy.array([sums[k] for k in sorted(sums)]).reshape(-1, *weights.shape[1:],
                                                                          sources.shape[1])


def random_elements(rng, m, key_count, dtype=numpy.float64, width=5, j=3):
    sources = rng.standard_normal((40, width)).astype(dtype)
    sources[-1] = 0
    keys = rng.integers(0, key_count, m)
    rows = rng.integers(0, sources.shape[0] - 1, m)
    weights = rng.standard_normal((m, j)).astype(dtype)
    return keys, sources, rows, weights


@pytest.mark.parametrize("m, key_count", [
    (1, 1), (7, 3), (200, 150),  # mostly one element per key
    (300, 20),  # several pieces per key, added in passes
    (2000, 2),  # hundreds of elements on one key: the pieces are summed recursively
])
def test_sums_by_key_match_a_loop(m, key_count):
    rng = numpy.random.default_rng(m)
    keys, sources, rows, weights = random_elements(rng, m, key_count)
    unique, sums = scatter.sums_by_key(keys, sources, rows, weights)
    expected_unique, expected = loop_sums(keys, sources, rows, weights)
    numpy.testing.assert_array_equal(unique, expected_unique)
    assert sums.shape == expected.shape and sums.dtype == sources.dtype
    assert_close(sums, expected)


def test_sums_by_key_huge_keys_and_no_elements():
    rng = numpy.random.default_rng(1)
    keys, sources, rows, weights = random_elements(rng, 50, 4)
    keys = keys + 2**61  # too big for the packed sort key: the stable argsort is used
    unique, sums = scatter.sums_by_key(keys, sources, rows, weights)
    expected_unique, expected = loop_sums(keys, sources, rows, weights)
    numpy.testing.assert_array_equal(unique, expected_unique)
    assert_close(sums, expected)
    unique, sums = scatter.sums_by_key(keys[:0], sources, rows[:0], weights[:0])
    assert unique.shape == (0,) and sums.shape == (0, 3, 5)


def test_sums_by_key_is_reproducible_and_keeps_non_finite_values_local():
    rng = numpy.random.default_rng(2)
    keys, sources, rows, weights = random_elements(rng, 3000, 30, dtype=numpy.float32)
    sources[3] = numpy.nan
    first = scatter.sums_by_key(keys, sources, rows, weights)
    again = scatter.sums_by_key(keys.copy(), sources.copy(), rows.copy(), weights.copy())
    numpy.testing.assert_array_equal(first[1], again[1])
    # Only the keys that read row 3 are NaN; padding slots read the zero row.
    poisoned = numpy.isin(first[0], keys[rows == 3])
    assert poisoned.any() and not poisoned.all()
    assert numpy.isnan(first[1][poisoned]).any(axis=(1, 2)).all()
    assert numpy.isfinite(first[1][~poisoned]).all()


@pytest.mark.parametrize("m, key_count", [(1, 1), (200, 150), (300, 7), (2000, 2)])
def test_dots_by_key_match_a_loop(m, key_count):
    rng = numpy.random.default_rng(m + 1)
    keys, sources, rows, _ = random_elements(rng, m, key_count)
    vectors = rng.standard_normal((key_count, sources.shape[1]))
    dots = scatter.dots_by_key(keys, sources, rows, vectors)
    expected = [float(sources[r] @ vectors[k]) for k, r in zip(keys, rows)]
    assert dots.shape == (m,)
    assert_close(dots, numpy.array(expected))
    assert scatter.dots_by_key(keys[:0], sources, rows[:0], vectors).shape == (0,)


def test_merge_by_key_sums_rows_in_order():
    keys = numpy.array([5, 2, 5, 9, 2, 5])
    values = numpy.arange(12.0).reshape(6, 2)
    unique, sums = scatter.merge_by_key(keys, values)
    numpy.testing.assert_array_equal(unique, [2, 5, 9])
    numpy.testing.assert_array_equal(sums, [[2 + 8, 3 + 9], [0 + 4 + 10, 1 + 5 + 11], [6, 7]])


@pytest.fixture(params=[True, False], ids=["weight-rearranged", "columns-rearranged"])
def column_order(request, monkeypatch):
    monkeypatch.setattr(columns, "rearranges_weight", lambda g: request.param)
    return request.param


@pytest.mark.parametrize("options", [
    dict(),
    dict(in_channels=4, out_channels=6, groups=2, offset_groups=4, size=(3, 4)),
    dict(in_channels=6, out_channels=6, groups=3, offset_groups=2, kernel=(3, 2),
         stride=(2, 1), padding=(1, 0), dilation=(2, 1), size=(5, 4)),
])
def test_both_column_orders_match_finite_differences(options, column_order):
    rng = numpy.random.default_rng(8)
    case = conv_case(rng, batch=2, size=options.pop("size", (4, 5)), off_kinks=True, **options)
    arrays, opts = split_case(case)
    grad_output = rng.standard_normal(cudeform.deform_conv2d(**case).shape)
    grads = cudeform.deform_conv2d_backward(grad_output, **arrays, **opts)

    def loss():
        return float((cudeform.deform_conv2d(**arrays, **opts) * grad_output).sum())

    for name in ("input", "offset", "weight", "mask"):
        numeric = numerical_gradient(loss, arrays[name])
        numpy.testing.assert_allclose(getattr(grads, name), numeric, rtol=1e-6, atol=1e-6,
                                      err_msg=name)


def test_column_orders_agree_and_the_choice_follows_the_sizes(monkeypatch):
    rng = numpy.random.default_rng(9)
    case = conv_case(rng, batch=1, in_channels=4, out_channels=64, size=(3, 3))
    arrays, opts = split_case(case)
    grad_output = rng.standard_normal((1, 64, 3, 3))
    results = {}
    for choice in (True, False):
        monkeypatch.setattr(columns, "rearranges_weight", lambda g, choice=choice: choice)
        results[choice] = (cudeform.deform_conv2d(**case),
                           cudeform.deform_conv2d_backward(grad_output, **arrays, **opts))
    assert_close(results[True][0], results[False][0])
    for a, b in zip(results[True][1], results[False][1]):
        assert_close(a, b)
    monkeypatch.undo()
    from cudeform._shapes import deform_conv2d_geometry

    small_map = deform_conv2d_geometry((1, 4, 3, 3), (1, 18, 3, 3), (64, 4, 3, 3), padding=1)
    large_map = deform_conv2d_geometry((2, 4, 8, 8), (2, 18, 8, 8), (64, 4, 3, 3), padding=1)
    assert not columns.rearranges_weight(small_map)  # 64 outputs > 9 pixels
    assert columns.rearranges_weight(large_map)  # 64 outputs <= 128 pixels
