"""All three ops called from several Python threads at once give exactly what serial
calls give: the NumPy path, the host-run kernels (with per-call mode overrides and
per-thread loop orders) and the torch adapter with autograd; the mode overrides stay
per thread, the workspace limit is read once per call, and concurrent NumPy-path
calls leave the BLAS thread count as they found it.
"""

from __future__ import annotations

import threading
import time

import numpy
import pytest

import cudeform
from cudeform import _modes, _workspace
from cudeform._cpu import parallel
from tests.concurrency import assert_threads_match_serial, run_in_threads, same_bits
from tests.helpers import conv_case, split_case
from tests.host.loader import compiler, loop_order
from tests.psroi_cases import psroi_case
from tests.roi_pool_cases import roi_pool_case

needs_compiler = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")


def _conv_call(seed, dtype, **case):
    rng = numpy.random.default_rng(seed)
    case = conv_case(rng, dtype=dtype, **case)
    grad = rng.standard_normal(cudeform.deform_conv2d(**case).shape).astype(dtype)
    return lambda: (cudeform.deform_conv2d(**case),
                    tuple(cudeform.deform_conv2d_backward(grad, **case)))


def _pool_call(forward, backward, arrays, options, seed):
    output = forward(**arrays, **options)
    grad = numpy.random.default_rng(seed).standard_normal(output.shape).astype(output.dtype)
    return lambda: (forward(**arrays, **options), tuple(backward(grad, **arrays, **options)))


def numpy_path_calls():
    """Calls of every op on the NumPy path, of several shapes and both dtypes."""
    roi_arrays, roi_options = roi_pool_case(numpy.random.default_rng(2), dtype=numpy.float32)
    roi64_arrays, roi64_options = roi_pool_case(numpy.random.default_rng(3), rois=20,
                                                size=(9, 5), sampling_ratio=2)
    ps_arrays, ps_options = psroi_case(numpy.random.default_rng(4), num_classes=2,
                                       output_dim=4, dtype=numpy.float32)
    ps64_arrays, ps64_options = psroi_case(numpy.random.default_rng(5), num_classes=None)
    return [
        _conv_call(0, numpy.float64),
        _conv_call(1, numpy.float32, batch=5, groups=2, offset_groups=2, size=(9, 8)),
        _pool_call(cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward, roi_arrays,
                   roi_options, 6),
        _pool_call(cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward, roi64_arrays,
                   roi64_options, 7),
        _pool_call(cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward, ps_arrays,
                   ps_options, 8),
        _pool_call(cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward,
                   ps64_arrays, ps64_options, 9),
    ]


def _blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [pool["num_threads"] for pool in threadpoolctl.threadpool_info()
            if pool["user_api"] == "blas"]


def test_concurrent_numpy_path_calls_match_serial_calls():
    blas_before = _blas_threads()
    assert_threads_match_serial(numpy_path_calls())
    assert _blas_threads() == blas_before


def test_concurrent_numpy_path_calls_restore_the_blas_thread_count():
    # Regression: each call limited BLAS to one thread and restored the count it had
    # found, so calls that overlapped restored each other's limit and the last one out
    # could leave BLAS at one thread for good. The parts sleep, so that calls overlap.
    blas_before = _blas_threads()
    assert blas_before, "no BLAS library found"

    def part(_):
        time.sleep(0.002)

    run_in_threads([lambda: parallel.split(2, part)] * 8, threads=4, rounds=3)
    assert _blas_threads() == blas_before

    # A call alone, in any thread, still runs its parts with single-threaded BLAS.
    during = []
    run_in_threads([lambda: parallel.split(2, lambda _: during.append(_blas_threads()))],
                   threads=1, rounds=2)
    assert during == [[1] * len(blas_before)] * 4
    assert _blas_threads() == blas_before


# --- host-run kernels, with mode overrides and loop orders per thread -------------------

def _host_call(op, arrays, options, grad, deterministic, order):
    def call():
        with _modes.override(deterministic=deterministic), loop_order(order):
            # As cudeform._arrays.on_gpu does: the mode is read once per call.
            mode = _modes.is_deterministic()
            return (op.forward(arrays, options, deterministic=mode),
                    tuple(op.backward(grad, arrays, options, deterministic=mode)))
    return call


def host_run_calls():
    """Host-run calls of every op, in both scatter modes and every loop order."""
    from tests.test_kernels_host import CONV
    from tests.test_kernels_host_psroi_pool import PSROI_POOL
    from tests.test_kernels_host_roi_pool import ROI_POOL

    rng = numpy.random.default_rng(20)
    cases = [
        (CONV, *split_case(conv_case(rng, batch=3, size=(5, 4), offset_scale=3.0))),
        (CONV, *split_case(conv_case(rng, dtype=numpy.float32, groups=2, offset_groups=2))),
        (ROI_POOL, *roi_pool_case(rng, rois=16, sampling_ratio=2)),
        (ROI_POOL, *roi_pool_case(rng, dtype=numpy.float32)),
        (PSROI_POOL, *psroi_case(rng, num_classes=2, output_dim=4, group_size=2,
                                 pooled_size=4)),
    ]
    calls = []
    for index, (op, arrays, options) in enumerate(cases):
        grad = op.grad_output(rng, arrays, options)
        for deterministic, order in [(False, "forward"), (False, "reversed"), (True, "shuffled"),
                                     (None, "shuffled")]:
            calls.append(_host_call(op, arrays, options, grad, deterministic, order))
    return calls


@needs_compiler
def test_concurrent_host_runs_match_serial_runs():
    # Float atomics in different loop orders give different last bits, and fixed point
    # differs from both: a mode or an order leaking between threads shows.
    calls = host_run_calls()
    serial = assert_threads_match_serial(calls, threads=3)
    assert not same_bits(serial[0], serial[1])  # the loop order does show
    assert not same_bits(serial[0], serial[2])  # the scatter mode does show


@needs_compiler
def test_concurrent_loop_orders_stay_in_their_thread():
    # The loop order of the host run is per thread (loader.loop_order, shim.h): with
    # one order for the whole process, a thread's launches would walk in the order of
    # whichever thread set it last.
    from tests.test_kernels_host import CONV

    rng = numpy.random.default_rng(21)
    arrays, options = split_case(conv_case(rng, batch=1, in_channels=2, out_channels=2,
                                           size=(4, 4), offset_scale=3.0))
    grad = CONV.grad_output(rng, arrays, options)
    calls = [_host_call(CONV, arrays, options, grad, False, order)
             for order in ("forward", "reversed")]
    serial = assert_threads_match_serial(calls, threads=2, rounds=100)
    assert not same_bits(serial[0], serial[1])


def test_concurrent_mode_overrides_stay_in_their_thread(monkeypatch):
    monkeypatch.setattr(_modes, "_deterministic", None)
    monkeypatch.setattr(_modes, "_allow_tf32", False)
    monkeypatch.delenv(_modes.DETERMINISTIC_VARIABLE, raising=False)
    settings = [(True, True), (False, None), (None, True), (True, False)]
    inside = threading.Barrier(len(settings))
    seen = {}

    def use(index):
        deterministic, tf32 = settings[index]
        with _modes.override(deterministic=deterministic, allow_tf32=tf32):
            inside.wait()  # every thread is inside its own override now
            for _ in range(1000):
                seen.setdefault(index, set()).add((_modes.is_deterministic(),
                                                   _modes.allow_tf32()))
            inside.wait()
        return _modes.is_deterministic(), _modes.allow_tf32()

    results = run_in_threads([lambda i=i: use(i) for i in range(len(settings))],
                             threads=len(settings), rounds=1)
    for index, (deterministic, tf32) in enumerate(settings):
        assert seen[index] == {(bool(deterministic), bool(tf32))}
    for thread in results:
        assert thread[0] == [(False, False)] * len(settings)  # each back to the process value
    assert (_modes.is_deterministic(), _modes.allow_tf32()) == (False, False)


# --- the workspace limit, changed while calls run ------------------------------------------

@needs_compiler
def test_concurrent_workspace_limit_changes_give_one_limits_result(monkeypatch):
    # A call reads the limit once: with another thread switching it between two
    # values, each result is the serial result under one of them, bit for bit.
    from tests.test_kernels_host import CONV

    monkeypatch.setattr(_workspace, "_limit", None)
    rng = numpy.random.default_rng(30)
    arrays, options = split_case(conv_case(rng, batch=6, size=(6, 5), offset_scale=3.0))
    case = dict(arrays, **options)
    grad = CONV.grad_output(rng, arrays, options)

    def calls():
        return [lambda: tuple(CONV.backward(grad, arrays, options)),
                lambda: tuple(cudeform.deform_conv2d_backward(grad, **case))]

    limits = (1, 2**30)  # one image per chunk, or all images in one
    expected = []
    for limit in limits:
        cudeform.set_workspace_limit(limit)
        expected.append([call() for call in calls()])
    for index in range(len(calls())):
        assert not same_bits(expected[0][index], expected[1][index])  # the limit shows

    done = threading.Event()

    def switch():
        while not done.is_set():
            for limit in limits:
                cudeform.set_workspace_limit(limit)

    switcher = threading.Thread(target=switch, daemon=True)
    switcher.start()
    try:
        results = run_in_threads(calls(), threads=3, rounds=3)
    finally:
        done.set()
        switcher.join()
    for thread in results:
        for round_ in thread:
            for index, result in enumerate(round_):
                assert any(same_bits(result, serial[index]) for serial in expected)


# --- the torch adapter, with autograd --------------------------------------------------------

def _torch_call(torch, function, arrays, options, grad_names, dtype):
    grad_names = [name for name in grad_names if arrays.get(name) is not None]

    def call():
        tensors = {name: None if value is None else torch.tensor(value, dtype=dtype,
                                                                  requires_grad=name in grad_names)
                   for name, value in arrays.items()}
        output = function(**tensors, **options)
        output.backward(torch.ones_like(output))
        return (output.detach().float().numpy(),
                tuple(tensors[name].grad.float().numpy() for name in grad_names))
    return call


def test_concurrent_torch_autograd_matches_serial_calls():
    torch = pytest.importorskip("torch")
    from cudeform.adapters.torch import functional

    rng = numpy.random.default_rng(40)
    conv = conv_case(rng, groups=2, offset_groups=2)
    roi_arrays, roi_options = roi_pool_case(rng)
    ps_arrays, ps_options = psroi_case(rng, num_classes=2, output_dim=2)
    ps_options = {k: v for k, v in ps_options.items() if v is not None}
    calls = []
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        calls += [
            _torch_call(torch, functional.deform_conv2d,
                        {k: conv[k] for k in ("input", "offset", "weight", "bias", "mask")},
                        {k: conv[k] for k in ("stride", "padding", "dilation")},
                        ("input", "offset", "weight", "bias", "mask"), dtype),
            _torch_call(torch, functional.deform_roi_pool, roi_arrays, roi_options,
                        ("input", "offset"), dtype),
            _torch_call(torch, functional.deform_psroi_pool, ps_arrays, ps_options,
                        ("input", "offset"), dtype),
        ]
    assert_threads_match_serial(calls, threads=3)
