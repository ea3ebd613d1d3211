"""Deterministic mode on the host: bit-identical gradients whatever the loop order.

A GPU runs the iterations of a grid-stride loop in no fixed order, and the order in
which float atomics arrive decides the last bits of a scatter's sums. The host shim
can walk every loop forward, reversed or in a fixed shuffle (tests/host/shim.h), which
stands in for that. In deterministic mode the scatters add in 64-bit fixed point with
integer atomics, whose sum does not depend on the order: every output and gradient of
all three ops must be bit-identical across the three orders. With float atomics (the
default) the results are only close; on the cases below some bits do differ.

The fixed-point results are also compared with float64 (float32 tolerances), the
rounding error of the fixed point is checked against the bound docs/how-it-works.md gives,
and non-finite contributions give the NaN and infinities that float sums give.
"""

from __future__ import annotations

import numpy
import pytest

from cudeform._gpu.signatures import (
    DEFORM_COL2IM, DEFORM_COL2IM_BOUND, FIXED_POINT_TO_FLOAT, MAX_ABS_EXPONENT,
)
from tests.helpers import CONV_CASES, TOLERANCES, conv_case, split_case
from tests.host.compare import recording_launch
from tests.host.loader import LOOP_ORDERS, compiler, loop_order
from tests.psroi_cases import psroi_case
from tests.roi_pool_cases import roi_pool_case, with_bad_rois
from tests.test_kernels_host import CONV
from tests.test_kernels_host_psroi_pool import PSROI_POOL
from tests.test_kernels_host_roi_pool import ROI_POOL

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")


def conv(rng, dtype, **case):
    return split_case(conv_case(rng, dtype=dtype, **case))


def roi_pool(rng, dtype):
    arrays, options = roi_pool_case(rng, dtype=dtype, rois=24, sampling_ratio=3)
    return with_bad_rois(rng, arrays, options, huge=False)[0], options


def psroi_pool(rng, dtype):
    return psroi_case(rng, dtype=dtype, num_classes=2, output_dim=4, group_size=2,
                      pooled_size=4)


# (op, case builder): cases where many contributions land on the same elements.
CASES = {
    "conv-dcnv2": (CONV, lambda rng, dtype: conv(rng, dtype, batch=3, in_channels=4,
                                                 out_channels=4, size=(5, 4),
                                                 offset_scale=3.0)),
    "conv-across-borders-groups": (CONV, lambda rng, dtype: conv(
        rng, dtype, **CONV_CASES["across-borders"])),
    "conv-64-channels-runs": (CONV, lambda rng, dtype: conv(
        rng, dtype, batch=2, in_channels=64, out_channels=2, size=(4, 4), offset_groups=2)),
    "roi-pool": (ROI_POOL, roi_pool),
    "psroi-pool": (PSROI_POOL, psroi_pool),
}
ids = pytest.mark.parametrize("name", CASES)
dtypes = pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64],
                                 ids=["float32", "float64"])


def run_in_orders(name, dtype, deterministic):
    """Forward and backward of a case in every loop order: ``{order: (output, grads)}``."""
    op, build = CASES[name]
    rng = numpy.random.default_rng(list(CASES).index(name))
    arrays, options = build(rng, dtype)
    grad_output = op.grad_output(rng, arrays, options)
    results = {}
    for order in LOOP_ORDERS:
        with loop_order(order):
            output = op.forward(arrays, options, deterministic=deterministic)
            grads = op.backward(grad_output, arrays, options, deterministic=deterministic)
        results[order] = (output, [g for g in grads if g is not None])
    return results


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@ids
@dtypes
def test_deterministic_results_are_bit_identical_in_every_loop_order(name, dtype):
    results = run_in_orders(name, dtype, deterministic=True)
    output, grads = results["forward"]
    for order in LOOP_ORDERS[1:]:
        other_output, other_grads = results[order]
        assert same_bits(other_output, output), order
        assert len(other_grads) == len(grads)
        for index, (got, want) in enumerate(zip(other_grads, grads)):
            assert same_bits(got, want), f"gradient {index} differs when walked {order}"


@ids
def test_default_float_atomics_are_only_close_across_loop_orders(name):
    """Float atomics: the orders agree to float32 tolerances, not to the bit. The input
    gradient (the scatter) of these float32 cases differs in its last bits between
    orders; the gathered results (output, offset gradients) do not."""
    results = run_in_orders(name, numpy.float32, deterministic=False)
    output, grads = results["forward"]
    rtol, atol = TOLERANCES[numpy.dtype(numpy.float32)]
    differing = 0
    for order in LOOP_ORDERS[1:]:
        other_output, other_grads = results[order]
        assert same_bits(other_output, output)
        for got, want in zip(other_grads, grads):
            numpy.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
        differing += not same_bits(other_grads[0], grads[0])  # the input gradient
    assert differing > 0, "float atomics gave the same bits in every order on this case"


@ids
def test_deterministic_float32_matches_float64(name):
    """The fixed-point input gradient in float32 against the NumPy path in float64 on
    the same values (the other gradients are gathers, unchanged by the mode)."""
    op, build = CASES[name]
    rng = numpy.random.default_rng(100 + list(CASES).index(name))
    arrays, options = build(rng, numpy.float32)
    grad_output = op.grad_output(rng, arrays, options)
    exact = {k: None if v is None else v.astype(numpy.float64) for k, v in arrays.items()}
    g = op.geometry(exact, options)
    expected = op.cpu.backward(grad_output.astype(numpy.float64), *op.operands(exact), g)[0]
    got = op.backward(grad_output, arrays, options, deterministic=True)[0]
    assert got.dtype == numpy.float32
    rtol, atol = TOLERANCES[numpy.dtype(numpy.float32)]
    numpy.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def test_deterministic_conv_scatters_in_fixed_point():
    rng = numpy.random.default_rng(5)
    arrays, options = conv(rng, numpy.float64)
    calls = []
    CONV.backward(CONV.grad_output(rng, arrays, options), arrays, options,
                  launch=recording_launch(calls), deterministic=True)
    names = [kernel.name for kernel, _, _ in calls]
    at = names.index(DEFORM_COL2IM.name)
    assert names[at - 1:at + 2] == [DEFORM_COL2IM_BOUND.name, DEFORM_COL2IM.name,
                                    FIXED_POINT_TO_FLOAT.name]


def test_fixed_point_rounding_error_is_within_the_documented_bound():
    """One huge output gradient sets a coarse scale; the other contributions round to
    it. The error per element is at most (its contributions) * 2**-(s+1), with
    s = 62 - ceil(log2 K) - e, K = rois * bins and max|grad_output| < 2**e, and it is
    not 0: the fixed point really rounds."""
    rng = numpy.random.default_rng(9)
    arrays, options = roi_pool_case(rng, dtype=numpy.float64, rois=16, sampling_ratio=2)
    g = ROI_POOL.geometry(arrays, options)
    grad_output = rng.standard_normal(g.output_shape)
    grad_output.reshape(-1)[0] = 2.0**40
    got, _ = ROI_POOL.backward(grad_output, arrays, options, deterministic=True)
    want, _ = ROI_POOL.backward(grad_output, arrays, options, deterministic=False)
    contributions = g.rois * g.pooled_h * g.pooled_w
    exponent = numpy.frexp(numpy.abs(grad_output).max())[1]
    s = 62 - (contributions - 1).bit_length() - exponent
    # Each output adds at most sampling_ratio**2 samples x 4 corners to its channel.
    per_element = contributions * options["sampling_ratio"] ** 2 * 4
    # Away from the huge gradient's own plane the float64 reference rounds at ~1e-12.
    small = numpy.abs(want) < 1e3
    error = numpy.abs(got - want)[small]
    float_rounding = 1e3 * 2.0**-52 * per_element
    assert small.mean() > 0.9 and s < 20
    assert error.max() <= per_element * 2.0 ** -(s + 1) + float_rounding
    assert error.max() > 1e3 * float_rounding, "no fixed-point rounding was seen"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("op_name", ["conv", "roi-pool", "psroi-pool"])
def test_deterministic_non_finite_gradients_match_float_sums(op_name):
    """NaN and infinities in the output gradient: NaN where a NaN or both infinities
    arrive, else the infinity that arrived, as with float atomics; finite elements
    stay close."""
    name = {"conv": "conv-dcnv2", "roi-pool": "roi-pool", "psroi-pool": "psroi-pool"}[op_name]
    op, build = CASES[name]
    rng = numpy.random.default_rng(13)
    arrays, options = build(rng, numpy.float64)
    grad_output = op.grad_output(rng, arrays, options)
    flat = grad_output.reshape(-1)
    flat[rng.choice(flat.size, 6, replace=False)] = [numpy.nan, numpy.inf, -numpy.inf,
                                                     numpy.inf, -numpy.inf, numpy.inf]
    fixed = op.backward(grad_output, arrays, options, deterministic=True)[0]
    floats = op.backward(grad_output, arrays, options, deterministic=False)[0]
    assert not numpy.isfinite(fixed).all()
    numpy.testing.assert_array_equal(numpy.isnan(fixed), numpy.isnan(floats))
    numpy.testing.assert_array_equal(numpy.isposinf(fixed), numpy.isposinf(floats))
    numpy.testing.assert_array_equal(numpy.isneginf(fixed), numpy.isneginf(floats))
    finite = numpy.isfinite(floats)
    rtol, atol = TOLERANCES[numpy.dtype(numpy.float64)]
    numpy.testing.assert_allclose(fixed[finite], floats[finite], rtol=rtol, atol=atol)


def test_max_abs_exponent_is_the_frexp_exponent_of_the_largest_value():
    from cudeform._gpu.scatter import FixedPoint, max_abs_bound
    from tests.host.loader import host_launch

    values = numpy.array([0.0, -3.0, 1e-300, numpy.nan, numpy.inf, 2.5], numpy.float64)
    target = FixedPoint(numpy, (1,), contributions=1)
    kernel, count, args = max_abs_bound(values)
    host_launch(kernel, "float64", 32, count, bound=target.bound, **args)
    assert target.bound[0] == numpy.frexp(3.0)[1] + 1100  # NaN and Inf are left out
    assert MAX_ABS_EXPONENT is kernel


def test_deterministic_bfloat16_views_in_every_loop_order():
    """The host logic on bfloat16 views (as the torch adapter hands them over), with the
    bfloat16 kernels emulated by the float32 host build: the fixed-point gradients are
    the same bits in every order and within 16 unit roundoffs of float64."""
    pytest.importorskip("torch")
    from cudeform._gpu import deform_conv as gpu
    from cudeform._gpu.storage import values
    from tests.gpu import UNIT_ROUNDOFF
    from tests.test_adapter_torch_gpu import bfloat16_view, emulated_bfloat16_launch

    rng = numpy.random.default_rng(17)
    arrays, options = conv(rng, numpy.float64, groups=2, in_channels=4, out_channels=4,
                           offset_groups=2, offset_scale=3.0)
    views = {k: None if v is None else bfloat16_view(v) for k, v in arrays.items()}
    g = CONV.geometry(arrays, options)
    grad_output = bfloat16_view(rng.standard_normal(g.output_shape))
    args = [views[k] for k in CONV.operand_names] + [g]
    engine = dict(dtype_name="bfloat16", xp=numpy, launch=emulated_bfloat16_launch,
                  deterministic=True)
    results = {}
    for order in LOOP_ORDERS:
        with loop_order(order):
            results[order] = gpu.backward(grad_output, *args, **engine)
    for order in LOOP_ORDERS[1:]:
        for got, want in zip(results[order], results["forward"]):
            assert (got is None and want is None) or same_bits(got, want), order
    exact = {k: None if v is None else values(v, "bfloat16", numpy).astype(numpy.float64)
             for k, v in views.items()}
    expected = CONV.cpu.backward(values(grad_output, "bfloat16", numpy).astype(numpy.float64),
                                 *CONV.operands(exact), g)
    for got, want in zip(results["forward"], expected):
        got = values(got, "bfloat16", numpy).astype(numpy.float64)
        atol = 16 * UNIT_ROUNDOFF["bfloat16"] * numpy.abs(want).max()
        numpy.testing.assert_allclose(got, want, rtol=0, atol=atol)
