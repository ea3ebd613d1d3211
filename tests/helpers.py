"""Shared test utilities: dtypes and tolerances, random deformable-convolution cases,
bad offsets, finite differences."""

from __future__ import annotations

import numpy
import pytest

from cudeform._shapes import conv_output_size, deform_conv2d_geometry

# The dtypes every implementation supports, and the parametrisation over them.
DTYPES = (numpy.float32, numpy.float64)
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)

# Configurations every backend comparison covers, as conv_case keyword arguments.
CONV_CASES = {
    "dcnv2": dict(),
    "dcnv1-no-bias": dict(mask=False, bias=False),
    "mask-no-bias": dict(bias=False),
    "bias-no-mask": dict(mask=False),
    "groups2-offset-groups4": dict(in_channels=4, out_channels=6, groups=2, offset_groups=4),
    "groups4-offset-groups2": dict(in_channels=4, out_channels=8, groups=4, offset_groups=2),
    "kernel32-stride21-pad10-dil21": dict(kernel=(3, 2), stride=(2, 1), padding=(1, 0),
                                          dilation=(2, 1), size=(9, 7), offset_groups=2),
    "batch0": dict(batch=0),
    "batch1": dict(batch=1),
    "batch33": dict(batch=33, in_channels=2, out_channels=3, size=(5, 4)),
    # Offsets wider than the map send samples across every border and far outside.
    "across-borders": dict(size=(5, 4), offset_scale=12.0, offset_groups=2),
}

# Per-dtype tolerances (rtol, atol) for comparing two implementations.
TOLERANCES = {
    numpy.dtype("float64"): (1e-10, 1e-10),
    numpy.dtype("float32"): (1e-4, 1e-4),
}

# Offsets that send a sample outside every map: non-finite or huge.
BAD_VALUES = (numpy.nan, numpy.inf, -numpy.inf, 1e30, -1e30)


def assert_close(actual, expected, dtype=numpy.float64, **kwargs):
    """``assert_allclose`` with the TOLERANCES of ``dtype``."""
    rtol, atol = TOLERANCES[numpy.dtype(dtype)]
    numpy.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, **kwargs)


def force_64_bit_indices(monkeypatch, gpu_module):
    """Make a ``cudeform._gpu`` op module launch every kernel with 64-bit indices."""
    monkeypatch.setattr(gpu_module, "index_bits", lambda *sizes: 64)


def plant_bad_values(rng, array, count, values=BAD_VALUES):
    """Set ``count`` random elements of ``array`` (in place) to values drawn from ``values``."""
    flat = array.reshape(-1)
    hit = rng.choice(flat.size, size=count, replace=False)
    flat[hit] = rng.choice(numpy.array(values, dtype=array.dtype), size=hit.size)


def conv_case(rng, *, batch=2, in_channels=4, out_channels=6, groups=1, offset_groups=1,
              kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), size=(7, 6),
              mask=True, bias=True, dtype=numpy.float64, offset_scale=2.0,
              off_kinks=False):
    """Random arguments of ``deform_conv2d`` as a dict of keyword arguments.

    With ``off_kinks`` every sampling position has a fractional part in
    [0.1, 0.9], away from the bilinear kinks at integers, so that central
    differences with a small step see a smooth function.
    """
    kh, kw = kernel
    height, width = size
    weight_shape = (out_channels, in_channels // groups, kh, kw)
    input_shape = (batch, in_channels, height, width)
    out_h = conv_output_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = conv_output_size(width, kw, stride[1], padding[1], dilation[1])
    offset_shape = (batch, 2 * offset_groups * kh * kw, out_h, out_w)
    if off_kinks:
        whole = rng.integers(-int(offset_scale), int(offset_scale) + 1, size=offset_shape)
        offset = whole + rng.uniform(0.1, 0.9, size=offset_shape)
    else:
        offset = rng.uniform(-offset_scale, offset_scale, size=offset_shape)
    case = dict(
        input=rng.standard_normal(input_shape).astype(dtype),
        offset=offset.astype(dtype),
        weight=rng.standard_normal(weight_shape).astype(dtype),
        bias=rng.standard_normal(out_channels).astype(dtype) if bias else None,
        mask=(rng.uniform(0, 1, (batch, offset_groups * kh * kw, out_h, out_w)).astype(dtype)
              if mask else None),
        stride=stride, padding=padding, dilation=dilation,
    )
    deform_conv2d_geometry(case["input"].shape, case["offset"].shape, case["weight"].shape,
                           stride=stride, padding=padding, dilation=dilation)
    return case


def split_case(case):
    """``(arrays, options)`` of a case: arrays by name and the stride/padding/dilation."""
    options = {k: case[k] for k in ("stride", "padding", "dilation")}
    arrays = {k: v for k, v in case.items() if k not in options}
    return arrays, options


def integer_offset_case(rng, dtype):
    """``(arrays, options)`` of a case whose offsets are whole pixels in [-6, 6]."""
    arrays, options = split_case(conv_case(rng, dtype=dtype, size=(5, 4), offset_groups=2))
    arrays["offset"] = rng.integers(-6, 7, size=arrays["offset"].shape).astype(dtype)
    return arrays, options


def bad_offset_case(rng, dtype):
    """``(arrays, options)`` with a third of the offsets non-finite or huge (BAD_VALUES)."""
    arrays, options = split_case(conv_case(rng, dtype=dtype, offset_groups=2))
    plant_bad_values(rng, arrays["offset"], arrays["offset"].size // 3)
    return arrays, options


def assert_outside_taps_get_zero_gradients(offset, grad_offset, grad_mask, far=1e29):
    """A tap whose dy or dx is non-finite or at least ``far`` samples outside the map: its
    offset and mask gradients are zero. Arrays are NumPy ones, shaped as in ``deform_conv2d``."""
    n, channels, out_h, out_w = offset.shape
    pairs = offset.reshape(n, channels // 2, 2, out_h, out_w)
    outside = ~(numpy.abs(pairs) < far).all(axis=2)
    assert outside.any()
    grad_pairs = grad_offset.reshape(pairs.shape).transpose(0, 1, 3, 4, 2)
    assert (grad_pairs[outside] == 0).all()
    assert (grad_mask[outside] == 0).all()


def numerical_gradient(loss, array, step=1e-6):
    """Central differences of the scalar ``loss()`` with respect to each element of ``array``.

    ``array`` is perturbed in place and restored.
    """
    grad = numpy.zeros_like(array, dtype=numpy.float64)
    flat = array.reshape(-1)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + step
        plus = loss()
        flat[i] = original - step
        minus = loss()
        flat[i] = original
        grad.reshape(-1)[i] = (plus - minus) / (2 * step)
    return grad

