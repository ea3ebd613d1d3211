"""deform_psroi_pool on the NumPy path: a loop oracle, identities, gradients and errors.

The host run of the CUDA kernels is in test_kernels_host_psroi_pool.py.
"""

from __future__ import annotations

import decimal
import itertools
import math

import numpy
import pytest

import cudeform
from cudeform._cpu.deform_psroi_pool import round_half_away
from tests.helpers import assert_close, dtypes, numerical_gradient
from tests.psroi_cases import (
    PSROI_CASES as CASES, bad_rois, huge_rois, psroi_case, random_rois, smooth_case,
)

F64 = numpy.dtype(numpy.float64)


# --- the oracle: OPS_SPEC section 3 as loops -----------------------------------------------


def c_round(x):
    """C ``round``: halves away from zero (decimal's ROUND_HALF_UP), exact."""
    return float(decimal.Decimal(x).quantize(decimal.Decimal(1), decimal.ROUND_HALF_UP))


def bilinear(plane, h, w):
    """Value at a clamped position ``(h, w)``, its four ``(corner, weight)`` pairs and its
    slopes ``(d/dh, d/dw)`` (0 along an axis where floor == ceil)."""
    y0, y1, x0, x1 = math.floor(h), math.ceil(h), math.floor(w), math.ceil(w)
    ly, lx = h - y0, w - x0
    v00, v01, v10, v11 = plane[y0, x0], plane[y0, x1], plane[y1, x0], plane[y1, x1]
    corners = (((y0, x0), (1 - ly) * (1 - lx)), ((y0, x1), (1 - ly) * lx),
               ((y1, x0), ly * (1 - lx)), ((y1, x1), ly * lx))
    value = sum(weight * plane[corner] for corner, weight in corners)
    slopes = ((1 - lx) * (v10 - v00) + lx * (v11 - v01), (1 - ly) * (v01 - v00) + ly * (v11 - v10))
    return value, corners, slopes


def oracle(input, rois, offset, grad_output, *, output_dim, group_size, pooled_size,
           part_size, sample_per_part, spatial_scale, trans_std):
    """Output and gradients (input, offset) of OPS_SPEC section 3, one sample at a time."""
    batch, _, height, width = input.shape
    P, G, S = pooled_size, group_size, sample_per_part
    part = P if part_size is None else part_size
    classes = 1 if offset is None else offset.shape[1] // 2
    output = numpy.zeros((rois.shape[0], output_dim, P, P))
    grad_input = numpy.zeros(input.shape)
    grad_offset = None if offset is None else numpy.zeros(offset.shape)
    for r, (index, x1, y1, x2, y2) in enumerate(rois.tolist()):
        if not (-1 < index < batch and all(map(math.isfinite, (x1, y1, x2, y2)))):
            continue
        x1s, y1s = c_round(x1) * spatial_scale - 0.5, c_round(y1) * spatial_scale - 0.5
        x2s = (c_round(x2) + 1) * spatial_scale - 0.5
        y2s = (c_round(y2) + 1) * spatial_scale - 0.5
        roi_w, roi_h = max(x2s - x1s, 0.1), max(y2s - y1s, 0.1)
        bin_w, bin_h = roi_w / P, roi_h / P
        for ctop, ph, pw in itertools.product(range(output_dim), range(P), range(P)):
            cls = ctop // (output_dim // classes)
            part_h, part_w = math.floor(ph / P * part), math.floor(pw / P * part)
            tx = ty = 0.0
            if offset is not None:
                tx = offset[r, 2 * cls, part_h, part_w] * trans_std
                ty = offset[r, 2 * cls + 1, part_h, part_w] * trans_std
            wstart = pw * bin_w + x1s + tx * roi_w
            hstart = ph * bin_h + y1s + ty * roi_h
            gw = min(max(math.floor(pw * G / P), 0), G - 1)
            gh = min(max(math.floor(ph * G / P), 0), G - 1)
            channel = (ctop * G + gh) * G + gw
            points = []
            for ih, iw in itertools.product(range(S), range(S)):
                w, h = wstart + iw * (bin_w / S), hstart + ih * (bin_h / S)
                if w < -0.5 or w > width - 0.5 or h < -0.5 or h > height - 0.5:
                    continue  # skipped: not counted in the mean
                points.append((min(max(h, 0), height - 1), min(max(w, 0), width - 1)))
            for h, w in points:
                value, corners, (d_h, d_w) = bilinear(input[int(index), channel], h, w)
                output[r, ctop, ph, pw] += value / len(points)
                g = grad_output[r, ctop, ph, pw] / len(points)
                for corner, weight in corners:
                    grad_input[(int(index), channel, *corner)] += g * weight
                if offset is not None:
                    grad_offset[r, 2 * cls, part_h, part_w] += g * d_w * trans_std * roi_w
                    grad_offset[r, 2 * cls + 1, part_h, part_w] += g * d_h * trans_std * roi_h
    return output, grad_input, grad_offset


@pytest.mark.parametrize("name", CASES)
def test_matches_loop_oracle(name):
    rng = numpy.random.default_rng(100 + list(CASES).index(name))
    arrays, options = psroi_case(rng, **CASES[name])
    output = cudeform.deform_psroi_pool(**arrays, **options)
    grad_output = rng.standard_normal(output.shape)
    grads = cudeform.deform_psroi_pool_backward(grad_output, **arrays, **options)
    expected = oracle(**arrays, grad_output=grad_output, **options)
    assert output.shape == expected[0].shape and output.dtype == F64
    assert_close(output, expected[0], err_msg="output")
    assert_close(grads.input, expected[1], err_msg="grad input")
    if arrays["offset"] is None:
        assert grads.offset is None
    else:
        assert_close(grads.offset, expected[2], err_msg="grad offset")
    if name == "basic":  # the case reaches both sides of every border test
        assert (output != 0).any() and (output == 0).any()


def test_round_half_away_from_zero():
    values = numpy.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 2.4999, -0.49, 7.0, 2.0**52 + 1])
    assert_close(round_half_away(values), [c_round(v) for v in values])
    # floor(|x| + 0.5) gets these wrong: |x| + 0.5 rounds up to the next integer.
    assert round_half_away(numpy.float32(0.49999997)) == 0
    assert round_half_away(numpy.float64(0.49999999999999994)) == 0
    assert round_half_away(numpy.float32(2.0**23 + 1)) == 2.0**23 + 1


# --- identities ----------------------------------------------------------------------------


def plain_psroi_pool(input, rois, *, output_dim, group_size, pooled_size, sample_per_part,
                     spatial_scale):
    """Position-sensitive RoI pooling (R-FCN) with MXNet's sampling and no deformation,
    with whole-array indexing per RoI."""
    _, _, height, width = input.shape
    P, G, S = pooled_size, group_size, sample_per_part
    bins = numpy.arange(P)
    group = numpy.minimum(bins * G // P, G - 1)
    channel = (numpy.arange(output_dim)[:, None, None] * G + group[:, None]) * G + group
    output = numpy.zeros((rois.shape[0], output_dim, P, P))
    for r, (index, *corners) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (c_round(v) for v in corners)
        start = numpy.array([y1, x1]) * spatial_scale - 0.5
        size = numpy.maximum((numpy.array([y2, x2]) + 1) * spatial_scale - 0.5 - start, 0.1)
        # Sample positions per axis, (P, S): bin start plus sample step.
        ys, xs = (bins[:, None] * (s / P) + a + numpy.arange(S) * (s / P / S)
                  for a, s in zip(start, size))
        inside_y, inside_x = (ys >= -0.5) & (ys <= height - 0.5), (xs >= -0.5) & (xs <= width - 0.5)
        ys, xs = numpy.clip(ys, 0, height - 1), numpy.clip(xs, 0, width - 1)
        ly, lx = ys - numpy.floor(ys), xs - numpy.floor(xs)
        rows = (numpy.floor(ys).astype(int), numpy.ceil(ys).astype(int))
        cols = (numpy.floor(xs).astype(int), numpy.ceil(xs).astype(int))
        image = input[int(index)]
        total = 0
        for a, wy in ((0, 1 - ly), (1, ly)):
            for b, wx in ((0, 1 - lx), (1, lx)):
                # (output_dim, ph, pw, ih, iw)
                values = image[channel[:, :, :, None, None], rows[a][None, :, None, :, None],
                               cols[b][None, None, :, None, :]]
                weight = (wy * inside_y)[:, None, :, None] * (wx * inside_x)[None, :, None, :]
                total = total + (values * weight).sum(axis=(-2, -1))
        count = inside_y.sum(axis=1)[:, None] * inside_x.sum(axis=1)[None, :]
        output[r] = numpy.where(count > 0, total / numpy.maximum(count, 1), 0)
    return output


@pytest.mark.parametrize("name", ["basic", "group3-pooled7-samples1", "scale1/16-samples4",
                                  "classes4-part3-pooled4-group2"])
def test_zero_offset_is_position_sensitive_pooling(name):
    rng = numpy.random.default_rng(200 + list(CASES).index(name))
    arrays, options = psroi_case(rng, **CASES[name])
    zero = dict(arrays, offset=numpy.zeros_like(arrays["offset"]))
    without = dict(arrays, offset=None)
    result = cudeform.deform_psroi_pool(**zero, **options)
    # Equal to rounding: with an offset of several classes the NumPy path reads rows of
    # one class's channels, without one rows of all channels, and BLAS sums each width
    # its own way.
    assert_close(result, cudeform.deform_psroi_pool(**without, **options))
    plain_options = {k: v for k, v in options.items() if k not in ("part_size", "trans_std")}
    assert_close(result, plain_psroi_pool(arrays["input"], arrays["rois"], **plain_options))


def test_whole_pixel_offsets_move_the_roi():
    """An offset of k / (trans_std * roi_w) moves the bins by k pixels: the result is the
    pooling of the RoI moved by k. roi_w = 8 and roi_h = 4 differ and every number is
    exact, so swapped dx/dy or roi_w/roi_h would show."""
    rng = numpy.random.default_rng(300)
    arrays, options = psroi_case(rng, output_dim=4, num_classes=2, pooled_size=4,
                                 part_size=2, group_size=2, size=(9, 12), trans_std=0.25)
    count = arrays["rois"].shape[0]
    starts = rng.integers(-3, 10, (count, 2)).astype(float)
    arrays["rois"][:, 1:] = numpy.concatenate([starts, starts + [7, 3]], axis=1)
    moves = rng.integers(-4, 5, (count, 2, 2))  # (roi, class, (x, y))
    arrays["offset"][:] = (moves / (0.25 * numpy.array([8, 4])))[..., None, None].reshape(
        count, 4, 1, 1)
    result = cudeform.deform_psroi_pool(**arrays, **options)
    for cls in range(2):
        moved = arrays["rois"].copy()
        moved[:, [1, 3]] += moves[:, cls, :1]
        moved[:, [2, 4]] += moves[:, cls, 1:]
        expected = cudeform.deform_psroi_pool(arrays["input"], moved, None, **options)
        # To rounding: the two calls read rows of different widths (see above).
        assert_close(result[:, 2 * cls:2 * cls + 2], expected[:, 2 * cls:2 * cls + 2])


def test_roi_rounding_and_batch_truncation():
    """RoI corners round halves away from zero, batch indices truncate toward zero."""
    rng = numpy.random.default_rng(400)
    arrays, options = psroi_case(rng, rois=4, size=(8, 9))
    rounded = numpy.array([[0, 3, -3, 6, 2], [1, -1, 0, 2, 5], [1, 0, 0, 0, 1], [0, 2, 2, 7, 7]],
                          dtype=float)
    arrays["rois"] = rounded
    expected = cudeform.deform_psroi_pool(**arrays, **options)
    arrays["rois"] = numpy.array([[-0.9, 2.5, -2.5, 5.6, 1.5], [1.99, -0.5, 0.49, 2.4, 4.5],
                                  [1.5, -0.4, 0.4999, 0.4999, 0.5], [0.5, 1.5, 2.4, 6.5, 7.4]])
    numpy.testing.assert_array_equal(cudeform.deform_psroi_pool(**arrays, **options), expected)


# --- gradients -----------------------------------------------------------------------------

SMOOTH_CASES = {
    "basic": dict(),
    "classes2-part2-pooled3-cells2": dict(output_dim=4, num_classes=2, part_size=2,
                                          group_size=1, sample_per_part=1, cells=2),
    "classes2-part3-pooled4": dict(output_dim=2, num_classes=2, pooled_size=4, part_size=3,
                                   group_size=1),
}


@pytest.mark.parametrize("name", SMOOTH_CASES)
def test_gradients_match_central_differences(name):
    rng = numpy.random.default_rng(500 + list(SMOOTH_CASES).index(name))
    arrays, options = smooth_case(rng, **SMOOTH_CASES[name])
    output = cudeform.deform_psroi_pool(**arrays, **options)
    grad_output = rng.standard_normal(output.shape)
    grads = cudeform.deform_psroi_pool_backward(grad_output, **arrays, **options)

    def loss():
        return float((cudeform.deform_psroi_pool(**arrays, **options) * grad_output).sum())

    # The loss is linear in each single element (bilinear in h, w separately, and no
    # sample crosses an integer or a border under the step), so central differences
    # are exact up to rounding and a large step keeps rounding under the tolerance.
    for field in ("input", "offset"):
        expected = numerical_gradient(loss, arrays[field], step=1e-3)
        assert_close(getattr(grads, field), expected, err_msg=field)
    assert (grads.offset != 0).mean() > 0.5  # most offsets are used and move samples


# --- bad RoIs, empty inputs ----------------------------------------------------------------


@dtypes
def test_bad_rois_pool_to_zero_with_zero_gradients(dtype):
    rng = numpy.random.default_rng(600)
    arrays, options = psroi_case(rng, num_classes=2, output_dim=2, dtype=dtype)
    good = arrays["rois"].shape[0]
    bad = bad_rois(rng, batch=2, height=7, width=8).astype(dtype)
    mixed = dict(arrays, rois=numpy.concatenate([arrays["rois"], bad]),
                 offset=rng.uniform(-1, 1, (good + bad.shape[0], 4, 3, 3)).astype(dtype))
    mixed["offset"][:good] = arrays["offset"]
    with numpy.errstate(all="raise"):  # no warning from a NaN or an infinity either
        output = cudeform.deform_psroi_pool(**mixed, **options)
        grad_output = rng.standard_normal(output.shape).astype(dtype)
        grads = cudeform.deform_psroi_pool_backward(grad_output, **mixed, **options)
    assert (output[good:] == 0).all() and (grads.offset[good:] == 0).all()
    expected = cudeform.deform_psroi_pool(**arrays, **options)
    assert_close(output[:good], expected, dtype)
    expected_grads = cudeform.deform_psroi_pool_backward(grad_output[:good], **arrays, **options)
    assert_close(grads.input, expected_grads.input, dtype)
    assert_close(grads.offset[:good], expected_grads.offset, dtype)


def test_huge_rois_stay_finite():
    rng = numpy.random.default_rng(700)
    arrays, options = psroi_case(rng, rois=4, num_classes=None, pooled_size=2)
    arrays["rois"] = huge_rois(batch=2)
    output = cudeform.deform_psroi_pool(**arrays, **options)
    grads = cudeform.deform_psroi_pool_backward(numpy.ones(output.shape), **arrays, **options)
    assert numpy.isfinite(output).all() and numpy.isfinite(grads.input).all()
    assert (output[:2] == 0).all()  # far outside: every sample skipped


@pytest.mark.parametrize("offset", [True, False], ids=["offset", "no-offset"])
def test_empty_rois_and_empty_batch(offset):
    rng = numpy.random.default_rng(800)
    arrays, options = psroi_case(rng, rois=0, num_classes=2 if offset else None, output_dim=2)
    output = cudeform.deform_psroi_pool(**arrays, **options)
    assert output.shape == (0, 2, 3, 3) and output.dtype == F64
    grads = cudeform.deform_psroi_pool_backward(output, **arrays, **options)
    assert grads.input.shape == arrays["input"].shape and not grads.input.any()
    assert (grads.offset is None) if not offset else grads.offset.shape == (0, 4, 3, 3)
    # No image: every RoI's batch index is out of range.
    empty = dict(arrays, input=arrays["input"][:0], rois=random_rois(
        rng, 3, batch=1, height=7, width=8, spatial_scale=1.0))
    if offset:
        empty["offset"] = numpy.ones((3, 4, 3, 3))
    output = cudeform.deform_psroi_pool(**empty, **options)
    assert output.shape == (3, 2, 3, 3) and not output.any()
    grads = cudeform.deform_psroi_pool_backward(numpy.ones(output.shape), **empty, **options)
    assert grads.input.shape == (0, 18, 7, 8)
    assert not offset or not grads.offset.any()


# --- errors --------------------------------------------------------------------------------


def _valid():
    arrays, options = psroi_case(numpy.random.default_rng(900), output_dim=4, num_classes=2,
                                 rois=3, dtype=numpy.float32)
    return arrays, options


@pytest.mark.parametrize("change, match", [
    (dict(rois=numpy.zeros((3, 4), numpy.float32)),
     r"rois.shape is not valid: expected \(R, 5\) rows of \(batch_index, x1, y1, x2, y2\), "
     r"got \(3, 4\)"),
    (dict(rois=numpy.zeros(5, numpy.float32)), r"rois is not valid: expected a 2-D array"),
    (dict(input=numpy.zeros((2, 35, 7, 8), numpy.float32)),
     r"input.shape\[1\] is not valid: expected output_dim\*group_size\*\*2=36, got 35"),
    (dict(input=numpy.zeros((2, 36, 0, 8), numpy.float32)),
     r"input.shape is not valid: expected positive channels, height and width"),
    (dict(offset=numpy.zeros((3, 4, 3, 2), numpy.float32)),
     r"offset.shape is not valid: expected \(3, 4, 3, 3\), got \(3, 4, 3, 2\)"),
    (dict(offset=numpy.zeros((2, 4, 3, 3), numpy.float32)),
     r"offset.shape is not valid: expected \(3, 4, 3, 3\), got \(2, 4, 3, 3\)"),
    (dict(offset=numpy.zeros((3, 5, 3, 3), numpy.float32)),
     r"offset.shape\[1\] is not valid: expected a positive even number 2\*num_classes, got 5"),
    (dict(offset=numpy.zeros((3, 6, 3, 3), numpy.float32)),
     r"offset.shape\[1\] is not valid: num_classes=3 must divide output_dim=4, got 6"),
    (dict(offset=numpy.zeros((3, 4, 3), numpy.float32)), r"offset is not valid: expected a 4-D"),
])
def test_shape_errors_name_the_argument(change, match):
    arrays, options = _valid()
    with pytest.raises(ValueError, match=match):
        cudeform.deform_psroi_pool(**{**arrays, **change}, **options)


@pytest.mark.parametrize("option, value, error, match", [
    ("output_dim", 0, ValueError, r"output_dim is not valid: expected an int >= 1, got 0"),
    ("group_size", -1, ValueError, r"group_size is not valid: expected an int >= 1, got -1"),
    ("pooled_size", 0, ValueError, r"pooled_size is not valid: expected an int >= 1, got 0"),
    ("pooled_size", 2.0, TypeError,
     r"pooled_size is not valid: expected an int >= 1, got float 2.0"),
    ("part_size", 0, ValueError, r"part_size is not valid: expected an int >= 1, got 0"),
    ("sample_per_part", 0, ValueError,
     r"sample_per_part is not valid: expected an int >= 1, got 0"),
    ("sample_per_part", 2**40, ValueError,
     r"sample_per_part is not valid: expected an int <= 2147483647 \(a 32-bit C int\)"),
    ("output_dim", "1", TypeError, r"output_dim is not valid: expected an int >= 1, got str '1'"),
    ("group_size", None, TypeError, r"group_size is not valid: expected an int >= 1, got None"),
    ("spatial_scale", 0.0, ValueError,
     r"spatial_scale is not valid: expected a positive number, got 0.0"),
    ("spatial_scale", -0.0625, ValueError, r"spatial_scale is not valid: expected a positive number"),
    ("spatial_scale", float("inf"), ValueError,
     r"spatial_scale is not valid: expected a positive number"),
    ("spatial_scale", 10**400, ValueError,
     r"spatial_scale is not valid: expected a positive number"),
    ("trans_std", float("nan"), ValueError,
     r"trans_std is not valid: expected a finite number, got nan"),
    ("trans_std", False, TypeError, r"trans_std is not valid: expected a finite number, got bool"),
])
def test_option_errors(option, value, error, match):
    arrays, options = _valid()
    with pytest.raises(error, match=match):
        cudeform.deform_psroi_pool(**arrays, **{**options, option: value})


def test_dtype_and_grad_output_errors():
    arrays, options = _valid()
    with pytest.raises(TypeError, match=r"rois has dtype float64 but input has dtype float32"):
        cudeform.deform_psroi_pool(**{**arrays, "rois": arrays["rois"].astype(numpy.float64)},
                                   **options)
    with pytest.raises(TypeError, match=r"offset has dtype float16, which NumPy \(CPU\) arrays "
                                        r"do not support"):
        cudeform.deform_psroi_pool(
            **{**arrays, "offset": arrays["offset"].astype(numpy.float16)}, **options)
    with pytest.raises(ValueError, match=r"grad_output.shape is not valid: expected "
                                         r"\(3, 4, 3, 3\), got \(3, 4, 3, 2\)"):
        cudeform.deform_psroi_pool_backward(numpy.zeros((3, 4, 3, 2), numpy.float32), **arrays,
                                            **options)
    with pytest.raises(TypeError, match=r"grad_output has dtype float64 but input has dtype"):
        cudeform.deform_psroi_pool_backward(numpy.zeros((3, 4, 3, 3)), **arrays, **options)
