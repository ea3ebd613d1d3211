"""deform_conv2d on the NumPy path: identities, gradients and errors.

The comparison with onnxruntime is in test_deform_conv_onnxruntime.py.
"""

from __future__ import annotations

import numpy
import pytest

import cudeform
from tests.helpers import assert_close, conv_case, numerical_gradient, split_case

GRAD_NAMES = ("input", "offset", "weight", "bias", "mask")


def plain_conv2d(x, weight, bias, stride, padding, dilation):
    """Ordinary grouped convolution written with strided windows (no deformation)."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    out_channels, group_channels, kh, kw = weight.shape
    groups = x.shape[1] // group_channels
    padded = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = numpy.zeros((x.shape[0], out_channels, out_h, out_w))
    per_group = out_channels // groups
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i * dh:i * dh + sh * (out_h - 1) + 1:sh,
                            j * dw:j * dw + sw * (out_w - 1) + 1:sw]
            for grp in range(groups):
                xs = window[:, grp * group_channels:(grp + 1) * group_channels]
                ws = weight[grp * per_group:(grp + 1) * per_group, :, i, j]
                out[:, grp * per_group:(grp + 1) * per_group] += numpy.einsum("nchw,oc->nohw", xs, ws)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


@pytest.mark.parametrize("groups, offset_groups", [(1, 1), (2, 4), (4, 2)])
def test_zero_offset_unit_mask_is_plain_convolution(groups, offset_groups):
    case = conv_case(numpy.random.default_rng(3), in_channels=8, out_channels=8, groups=groups,
                     offset_groups=offset_groups, kernel=(3, 2), stride=(2, 1),
                     padding=(1, 2), dilation=(1, 2), size=(9, 7))
    case["offset"][:] = 0
    case["mask"][:] = 1
    expected = plain_conv2d(case["input"], case["weight"], case["bias"], case["stride"],
                            case["padding"], case["dilation"])
    assert_close(cudeform.deform_conv2d(**case), expected, numpy.float64)


@pytest.mark.parametrize("dy, dx", [(1, 0), (-2, 1), (0, -3), (4, 5)])
def test_integer_offset_is_shifted_convolution(dy, dx):
    case = conv_case(numpy.random.default_rng(4), mask=False, size=(6, 7))
    case["offset"][:, 0::2] = dy
    case["offset"][:, 1::2] = dx
    output = cudeform.deform_conv2d(**case)
    # Every tap reads the zero-padded map moved by (dy, dx): pad widely, then
    # cut the window that a padding-(ph, pw) convolution would see, moved.
    (ph, pw), margin = case["padding"], 8
    wide = numpy.pad(case["input"], ((0, 0), (0, 0), (margin, margin), (margin, margin)))
    window = wide[:, :, margin - ph + dy:, margin - pw + dx:]
    expected = plain_conv2d(window, case["weight"], case["bias"], case["stride"], (0, 0),
                            case["dilation"])
    assert_close(output, expected[:, :, :output.shape[2], :output.shape[3]], numpy.float64)


GRADIENT_CONFIGS = [
    dict(),
    dict(mask=False, bias=False),
    dict(in_channels=4, out_channels=4, groups=2, offset_groups=4),
    dict(in_channels=4, out_channels=4, groups=4, offset_groups=2),
    dict(kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), size=(7, 5)),
    dict(offset_scale=6.0, size=(4, 5)),  # many samples across the borders
]


@pytest.mark.parametrize("options", GRADIENT_CONFIGS)
def test_gradients_match_finite_differences(options):
    rng = numpy.random.default_rng(5)
    case = conv_case(rng, batch=2, size=options.pop("size", (5, 6)), off_kinks=True, **options)
    arrays, opts = split_case(case)
    grad_output = rng.standard_normal(cudeform.deform_conv2d(**case).shape)
    grads = cudeform.deform_conv2d_backward(grad_output, **arrays, **opts)

    def loss():
        return float((cudeform.deform_conv2d(**arrays, **opts) * grad_output).sum())

    for name in GRAD_NAMES:
        if arrays[name] is None:
            assert getattr(grads, name) is None
            continue
        numeric = numerical_gradient(loss, arrays[name])
        numpy.testing.assert_allclose(getattr(grads, name), numeric, rtol=1e-6, atol=1e-6,
                                      err_msg=name)


def test_float32_backward_matches_float64():
    rng = numpy.random.default_rng(6)
    case = conv_case(rng, offset_groups=2, groups=2, out_channels=4)
    arrays, opts = split_case(case)
    grad_output = rng.standard_normal(cudeform.deform_conv2d(**case).shape)
    exact = cudeform.deform_conv2d_backward(grad_output, **arrays, **opts)
    single = cudeform.deform_conv2d_backward(
        grad_output.astype(numpy.float32),
        **{k: v.astype(numpy.float32) for k, v in arrays.items() if v is not None}, **opts)
    for name in GRAD_NAMES:
        assert getattr(single, name).dtype == numpy.float32
        numpy.testing.assert_allclose(getattr(single, name), getattr(exact, name),
                                      rtol=1e-3, atol=1e-3, err_msg=name)


@pytest.mark.parametrize("rearranges_weight", [True, False])
def test_chunked_batch_matches_whole_batch(rearranges_weight, monkeypatch):
    from cudeform._cpu import columns

    monkeypatch.setattr(columns, "rearranges_weight", lambda g: rearranges_weight)
    rng = numpy.random.default_rng(7)
    case = conv_case(rng, batch=7, dtype=numpy.float64)
    arrays, opts = split_case(case)
    grad_output = rng.standard_normal(cudeform.deform_conv2d(**case).shape)
    whole = cudeform.deform_conv2d(**case)
    whole_grads = cudeform.deform_conv2d_backward(grad_output, **arrays, **opts)
    try:
        cudeform.set_workspace_limit(1)  # one image per chunk
        chunked = cudeform.deform_conv2d(**case)
        chunked_grads = cudeform.deform_conv2d_backward(grad_output, **arrays, **opts)
    finally:
        cudeform.set_workspace_limit(None)
    assert_close(chunked, whole, numpy.float64)
    for name in GRAD_NAMES:
        assert_close(getattr(chunked_grads, name), getattr(whole_grads, name), numpy.float64)


@pytest.mark.parametrize("rearranges_weight", [True, False])
def test_one_pixel_blocks_match_whole_images(rearranges_weight, monkeypatch):
    """Blocks of one pixel, split over three workers, in both GEMM orders (the second
    builds a chunk's columns first and splits the GEMMs by output channels)."""
    from cudeform._cpu import columns, conv_blocks

    monkeypatch.setattr(columns, "rearranges_weight", lambda g: rearranges_weight)
    rng = numpy.random.default_rng(12)
    case = conv_case(rng, batch=2, groups=2, offset_groups=2, out_channels=4)
    arrays, opts = split_case(case)
    grad_output = rng.standard_normal(cudeform.deform_conv2d(**case).shape)
    whole = cudeform.deform_conv2d(**case)
    whole_grads = cudeform.deform_conv2d_backward(grad_output, **arrays, **opts)
    monkeypatch.setattr(conv_blocks, "BLOCK_BYTES", 1)  # one output pixel per block
    monkeypatch.setenv("CUDEFORM_NUM_THREADS", "3")
    assert_close(cudeform.deform_conv2d(**case), whole, numpy.float64)
    grads = cudeform.deform_conv2d_backward(grad_output, **arrays, **opts)
    for name in GRAD_NAMES:
        assert_close(getattr(grads, name), getattr(whole_grads, name), numpy.float64)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_thread_count_does_not_change_results(threads, monkeypatch):
    rng = numpy.random.default_rng(13)
    case = conv_case(rng, batch=3, in_channels=8, out_channels=4, groups=2, offset_groups=2,
                     size=(20, 17))
    arrays, opts = split_case(case)
    grad_output = rng.standard_normal(cudeform.deform_conv2d(**case).shape)
    monkeypatch.setenv("CUDEFORM_NUM_THREADS", "2")
    reference = cudeform.deform_conv2d_backward(grad_output, **arrays, **opts)
    reference_output = cudeform.deform_conv2d(**case)
    monkeypatch.setenv("CUDEFORM_NUM_THREADS", threads)
    assert_close(cudeform.deform_conv2d(**case), reference_output, numpy.float64)
    grads = cudeform.deform_conv2d_backward(grad_output, **arrays, **opts)
    for name in GRAD_NAMES:
        assert_close(getattr(grads, name), getattr(reference, name), numpy.float64)


def test_settings_are_validated(monkeypatch):
    monkeypatch.setenv("CUDEFORM_WORKSPACE_LIMIT", "4096")
    assert cudeform.workspace_limit() == 4096
    monkeypatch.setenv("CUDEFORM_WORKSPACE_LIMIT", "lots")
    with pytest.raises(ValueError, match=r"CUDEFORM_WORKSPACE_LIMIT is not valid: expected a "
                                         r"positive number of bytes, got 'lots'"):
        cudeform.workspace_limit()
    with pytest.raises(ValueError, match=r"nbytes is not valid: .* got 0"):
        cudeform.set_workspace_limit(0)
    for wrong in ("1000000", 1.5, 2.0, True, [1]):
        with pytest.raises(TypeError, match=r"nbytes must be an int number of bytes or None"):
            cudeform.set_workspace_limit(wrong)
    try:
        cudeform.set_workspace_limit(numpy.int64(5000))  # any integral type
        assert cudeform.workspace_limit() == 5000 and type(cudeform.workspace_limit()) is int
    finally:
        cudeform.set_workspace_limit(None)
    monkeypatch.setenv("CUDEFORM_NUM_THREADS", "0")
    arrays, opts = _valid()
    with pytest.raises(ValueError, match=r"CUDEFORM_NUM_THREADS is not valid: expected a "
                                         r"positive integer, got '0'"):
        cudeform.deform_conv2d(**arrays, **opts)


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, -numpy.inf, 1e30, -1e30, 1e6])
def test_bad_offsets_count_as_outside(bad):
    rng = numpy.random.default_rng(8)
    case = conv_case(rng, offset_groups=2, in_channels=4)
    arrays, opts = split_case(case)
    hit = rng.uniform(size=case["mask"].shape) < 0.3  # (N, dg*taps, H_out, W_out)
    offset = case["offset"].reshape(2, 2, 9, 2, *hit.shape[2:])
    offset[..., 0, :, :][hit.reshape(2, 2, 9, *hit.shape[2:])] = bad
    # The same taps switched off through the mask are the expected result.
    masked = dict(case, mask=numpy.where(hit, 0.0, case["mask"]))
    masked["offset"] = numpy.where(numpy.isfinite(case["offset"]), case["offset"], 0.0)
    masked["offset"] = numpy.where(numpy.abs(masked["offset"]) > 100, 0.0, masked["offset"])
    result = cudeform.deform_conv2d(**case)
    assert numpy.isfinite(result).all()
    assert_close(result, cudeform.deform_conv2d(**masked), numpy.float64)

    grad_output = rng.standard_normal(result.shape)
    grads = cudeform.deform_conv2d_backward(grad_output, **arrays, **opts)
    for name in GRAD_NAMES:
        assert numpy.isfinite(getattr(grads, name)).all(), name
    hit_pairs = numpy.repeat(hit.reshape(2, 2, 9, 1, *hit.shape[2:]), 2, axis=3)
    assert (grads.offset.reshape(hit_pairs.shape)[hit_pairs] == 0).all()
    assert (grads.mask[hit] == 0).all()


def test_empty_batch():
    case = conv_case(numpy.random.default_rng(9), batch=0)
    arrays, opts = split_case(case)
    output = cudeform.deform_conv2d(**case)
    assert output.shape == (0, 6, 7, 6)
    grads = cudeform.deform_conv2d_backward(numpy.zeros(output.shape), **arrays, **opts)
    for name in GRAD_NAMES:
        assert getattr(grads, name).shape == arrays[name].shape
    assert not grads.weight.any() and not grads.bias.any()


def test_named_tuple_fields_and_none_gradients():
    case = conv_case(numpy.random.default_rng(10), mask=False, bias=False)
    arrays, opts = split_case(case)
    grads = cudeform.deform_conv2d_backward(
        numpy.ones(cudeform.deform_conv2d(**case).shape), **arrays, **opts)
    assert isinstance(grads, cudeform.DeformConv2dGrads)
    assert grads._fields == GRAD_NAMES
    assert grads.bias is None and grads.mask is None


def test_int_and_pair_arguments_agree():
    case = conv_case(numpy.random.default_rng(11), stride=(2, 2), padding=(1, 1),
                     dilation=(2, 2), size=(9, 9))
    arrays, _ = split_case(case)
    assert_close(cudeform.deform_conv2d(**arrays, stride=2, padding=1, dilation=2),
                 cudeform.deform_conv2d(**case), numpy.float64)


# --- errors --------------------------------------------------------------------------------


def _valid():
    case = conv_case(numpy.random.default_rng(12), dtype=numpy.float32)
    return split_case(case)


@pytest.mark.parametrize("change, match", [
    (dict(input=numpy.zeros((4, 7, 6), numpy.float32)), r"input is not valid: expected a 4-D"),
    (dict(weight=numpy.zeros((6, 3, 3, 3), numpy.float32)),
     r"weight.shape\[1\] is not valid: expected a divisor of input.shape\[1\]=4, got 3"),
    (dict(weight=numpy.zeros((5, 2, 3, 3), numpy.float32)),
     r"weight.shape\[0\] is not valid: expected a multiple of groups=2"),
    (dict(offset=numpy.zeros((2, 17, 7, 6), numpy.float32)),
     r"offset.shape\[1\] is not valid: expected a positive multiple of 2\*kh\*kw=18, got 17"),
    (dict(offset=numpy.zeros((2, 54, 7, 6), numpy.float32)),
     r"offset.shape\[1\] is not valid: its 3 offset groups must divide input.shape\[1\]=4"),
    (dict(offset=numpy.zeros((2, 18, 6, 6), numpy.float32)),
     r"offset.shape is not valid: expected \(2, 18, 7, 6\), got \(2, 18, 6, 6\)"),
    (dict(offset=numpy.zeros((3, 18, 7, 6), numpy.float32)),
     r"offset.shape is not valid: expected \(2, 18, 7, 6\)"),
    (dict(mask=numpy.zeros((2, 18, 7, 6), numpy.float32)),
     r"mask.shape is not valid: expected \(2, 9, 7, 6\), got \(2, 18, 7, 6\)"),
    (dict(bias=numpy.zeros(5, numpy.float32)), r"bias.shape is not valid: expected \(6,\), got \(5,\)"),
])
def test_shape_errors_name_the_argument(change, match):
    arrays, opts = _valid()
    with pytest.raises(ValueError, match=match):
        cudeform.deform_conv2d(**{**arrays, **change}, **opts)


@pytest.mark.parametrize("option, value, error, match", [
    ("stride", 0, ValueError, r"stride is not valid: expected values >= 1, got 0"),
    ("stride", (1, 2, 3), ValueError, r"stride is not valid: expected an int or a pair of ints"),
    ("padding", -1, ValueError, r"padding is not valid: expected values >= 0, got -1"),
    ("dilation", (1, 0), ValueError, r"dilation is not valid: expected values >= 1, got \(1, 0\)"),
    ("stride", 2**31, ValueError,
     r"stride is not valid: expected values <= 2147483647 \(a 32-bit C int\), got 2147483648"),
    ("dilation", 1.5, TypeError,
     r"dilation is not valid: expected an int or a pair of ints, got float 1.5"),
    ("padding", True, TypeError,
     r"padding is not valid: expected an int or a pair of ints, got bool True"),
    ("stride", "1", TypeError, r"stride is not valid: expected an int or a pair of ints, got str '1'"),
    ("stride", None, TypeError, r"stride is not valid: expected an int or a pair of ints, got None"),
    ("padding", (1, "1"), TypeError, r"padding is not valid: expected an int or a pair of ints"),
])
def test_option_errors(option, value, error, match):
    arrays, opts = _valid()
    with pytest.raises(error, match=match):
        cudeform.deform_conv2d(**arrays, **{**opts, option: value})


def test_input_too_small_for_kernel():
    arrays, _ = _valid()
    with pytest.raises(ValueError, match=r"input.shape is not valid: .* the output would be"):
        cudeform.deform_conv2d(**arrays, dilation=4)


def test_grad_output_shape_error():
    arrays, opts = _valid()
    with pytest.raises(ValueError, match=r"grad_output.shape is not valid: expected \(2, 6, 7, 6\)"):
        cudeform.deform_conv2d_backward(numpy.zeros((2, 6, 7, 5), numpy.float32), **arrays, **opts)


def test_dtype_errors():
    arrays, opts = _valid()
    with pytest.raises(TypeError, match=r"offset has dtype float64 but input has dtype float32"):
        cudeform.deform_conv2d(**{**arrays, "offset": arrays["offset"].astype(numpy.float64)}, **opts)
    half = {k: None if v is None else v.astype(numpy.float16) for k, v in arrays.items()}
    with pytest.raises(TypeError, match=r"input has dtype float16, which NumPy \(CPU\) arrays "
                                        r"do not support"):
        cudeform.deform_conv2d(**half, **opts)
    with pytest.raises(TypeError, match=r"weight must be a numpy.ndarray or cupy.ndarray, got list"):
        cudeform.deform_conv2d(**{**arrays, "weight": arrays["weight"].tolist()}, **opts)
