"""deform_roi_pool on the NumPy path: a loop oracle, identities, gradients and errors.

The host run of the CUDA kernels is in test_kernels_host_roi_pool.py, the GPU
run in test_deform_roi_pool_gpu.py.
"""

from __future__ import annotations

import math

import numpy
import pytest

import cudeform
from tests.helpers import assert_close, numerical_gradient
from tests.roi_pool_cases import ROI_POOL_CASES, off_kink_case, roi_pool_case, with_bad_rois


# --- oracles, written from OPS_SPEC section 2 with plain loops ------------------------------


def spec_sample(image, y, x):
    """The RoIAlign rule of OPS_SPEC section 2 at (y, x), for every channel of ``image``."""
    height, width = image.shape[1:]
    if not (-1 <= y <= height and -1 <= x <= width):
        return numpy.zeros(image.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = math.floor(y), math.floor(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    return ((1 - ly) * (1 - lx) * image[:, y_low, x_low] + (1 - ly) * lx * image[:, y_low, x_high]
            + ly * (1 - lx) * image[:, y_high, x_low] + ly * lx * image[:, y_high, x_high])


def loop_oracle(input, rois, offset, *, output_size, spatial_scale, sampling_ratio, gamma):
    """Deformable RoI pooling, one RoI, bin and sample at a time (float64)."""
    ph, pw = output_size
    output = numpy.zeros((len(rois), input.shape[1], ph, pw))
    for r, (index, *corners) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (v * spatial_scale - 0.5 for v in corners)
        if not (math.isfinite(index) and 0 <= math.trunc(index) < len(input)
                and all(math.isfinite(v) for v in (x1, y1, x2, y2))):
            continue  # a bad RoI pools to zeros
        image = input[math.trunc(index)]
        roi_w, roi_h = x2 - x1, y2 - y1
        bin_w, bin_h = roi_w / pw, roi_h / ph
        grid_y = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_h / ph), 0)
        grid_x = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_w / pw), 0)
        for i in range(ph):
            for j in range(pw):
                dx = 0.0 if offset is None else gamma * roi_w * float(offset[r, 0, i, j])
                dy = 0.0 if offset is None else gamma * roi_h * float(offset[r, 1, i, j])
                total = numpy.zeros(input.shape[1])
                for iy in range(grid_y):
                    y = y1 + i * bin_h + dy + (iy + 0.5) * bin_h / grid_y
                    for ix in range(grid_x):
                        x = x1 + j * bin_w + dx + (ix + 0.5) * bin_w / grid_x
                        total += spec_sample(image, y, x)
                output[r, :, i, j] = total / max(grid_y * grid_x, 1)
    return output


def roi_align_oracle(input, rois, *, output_size, spatial_scale, sampling_ratio):
    """RoIAlign, aligned=True, average pooling, in torchvision's loop form (valid RoIs only)."""
    ph, pw = output_size
    height, width = input.shape[2:]
    output = numpy.zeros((len(rois), input.shape[1], ph, pw))
    for r, roi in enumerate(rois):
        image = input[int(roi[0])]
        start_w, start_h = roi[1] * spatial_scale - 0.5, roi[2] * spatial_scale - 0.5
        roi_w = roi[3] * spatial_scale - 0.5 - start_w
        roi_h = roi[4] * spatial_scale - 0.5 - start_h
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / ph)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pw)
        count = max(grid_h * grid_w, 1)
        for i in range(ph):
            for j in range(pw):
                total = numpy.zeros(input.shape[1])
                for iy in range(grid_h):
                    y = start_h + i * roi_h / ph + (iy + 0.5) * roi_h / ph / grid_h
                    for ix in range(grid_w):
                        x = start_w + j * roi_w / pw + (ix + 0.5) * roi_w / pw / grid_w
                        if y < -1.0 or y > height or x < -1.0 or x > width:
                            continue
                        yy, xx = max(y, 0.0), max(x, 0.0)
                        y_low, x_low = int(yy), int(xx)
                        if y_low >= height - 1:
                            y_high = y_low = height - 1
                            yy = float(y_low)
                        else:
                            y_high = y_low + 1
                        if x_low >= width - 1:
                            x_high = x_low = width - 1
                            xx = float(x_low)
                        else:
                            x_high = x_low + 1
                        ly, lx = yy - y_low, xx - x_low
                        hy, hx = 1 - ly, 1 - lx
                        total += (hy * hx * image[:, y_low, x_low] + hy * lx * image[:, y_low, x_high]
                                  + ly * hx * image[:, y_high, x_low] + ly * lx * image[:, y_high, x_high])
                output[r, :, i, j] = total / count
    return output


# --- oracle comparisons and identities ------------------------------------------------------


@pytest.mark.parametrize("name", ROI_POOL_CASES)
def test_matches_loop_oracle(name):
    rng = numpy.random.default_rng(100 + list(ROI_POOL_CASES).index(name))
    arrays, options = roi_pool_case(rng, **ROI_POOL_CASES[name])
    arrays, bad = with_bad_rois(rng, arrays, options, huge=False)
    output = cudeform.deform_roi_pool(**arrays, **options)
    assert output.dtype == numpy.float64
    assert output.shape == (len(bad), arrays["input"].shape[1], *options["output_size"])
    assert_close(output, loop_oracle(**arrays, **options))
    assert (output[bad] == 0).all()


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 1 / 16])
def test_no_offset_is_roi_align(sampling_ratio, spatial_scale):
    rng = numpy.random.default_rng(200 + sampling_ratio)
    arrays, options = roi_pool_case(rng, spatial_scale=spatial_scale, output_size=(3, 2),
                                    sampling_ratio=sampling_ratio)
    rois = arrays["rois"]  # batch indices all valid; -0.5 truncates to 0 as int() does
    expected = roi_align_oracle(arrays["input"], rois, output_size=(3, 2),
                                spatial_scale=spatial_scale, sampling_ratio=sampling_ratio)
    without = cudeform.deform_roi_pool(arrays["input"], rois, **options)
    assert_close(without, expected)
    zeros = numpy.zeros((len(rois), 2, 3, 2))
    assert_close(cudeform.deform_roi_pool(arrays["input"], rois, zeros, **options), without)


@pytest.mark.parametrize("dx, dy", [(0.5, 0.0), (-0.25, 1.0), (2.0, -3.0)])
def test_uniform_offset_is_a_moved_roi(dx, dy):
    """The same offset in every bin moves the whole RoI by (gamma*roi_w*dx, gamma*roi_h*dy)."""
    rng = numpy.random.default_rng(300)
    arrays, options = roi_pool_case(rng, spatial_scale=1 / 16, gamma=0.1)
    rois = arrays["rois"]
    offset = numpy.empty_like(arrays["offset"])
    offset[:, 0], offset[:, 1] = dx, dy
    # Shift in image units: gamma * roi_size * d, with roi sizes scale-invariant in image units.
    moved = rois.copy()
    moved[:, [1, 3]] += (0.1 * (rois[:, 3] - rois[:, 1]) * dx)[:, None]
    moved[:, [2, 4]] += (0.1 * (rois[:, 4] - rois[:, 2]) * dy)[:, None]
    assert_close(cudeform.deform_roi_pool(arrays["input"], rois, offset, **options),
                 cudeform.deform_roi_pool(arrays["input"], moved, **options))


def test_float32_matches_float64():
    rng = numpy.random.default_rng(400)
    arrays, options = roi_pool_case(rng, gamma=0.5)
    single = {k: v.astype(numpy.float32) for k, v in arrays.items()}
    output = cudeform.deform_roi_pool(**single, **options)
    assert output.dtype == numpy.float32
    numpy.testing.assert_allclose(output, cudeform.deform_roi_pool(**arrays, **options),
                                  rtol=1e-4, atol=1e-4)


# --- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_scale, sampling_ratio, gamma", [
    (1.0, 0, 0.1), (1 / 16, 2, 0.1), (1.0, 1, 0.5)])
def test_gradients_match_finite_differences(spatial_scale, sampling_ratio, gamma):
    rng = numpy.random.default_rng(500 + sampling_ratio)
    arrays, options = off_kink_case(rng, spatial_scale=spatial_scale,
                                    sampling_ratio=sampling_ratio, gamma=gamma)
    grad_output = rng.standard_normal(cudeform.deform_roi_pool(**arrays, **options).shape)
    grads = cudeform.deform_roi_pool_backward(grad_output, **arrays, **options)

    def loss():
        return float((cudeform.deform_roi_pool(**arrays, **options) * grad_output).sum())

    # The loss is linear in each single input or offset element (bilinear in y and x
    # separately), so central differences are exact up to rounding with a large step;
    # a step of 1e-3 moves a sample by at most 1.5e-3, far from any kink.
    for name in ("input", "offset"):
        assert_close(getattr(grads, name), numerical_gradient(loss, arrays[name], step=1e-3),
                     err_msg=name)
    assert numpy.abs(grads.offset).min() > 0


def test_clamped_coordinates_have_zero_gradient():
    """Samples in (-1, 0) clamp y to 0: no y gradient there, though the x gradient lives."""
    rng = numpy.random.default_rng(600)
    input = rng.standard_normal((1, 2, 5, 6))
    rois = numpy.array([[0, 1.1, -0.4, 4.7, 0.4], [0, 1.3, 5.1, 4.2, 5.4]])  # y in (-1, 0), (H-1, H]
    offset = numpy.zeros((2, 2, 1, 2))
    options = dict(output_size=(1, 2), sampling_ratio=2)
    grad_output = rng.standard_normal((2, 2, 1, 2))
    grads = cudeform.deform_roi_pool_backward(grad_output, input, rois, offset, **options)
    assert (grads.offset[:, 1] == 0).all() and (grads.offset[:, 0] != 0).all()

    def loss():
        return float((cudeform.deform_roi_pool(input, rois, offset, **options)
                      * grad_output).sum())
    assert_close(grads.offset, numerical_gradient(loss, offset, step=1e-3))


def test_bad_rois_and_offsets_get_zero_gradients():
    rng = numpy.random.default_rng(700)
    arrays, options = roi_pool_case(rng, gamma=0.5)
    arrays, bad = with_bad_rois(rng, arrays, options)
    output = cudeform.deform_roi_pool(**arrays, **options)
    grad_output = rng.standard_normal(output.shape)
    grads = cudeform.deform_roi_pool_backward(grad_output, **arrays, **options)
    for result in (output, *grads):
        assert numpy.isfinite(result).all()
    assert (output[bad] == 0).all() and (grads.offset[bad] == 0).all()
    # A bin whose offset is NaN, infinite or huge samples nothing.
    far = ~(numpy.abs(arrays["offset"]) < 1e29).all(axis=1)  # (R, ph, pw)
    assert far.any()
    assert (output.transpose(0, 2, 3, 1)[far] == 0).all()
    assert (grads.offset.transpose(0, 2, 3, 1)[far] == 0).all()
    # The input gradient is the same without the bad RoIs and bins.
    good = ~bad
    grad_output[bad] = 0
    grad_output.transpose(0, 2, 3, 1)[far] = 0
    clean = cudeform.deform_roi_pool_backward(
        grad_output[good], arrays["input"], arrays["rois"][good],
        numpy.nan_to_num(arrays["offset"][good], posinf=0, neginf=0), **options)
    assert_close(grads.input, clean.input)


def test_huge_rois_cost_the_map_not_the_roi():
    """ceil(roi/ph) is ~1e29 samples per side here; a bin visits only those near the map.

    RoI x in [-1e15, 1e15] with pw = 2 at scale 1: bin 1 starts at 0 with step
    exactly 1, so its samples on the map are x = k + 0.5, k = 0..W-1, and the
    spec's average divides their sum by grid_y * grid_x = 4 * 1e15.
    """
    rng = numpy.random.default_rng(800)
    input = rng.standard_normal((1, 2, 5, 6))
    rois = numpy.array([[0, -1e15 + 0.5, 1.5, 1e15 + 0.5, 5.5],
                        [0, -1e30, -1e30, 1e30, 1e30], [0, 1e30, 1e30, 2e30, 2e30]])
    offset = numpy.zeros((3, 2, 2, 2))
    options = dict(output_size=2, sampling_ratio=0)
    output = cudeform.deform_roi_pool(input, rois, offset, **options)
    grad_output = rng.standard_normal(output.shape)
    grads = cudeform.deform_roi_pool_backward(grad_output, input, rois, offset, **options)
    for result in (output, *grads):
        assert numpy.isfinite(result).all()
    assert numpy.abs(output[1:]).max() < 1e-50
    # RoI 0: y1 = 1, roi_h = 4, ph = 2: grid 2, samples y = 1.5, 2.5 (bin 0), 3.5, 4.5 (bin 1).
    for i, ys in enumerate(([1.5, 2.5], [3.5, 4.5])):
        total = sum(spec_sample(input[0], y, k + 0.5) for y in ys for k in range(6))
        numpy.testing.assert_allclose(output[0, :, i, 1], total / (2 * 1e15), rtol=1e-12)
        # Bin 0 ends at x = 0 - 1/2 step: its last sample, x = -0.5, clamps to column 0.
        total = sum(spec_sample(input[0], y, -0.5) for y in ys)
        numpy.testing.assert_allclose(output[0, :, i, 0], total / (2 * 1e15), rtol=1e-12)


def test_workspace_chunks_split_rois_and_bins(monkeypatch):
    from cudeform import _workspace

    rng = numpy.random.default_rng(900)
    arrays, options = roi_pool_case(rng, channels=2)
    arrays, _ = with_bad_rois(rng, arrays, options)
    grad_output = rng.standard_normal(cudeform.deform_roi_pool(**arrays, **options).shape)
    whole = cudeform.deform_roi_pool(**arrays, **options)
    whole_grads = cudeform.deform_roi_pool_backward(grad_output, **arrays, **options)
    monkeypatch.setattr(_workspace, "_limit", None)  # restored after the test
    cudeform.set_workspace_limit(3000)  # a few RoIs, and a few samples, per chunk
    assert_close(cudeform.deform_roi_pool(**arrays, **options), whole)
    chunked = cudeform.deform_roi_pool_backward(grad_output, **arrays, **options)
    for name in ("input", "offset"):
        assert_close(getattr(chunked, name), getattr(whole_grads, name), err_msg=name)


# --- shapes and errors ----------------------------------------------------------------------


def test_zero_rois_and_empty_batch():
    input = numpy.ones((2, 3, 4, 5))
    options = dict(output_size=(2, 3))
    output = cudeform.deform_roi_pool(input, numpy.zeros((0, 5)), numpy.zeros((0, 2, 2, 3)),
                                      **options)
    assert output.shape == (0, 3, 2, 3)
    grads = cudeform.deform_roi_pool_backward(output, input, numpy.zeros((0, 5)),
                                              numpy.zeros((0, 2, 2, 3)), **options)
    assert grads.input.shape == input.shape and not grads.input.any()
    assert grads.offset.shape == (0, 2, 2, 3)
    # N = 0: every RoI's batch index is out of range, so every RoI pools to zeros.
    rois = numpy.array([[0, 1, 1, 3, 3.0]])
    empty = numpy.zeros((0, 3, 4, 5))
    assert not cudeform.deform_roi_pool(empty, rois, **options).any()
    grads = cudeform.deform_roi_pool_backward(numpy.ones((1, 3, 2, 3)), empty, rois, **options)
    assert grads.input.shape == empty.shape and grads.offset is None


def test_named_tuple_and_none_offset_gradient():
    arrays, options = roi_pool_case(numpy.random.default_rng(1000), offset=False)
    grads = cudeform.deform_roi_pool_backward(
        numpy.ones(cudeform.deform_roi_pool(**arrays, **options).shape), **arrays, **options)
    assert isinstance(grads, cudeform.DeformRoIPoolGrads) and grads._fields == ("input", "offset")
    assert grads.offset is None


def _valid():
    arrays, options = roi_pool_case(numpy.random.default_rng(1100), dtype=numpy.float32, rois=3)
    return arrays, options  # 10 RoIs, output (2, 3)


@pytest.mark.parametrize("change, match", [
    (dict(rois=numpy.zeros((10, 4), numpy.float32)),
     r"rois.shape is not valid: expected \(R, 5\) rows of \(batch_index, x1, y1, x2, y2\), "
     r"got \(10, 4\)"),
    (dict(rois=numpy.zeros(5, numpy.float32)), r"rois is not valid: expected a 2-D array"),
    (dict(offset=numpy.zeros((10, 2, 3, 2), numpy.float32)),
     r"offset.shape is not valid: expected \(10, 2, 2, 3\), got \(10, 2, 3, 2\)"),
    (dict(offset=numpy.zeros((9, 2, 2, 3), numpy.float32)),
     r"offset.shape is not valid: expected \(10, 2, 2, 3\), got \(9, 2, 2, 3\)"),
    (dict(input=numpy.zeros((2, 3, 7), numpy.float32)), r"input is not valid: expected a 4-D"),
])
def test_shape_errors_name_the_argument(change, match):
    arrays, options = _valid()
    with pytest.raises(ValueError, match=match):
        cudeform.deform_roi_pool(**{**arrays, **change}, **options)


@pytest.mark.parametrize("option, value, error, match", [
    ("output_size", 0, ValueError, r"output_size is not valid: expected values >= 1, got 0"),
    ("output_size", (2, 0), ValueError,
     r"output_size is not valid: expected values >= 1, got \(2, 0\)"),
    ("output_size", 1.5, TypeError, r"output_size is not valid: expected an int or a pair of ints"),
    ("spatial_scale", 0, ValueError, r"spatial_scale is not valid: expected a positive number, got 0"),
    ("spatial_scale", -0.5, ValueError, r"spatial_scale is not valid: expected a positive number"),
    ("spatial_scale", float("inf"), ValueError,
     r"spatial_scale is not valid: expected a positive number"),
    ("spatial_scale", "0.5", TypeError,
     r"spatial_scale is not valid: expected a positive number, got str '0.5'"),
    ("spatial_scale", None, TypeError,
     r"spatial_scale is not valid: expected a positive number, got None"),
    ("sampling_ratio", -1, ValueError, r"sampling_ratio is not valid: expected an int >= 0, got -1"),
    ("sampling_ratio", 1.5, TypeError,
     r"sampling_ratio is not valid: expected an int >= 0, got float 1.5"),
    ("sampling_ratio", True, TypeError,
     r"sampling_ratio is not valid: expected an int >= 0, got bool True"),
    ("gamma", float("nan"), ValueError, r"gamma is not valid: expected a finite number, got nan"),
    ("gamma", "0.1", TypeError, r"gamma is not valid: expected a finite number, got str '0.1'"),
])
def test_option_errors(option, value, error, match):
    arrays, options = _valid()
    with pytest.raises(error, match=match):
        cudeform.deform_roi_pool(**arrays, **{**options, option: value})


def test_dtype_and_grad_output_errors():
    arrays, options = _valid()
    with pytest.raises(TypeError, match=r"rois has dtype float64 but input has dtype float32"):
        cudeform.deform_roi_pool(**{**arrays, "rois": arrays["rois"].astype(numpy.float64)},
                                 **options)
    with pytest.raises(TypeError, match=r"offset has dtype float16, which NumPy \(CPU\) arrays "
                                        r"do not support"):
        cudeform.deform_roi_pool(**{**arrays, "offset": arrays["offset"].astype(numpy.float16)},
                                 **options)
    half = {k: v.astype(numpy.float16) for k, v in arrays.items()}
    with pytest.raises(TypeError, match=r"input has dtype float16, which NumPy \(CPU\) arrays "
                                        r"do not support"):
        cudeform.deform_roi_pool(**half, **options)
    with pytest.raises(ValueError, match=r"grad_output.shape is not valid: expected "
                                         r"\(10, 3, 2, 3\), got \(10, 3, 3, 2\)"):
        cudeform.deform_roi_pool_backward(numpy.zeros((10, 3, 3, 2), numpy.float32), **arrays,
                                          **options)
    with pytest.raises(TypeError, match=r"grad_output has dtype float64 but input has dtype"):
        cudeform.deform_roi_pool_backward(numpy.zeros((10, 3, 2, 3)), **arrays, **options)
