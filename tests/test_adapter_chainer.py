"""The Chainer adapter: functions against the core, gradient checks, Chainer's own
sampler, the links, and the first-order-only backward.

Skipped when Chainer cannot be imported (install the ``chainer`` extra).
"""

from __future__ import annotations

import numpy
import pytest

from cudeform.adapters import _chainer_compat  # noqa: F401  (numpy.sctypes, before chainer)

chainer = pytest.importorskip("chainer")

import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
from chainer import gradient_check  # noqa: E402

import cudeform  # noqa: E402
from cudeform.adapters import chainer as adapter  # noqa: E402
from tests.gpu import NO_GPU  # noqa: E402
from tests.helpers import CONV_CASES, assert_close, conv_case  # noqa: E402
from tests.psroi_cases import psroi_case, smooth_case  # noqa: E402
from tests.roi_pool_cases import off_kink_case, roi_pool_case  # noqa: E402

FORWARD_CONV_CASES = ("dcnv2", "dcnv1-no-bias", "groups2-offset-groups4",
                      "kernel32-stride21-pad10-dil21", "batch0", "across-borders")


def conv_call(case):
    """The adapter's arguments for a ``conv_case``: ``(arrays, keyword options)``."""
    arrays = dict(x=case["input"], offset=case["offset"], W=case["weight"], b=case["bias"],
                  mask=case["mask"])
    options = dict(stride=case["stride"], pad=case["padding"], dilate=case["dilation"])
    return arrays, options


# --- functions against the core -----------------------------------------------------


@pytest.mark.parametrize("name", FORWARD_CONV_CASES)
def test_deform_conv2d_forward_equals_core(name):
    case = conv_case(numpy.random.default_rng(10), dtype=numpy.float32, **CONV_CASES[name])
    arrays, options = conv_call(case)
    y = adapter.deform_conv2d(**arrays, **options)
    assert isinstance(y, chainer.Variable)
    numpy.testing.assert_array_equal(y.array, cudeform.deform_conv2d(**case))


def test_roi_pools_forward_equal_core():
    rng = numpy.random.default_rng(11)
    arrays, options = roi_pool_case(rng, sampling_ratio=2)
    args = (arrays["input"], arrays["rois"], arrays["offset"])
    numpy.testing.assert_array_equal(adapter.deform_roi_pool(*args, **options).array,
                                     cudeform.deform_roi_pool(*args, **options))
    arrays, options = psroi_case(rng, num_classes=2, output_dim=4)
    args = (arrays["input"], arrays["rois"], arrays["offset"])
    numpy.testing.assert_array_equal(adapter.deform_psroi_pool(*args, **options).array,
                                     cudeform.deform_psroi_pool(*args, **options))


# --- gradient checks in float64, samples off the bilinear kinks ---------------------

GRADIENT_CONV_CASES = {
    "dcnv2": dict(),
    "dcnv1-no-bias": dict(mask=False, bias=False),
    "bias-no-mask": dict(mask=False),
    "groups2-offset-groups4": dict(in_channels=4, out_channels=4, groups=2, offset_groups=4),
    "kernel32-stride21-pad10-dil21": dict(kernel=(3, 2), stride=(2, 1), padding=(1, 0),
                                          dilation=(2, 1), size=(7, 5), offset_groups=2),
    "across-borders": dict(offset_scale=6.0, size=(4, 5)),
}


@pytest.mark.parametrize("name", GRADIENT_CONV_CASES)
def test_deform_conv2d_check_backward(name):
    rng = numpy.random.default_rng(12)
    case = conv_case(rng, **{**dict(in_channels=4, out_channels=4, off_kinks=True),
                             **GRADIENT_CONV_CASES[name]})
    arrays, options = conv_call(case)
    names = [k for k, v in arrays.items() if v is not None]

    def function(*inputs):
        return adapter.deform_conv2d(**dict(zip(names, inputs)), **options)

    inputs = tuple(arrays[k] for k in names)
    grad_output = rng.standard_normal(function(*inputs).shape)
    gradient_check.check_backward(function, inputs, grad_output, eps=1e-4, dtype=None)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("with_offset", [True, False], ids=["offset", "no-offset"])
def test_deform_roi_pool_check_backward(sampling_ratio, with_offset):
    rng = numpy.random.default_rng(13)
    arrays, options = off_kink_case(rng, spatial_scale=0.5, sampling_ratio=sampling_ratio,
                                    gamma=0.1)
    rois = arrays["rois"]

    def function(x, offset=None):
        return adapter.deform_roi_pool(x, rois, offset, **options)

    inputs = (arrays["input"], arrays["offset"]) if with_offset else (arrays["input"],)
    grad_output = rng.standard_normal(function(*inputs).shape)
    gradient_check.check_backward(function, inputs, grad_output, eps=1e-4, dtype=None)


@pytest.mark.parametrize("options", [
    dict(),
    dict(output_dim=4, num_classes=2, part_size=2, group_size=3),
], ids=["basic", "classes2-part2-group3"])
@pytest.mark.parametrize("with_offset", [True, False], ids=["offset", "no-offset"])
def test_deform_psroi_pool_check_backward(options, with_offset):
    rng = numpy.random.default_rng(14)
    arrays, kwargs = smooth_case(rng, **options)
    rois = arrays["rois"]

    def function(x, offset=None):
        return adapter.deform_psroi_pool(x, rois, offset, **kwargs)

    inputs = (arrays["input"], arrays["offset"]) if with_offset else (arrays["input"],)
    grad_output = rng.standard_normal(function(*inputs).shape)
    gradient_check.check_backward(function, inputs, grad_output, eps=1e-4, dtype=None)


def test_rois_get_no_gradient():
    rng = numpy.random.default_rng(15)
    arrays, options = roi_pool_case(rng)
    x, rois = chainer.Variable(arrays["input"]), chainer.Variable(arrays["rois"])
    F.sum(adapter.deform_roi_pool(x, rois, arrays["offset"], **options)).backward()
    assert x.grad is not None and rois.grad is None


def double_backward_cases(rng):
    conv = conv_case(rng, off_kinks=True)
    arrays, options = conv_call(conv)
    yield "deform_conv2d", lambda x: adapter.deform_conv2d(**dict(arrays, x=x), **options), \
        arrays["x"]
    roi, roi_options = roi_pool_case(rng)
    yield "deform_roi_pool", lambda x: adapter.deform_roi_pool(
        x, roi["rois"], roi["offset"], **roi_options), roi["input"]
    ps, ps_options = psroi_case(rng)
    yield "deform_psroi_pool", lambda x: adapter.deform_psroi_pool(
        x, ps["rois"], ps["offset"], **ps_options), ps["input"]


def test_double_backward_raises_a_clear_error():
    for name, function, x in double_backward_cases(numpy.random.default_rng(16)):
        x = chainer.Variable(x)
        y = function(x)
        gx, = chainer.grad([F.sum(y * y)], [x], enable_double_backprop=True)
        with pytest.raises(NotImplementedError, match=f"{name}: .*double backward"):
            F.sum(gx).backward()


def test_type_check_names_the_inputs():
    case = conv_case(numpy.random.default_rng(17))
    arrays, options = conv_call(case)
    arrays["offset"] = arrays["offset"].astype(numpy.float32)
    with pytest.raises(TypeError, match="^offset has dtype float32 but x has dtype float64"):
        adapter.deform_conv2d(**arrays, **options)
    arrays, options = roi_pool_case(numpy.random.default_rng(17))
    with pytest.raises(ValueError, match=r"^rois.shape is not valid: expected \(R, 5\)"):
        adapter.deform_roi_pool(arrays["input"], arrays["rois"][:, :4], **options)


# --- Chainer's own sampler ------------------------------------------------------------


def chainer_sampler_case(rng, *, inside):
    """Arguments of ``F.deformable_convolution_2d_sampler`` (offset in Chainer's layout)
    whose samples have fractional parts in [0.1, 0.9]. With ``inside`` every sample
    lies in (0, H-1) x (0, W-1); otherwise offsets of up to 9 pixels cross every border."""
    (n, c, h, w), (kh, kw), stride, pad = (2, 3, 6, 7), (3, 2), (2, 1), (1, 2)
    out_h, out_w = (h + 2 * pad[0] - kh) // stride[0] + 1, (w + 2 * pad[1] - kw) // stride[1] + 1
    shape = (n, kh * kw, out_h, out_w)
    if inside:  # targets inside the map, minus the regular grid position of each tap
        base_y = (numpy.arange(out_h)[:, None] * stride[0] - pad[0]
                  + numpy.repeat(numpy.arange(kh), kw)[:, None, None])
        base_x = (numpy.arange(out_w)[None, :] * stride[1] - pad[1]
                  + numpy.tile(numpy.arange(kw), kh)[:, None, None])
        dy = rng.integers(0, h - 1, shape) + rng.uniform(0.1, 0.9, shape) - base_y
        dx = rng.integers(0, w - 1, shape) + rng.uniform(0.1, 0.9, shape) - base_x
    else:
        dy, dx = (rng.integers(-9, 10, shape) + rng.uniform(0.1, 0.9, shape) for _ in "yx")
    return dict(x=rng.standard_normal((n, c, h, w)), offset=numpy.concatenate([dx, dy], 1),
                W=rng.standard_normal((4, c, kh, kw)), b=rng.standard_normal(4),
                stride=stride, pad=pad)


def test_offset_layout_round_trip():
    offset = numpy.random.default_rng(18).standard_normal((2, 2 * 6, 3, 4))
    converted = adapter.offset_from_chainer_sampler(offset).array
    # Chainer: dx of tap k in channel k, dy in channel kh*kw + k; cudeform: 2k dy, 2k+1 dx.
    numpy.testing.assert_array_equal(converted[:, 0::2], offset[:, 6:])
    numpy.testing.assert_array_equal(converted[:, 1::2], offset[:, :6])
    numpy.testing.assert_array_equal(adapter.offset_to_chainer_sampler(converted).array, offset)


@pytest.mark.parametrize("inside", [True, False], ids=["inside-map", "across-borders"])
def test_equals_chainer_sampler_values_and_gradients(inside):
    rng = numpy.random.default_rng(19)
    case = chainer_sampler_case(rng, inside=inside)
    names = ("x", "offset", "W", "b")
    variables = [chainer.Variable(case[k]) for k in names]
    x, offset, W, b = variables
    expected = F.deformable_convolution_2d_sampler(x, offset, W, b, case["stride"],
                                                   case["pad"])
    actual = adapter.deform_conv2d(x, adapter.offset_from_chainer_sampler(offset), W, b,
                                   case["stride"], case["pad"])
    assert_close(actual.array, expected.array)
    grad_output = rng.standard_normal(expected.shape)
    grads_expected = chainer.grad([expected], variables, grad_outputs=[grad_output])
    grads_actual = chainer.grad([actual], variables, grad_outputs=[grad_output])
    for name, got, want in zip(names, grads_actual, grads_expected):
        assert_close(got.array, want.array, err_msg=name)


# --- links ----------------------------------------------------------------------------


@pytest.fixture
def seeded():
    """Chainer's default initializers draw from NumPy's global generator."""
    numpy.random.seed(20)


def test_link_shapes(seeded):
    x = numpy.random.standard_normal((2, 4, 9, 8)).astype(numpy.float32)
    conv = adapter.DeformConv2d(4, 6, (3, 2), stride=(2, 1), pad=1, dilate=(1, 2), groups=2)
    assert conv.W.shape == (6, 2, 3, 2) and conv.b.shape == (6,)
    offset = numpy.zeros((2, 2 * 2 * 6, 5, 8), numpy.float32)
    assert conv(x, offset, numpy.ones((2, 2 * 6, 5, 8), numpy.float32)).shape == (2, 6, 5, 8)
    assert adapter.DeformConv2d(4, 6, 3, nobias=True).b is None
    for link in (adapter.DeformConv2dPack, adapter.ModulatedDeformConv2dPack):
        layer = link(4, 6, 3, stride=2, pad=1, deform_groups=2)
        taps = 2 * 9 * (3 if link is adapter.ModulatedDeformConv2dPack else 2)
        assert layer.conv_offset.W.shape == (taps, 4, 3, 3)
        assert layer(x).shape == (2, 6, 5, 4)
    rois = numpy.array([[0, 1, 1, 6, 7], [1, 0, 2, 5, 5]], numpy.float32)
    pool = adapter.DeformRoIPoolPack((2, 3), in_channels=4, deform_fc_channels=16)
    assert pool(x, rois).shape == (2, 4, 2, 3)
    ps = adapter.DeformPSRoIPoolPack(4, output_dim=3, group_size=2, pooled_size=3,
                                     num_classes=3)
    assert ps.conv_offset.W.shape == (2 * 3 * 9, 4, 1, 1)
    scores = numpy.random.standard_normal((2, 3 * 4, 9, 8)).astype(numpy.float32)
    assert ps(x, scores, rois).shape == (2, 3, 3, 3)


@pytest.mark.parametrize("build, message", [
    (lambda: adapter.DeformConv2d(4, 6, 3, groups=4),
     r"groups is not valid: expected a divisor of in_channels=4 and out_channels=6, "
     r"got 4"),
    (lambda: adapter.DeformConv2d(4, 6, 0), r"ksize is not valid: expected values >= 1"),
    (lambda: adapter.DeformConv2d(4, 6, 3, pad=-1), r"pad is not valid: expected values >= 0"),
    (lambda: adapter.DeformConv2d(0, 6, 3), r"in_channels is not valid: expected an int >= 1"),
    (lambda: adapter.DeformConv2dPack(4, 6, 3, deform_groups=3),
     r"deform_groups is not valid: expected a divisor of in_channels=4, got 3"),
    (lambda: adapter.DeformRoIPoolPack(7, spatial_scale=0, in_channels=4),
     r"spatial_scale is not valid: expected a positive number, got 0"),
    (lambda: adapter.DeformRoIPoolPack(7, in_channels=4, deform_fc_channels=0),
     r"deform_fc_channels is not valid"),
    (lambda: adapter.DeformPSRoIPoolPack(4, output_dim=2, group_size=3, pooled_size=3,
                                         num_classes=3),
     r"num_classes is not valid: expected a divisor of output_dim=2, got 3"),
    (lambda: adapter.DeformPSRoIPoolPack(4, output_dim=2, group_size=3, pooled_size=3,
                                         sample_per_part=0),
     r"sample_per_part is not valid: expected an int >= 1, got 0"),
])
def test_links_check_their_arguments_when_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_pack_links_start_offset_free(seeded):
    x = numpy.random.standard_normal((2, 4, 9, 8)).astype(numpy.float32)
    options = dict(stride=(2, 1), pad=(1, 2), dilate=(1, 2))
    pack = adapter.DeformConv2dPack(4, 6, (3, 2), initial_bias=0.5, **options)
    plain = L.Convolution2D(4, 6, (3, 2), initialW=pack.W.array, initial_bias=pack.b.array,
                            **options)
    expected = plain(x).array
    assert_close(pack(x).array, expected, numpy.float32)
    modulated = adapter.ModulatedDeformConv2dPack(4, 6, (3, 2), nobias=True, **options)
    plain = L.Convolution2D(4, 6, (3, 2), initialW=modulated.W.array, nobias=True, **options)
    assert_close(modulated(x).array, 0.5 * plain(x).array, numpy.float32)  # sigmoid(0)
    rois = numpy.array([[0, 1, 1, 6, 7], [1, 0, 2, 5, 5]], numpy.float32)
    pool = adapter.DeformRoIPoolPack(2, 0.5, 2, in_channels=4, deform_fc_channels=8)
    numpy.testing.assert_array_equal(
        pool(x, rois).array,
        cudeform.deform_roi_pool(x, rois, output_size=2, spatial_scale=0.5, sampling_ratio=2))
    ps = adapter.DeformPSRoIPoolPack(4, output_dim=1, group_size=2, pooled_size=2)
    numpy.testing.assert_array_equal(
        ps(x, x, rois).array,
        cudeform.deform_psroi_pool(x, rois, output_dim=1, group_size=2, pooled_size=2))


def test_deform_conv2d_pack_trains(seeded):
    x = numpy.random.standard_normal((4, 3, 8, 8)).astype(numpy.float32)
    target = numpy.random.standard_normal((4, 2, 8, 8)).astype(numpy.float32)
    model = chainer.Sequential(adapter.DeformConv2dPack(3, 8, 3, pad=1), F.relu,
                               L.Convolution2D(8, 2, 1))
    optimizer = chainer.optimizers.Adam(alpha=0.01)
    optimizer.setup(model)
    losses = []
    for _ in range(15):
        loss = F.mean_squared_error(model(x), target)
        model.cleargrads()
        loss.backward()
        optimizer.update()
        losses.append(float(loss.array))
    assert losses[-1] < 0.9 * losses[0]
    assert numpy.abs(model[0].conv_offset.W.array).max() > 0  # the offsets are learned too


def test_pooling_packs_learn_offsets(seeded):
    x = numpy.random.standard_normal((2, 4, 9, 8)).astype(numpy.float32)
    rois = numpy.array([[0, 1, 1, 6, 7], [1, 0, 2, 5, 5]], numpy.float32)
    pool = adapter.DeformRoIPoolPack(2, in_channels=4, deform_fc_channels=8)
    pool.cleargrads()  # Chainer starts parameter gradients at NaN
    F.sum(pool(x, rois) ** 2).backward()
    assert numpy.abs(pool.offset_fc[-1].W.grad).max() > 0
    ps = adapter.DeformPSRoIPoolPack(4, output_dim=1, group_size=2, pooled_size=2)
    ps.cleargrads()
    F.sum(ps(x, x, rois) ** 2).backward()
    assert numpy.abs(ps.conv_offset.W.grad).max() > 0


# --- GPU ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not chainer.backends.cuda.available,
                    reason="Chainer's CUDA backend is not available")
@pytest.mark.skipif(NO_GPU is not None, reason=str(NO_GPU))
@pytest.mark.parametrize("name", ["dcnv2", "dcnv1-no-bias"])
def test_deform_conv2d_on_cupy_matches_numpy(name):
    cupy = chainer.backends.cuda.cupy
    case = conv_case(numpy.random.default_rng(21), off_kinks=True, **CONV_CASES[name])
    arrays, options = conv_call(case)
    results = []
    for to in (lambda a: a, cupy.asarray):
        variables = {k: None if v is None else chainer.Variable(to(v)) for k, v in arrays.items()}
        y = adapter.deform_conv2d(**variables, **options)
        F.sum(y * y).backward()
        results.append([chainer.backends.cuda.to_cpu(v.grad) for v in variables.values()
                        if v is not None] + [chainer.backends.cuda.to_cpu(y.array)])
    for got, want in zip(results[1], results[0]):
        assert_close(got, want)
