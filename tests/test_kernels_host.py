"""Host run of the CUDA kernels: the kernel source, compiled for the CPU, against the NumPy path.

``tests/host`` compiles ``kernels/*.cu`` as C++ (one thread runs each grid-stride
loop), and ``cudeform._gpu.deform_conv`` drives it with ``xp=numpy``. That checks
the kernels' index math, border rule and the GPU host logic (chunking, GEMMs)
without a GPU; what it cannot check is concurrency (atomicAdd races) and the
16-bit types.
"""

from __future__ import annotations

import numpy
import pytest

import cudeform
from cudeform import _workspace
from cudeform._cpu import deform_conv as cpu
from cudeform._gpu import deform_conv as gpu
from cudeform._gpu.signatures import DEFORM_IM2COL
from cudeform._shapes import deform_conv2d_geometry
from tests.helpers import CONV_CASES as CASES, TOLERANCES, conv_case, numerical_gradient, split_case
from tests.host.loader import compiler, host_launch

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")

DTYPES = (numpy.float32, numpy.float64)
GRAD_NAMES = ("input", "offset", "weight", "bias", "mask")


def _geometry(arrays, options):
    return deform_conv2d_geometry(
        arrays["input"].shape, arrays["offset"].shape, arrays["weight"].shape,
        None if arrays["bias"] is None else arrays["bias"].shape,
        None if arrays["mask"] is None else arrays["mask"].shape, **options)


def _operands(arrays):
    return tuple(arrays[name] for name in ("input", "offset", "weight", "bias", "mask"))


def host_forward(arrays, options, launch=host_launch):
    g = _geometry(arrays, options)
    return gpu.forward(*_operands(arrays), g, dtype_name=arrays["input"].dtype.name,
                       xp=numpy, launch=launch)


def host_backward(grad_output, arrays, options, launch=host_launch):
    g = _geometry(arrays, options)
    return gpu.backward(grad_output, *_operands(arrays), g,
                        dtype_name=arrays["input"].dtype.name, xp=numpy, launch=launch)


def assert_matches_numpy(arrays, options, grad_output, launch=host_launch):
    """Host-run forward and all five gradients equal the NumPy path's."""
    g = _geometry(arrays, options)
    rtol, atol = TOLERANCES[arrays["input"].dtype]

    output = host_forward(arrays, options, launch)
    expected = cpu.forward(*_operands(arrays), g)
    assert output.dtype == expected.dtype and output.shape == expected.shape
    assert numpy.isfinite(output).all()
    numpy.testing.assert_allclose(output, expected, rtol=rtol, atol=atol, err_msg="output")

    grads = host_backward(grad_output, arrays, options, launch)
    expected_grads = cpu.backward(grad_output, *_operands(arrays), g)
    for name, got, want in zip(GRAD_NAMES, grads, expected_grads):
        if want is None:
            assert got is None, name
            continue
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert numpy.isfinite(got).all(), name
        numpy.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"grad {name}")
    return output, grads


def _grad_output(rng, arrays, options):
    g = _geometry(arrays, options)
    return rng.standard_normal(g.output_shape).astype(arrays["input"].dtype)




@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)
@pytest.mark.parametrize("name", CASES)
def test_matches_numpy(name, dtype):
    rng = numpy.random.default_rng(1000 + list(CASES).index(name))
    arrays, options = split_case(conv_case(rng, dtype=dtype, **CASES[name]))
    assert_matches_numpy(arrays, options, _grad_output(rng, arrays, options))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)
def test_integer_offsets_on_borders_and_kinks(dtype):
    # Whole-pixel offsets put samples exactly on corners, on -1 and on H / W,
    # where the border test and the one-sided derivative must agree.
    rng = numpy.random.default_rng(7)
    arrays, options = split_case(conv_case(rng, dtype=dtype, size=(5, 4), offset_groups=2))
    arrays["offset"] = rng.integers(-6, 7, size=arrays["offset"].shape).astype(dtype)
    assert_matches_numpy(arrays, options, _grad_output(rng, arrays, options))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)
def test_non_finite_and_huge_offsets(dtype):
    rng = numpy.random.default_rng(11)
    arrays, options = split_case(conv_case(rng, dtype=dtype, offset_groups=2))
    offset = arrays["offset"]
    flat = offset.reshape(-1)
    bad = rng.choice(flat.size, size=flat.size // 3, replace=False)
    flat[bad] = rng.choice(numpy.array([numpy.nan, numpy.inf, -numpy.inf, 1e30, -1e30],
                                       dtype=dtype), size=bad.size)
    _, grads = assert_matches_numpy(arrays, options, _grad_output(rng, arrays, options))

    # A tap whose dy or dx is bad samples outside the map: zero offset and mask gradients.
    n, channels, out_h, out_w = offset.shape
    pairs = offset.reshape(n, channels // 2, 2, out_h, out_w)
    outside = ~(numpy.abs(pairs) < 1e29).all(axis=2)
    assert outside.any()
    grad_pairs = grads[1].reshape(pairs.shape)
    assert (grad_pairs.transpose(0, 1, 3, 4, 2)[outside] == 0).all()
    assert (grads[4][outside] == 0).all()


def _recording(calls):
    def launch(kernel, dtype_name, bits, count, **args):
        calls.append((kernel, bits))
        return host_launch(kernel, dtype_name, bits, count, **args)
    return launch


@pytest.mark.parametrize("images_per_chunk", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)
def test_small_workspace_limit_chunks_the_batch(monkeypatch, dtype, images_per_chunk):
    rng = numpy.random.default_rng(23 + images_per_chunk)
    arrays, options = split_case(
        conv_case(rng, dtype=dtype, batch=5, groups=2, offset_groups=2, size=(6, 5)))
    g = _geometry(arrays, options)
    column_bytes = g.in_channels * g.taps * g.out_h * g.out_w * numpy.dtype(dtype).itemsize
    monkeypatch.setattr(_workspace, "_limit", None)  # restored after the test
    cudeform.set_workspace_limit(images_per_chunk * column_bytes)

    calls = []
    assert_matches_numpy(arrays, options, _grad_output(rng, arrays, options),
                         launch=_recording(calls))
    im2col_launches = sum(kernel is DEFORM_IM2COL for kernel, _ in calls)
    chunks = -(-g.batch // images_per_chunk)
    assert im2col_launches == 2 * chunks  # once in the forward, once in the backward


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)
def test_64_bit_index_instantiation(monkeypatch, dtype):
    rng = numpy.random.default_rng(31)
    arrays, options = split_case(conv_case(
        rng, dtype=dtype, batch=3, groups=2, offset_groups=2, kernel=(3, 2),
        stride=(2, 1), padding=(1, 0), dilation=(2, 1), size=(7, 5), offset_scale=4.0))
    monkeypatch.setattr(gpu, "index_bits", lambda *sizes: 64)
    calls = []
    assert_matches_numpy(arrays, options, _grad_output(rng, arrays, options),
                         launch=_recording(calls))
    assert calls and all(bits == 64 for _, bits in calls)


def test_small_cases_use_32_bit_indices():
    rng = numpy.random.default_rng(37)
    arrays, options = split_case(conv_case(rng))
    calls = []
    host_backward(_grad_output(rng, arrays, options), arrays, options,
                  launch=_recording(calls))
    assert len(calls) == 3 and all(bits == 32 for _, bits in calls)


GRADCHECK_CASES = {
    "dcnv2-groups": dict(in_channels=2, out_channels=2, groups=2, offset_groups=2,
                         kernel=(2, 2), size=(4, 3), padding=(1, 0)),
    "kernel32-stride21-dil21": dict(in_channels=2, out_channels=2, offset_groups=2,
                                    kernel=(3, 2), stride=(2, 1), padding=(1, 0),
                                    dilation=(2, 1), size=(6, 4)),
}


@pytest.mark.parametrize("name", GRADCHECK_CASES)
def test_host_backward_matches_central_differences(name):
    """The host-run backward is the derivative of the host-run forward (float64)."""
    rng = numpy.random.default_rng(41 + list(GRADCHECK_CASES).index(name))
    # Sampling positions keep a fractional part in [0.1, 0.9], so every sample
    # stays on one bilinear piece under the step below.
    arrays, options = split_case(conv_case(
        rng, batch=1, dtype=numpy.float64, offset_scale=2.0, off_kinks=True,
        **GRADCHECK_CASES[name]))
    grad_output = _grad_output(rng, arrays, options)
    grads = host_backward(grad_output, arrays, options)

    def loss():
        return float(numpy.sum(host_forward(arrays, options) * grad_output))

    rtol, atol = TOLERANCES[numpy.dtype(numpy.float64)]
    for grad_name, grad in zip(GRAD_NAMES, grads):
        # The loss is linear in each single element (bilinear in y, x separately),
        # so central differences are exact up to rounding and the step can be
        # large, which keeps the rounding error under the float64 tolerance.
        expected = numerical_gradient(loss, arrays[grad_name], step=1e-3)
        numpy.testing.assert_allclose(grad, expected, rtol=rtol, atol=atol,
                                      err_msg=f"grad {grad_name}")
