"""A KeyboardInterrupt or MemoryError in the middle of a call leaves nothing behind.

Faults are injected at the points a call passes: every kernel launch of a host
run, the allocations of its host logic, every parallel section of the NumPy path
(in a worker thread), its NumPy allocations (:func:`fault_points`), and every
parallel section inside the torch adapter's autograd forward and backward. After
each fault the settings are what they were (deterministic and TF32 modes, workspace
limit, per-call overrides, loop order, BLAS threads), the inputs are untouched, and
the next call returns exactly what it returned before the fault.
"""

from __future__ import annotations

import threading
import time

import numpy
import pytest

import cudeform
from cudeform import _arrays, _modes, _workspace
from cudeform._cpu import parallel
from cudeform._gpu import deform_conv as conv_gpu
from cudeform._gpu.forward_engine import default_engine
from cudeform._gpu.gemm import numpy_gemm
from tests.concurrency import same_bits
from tests.helpers import conv_case, split_case
from tests.host import loader
from tests.host.compare import recording_launch
from tests.host.loader import compiler, host_launch, loop_order
from tests.psroi_cases import psroi_case
from tests.roi_pool_cases import roi_pool_case

needs_compiler = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")
FAULTS = pytest.mark.parametrize("fault", [KeyboardInterrupt, MemoryError])


@pytest.fixture
def unusual_settings(monkeypatch):
    """Process-wide settings away from their defaults for the test (restored after)."""
    monkeypatch.setattr(_modes, "_deterministic", None)
    monkeypatch.setattr(_modes, "_allow_tf32", False)
    monkeypatch.setattr(_workspace, "_limit", None)
    cudeform.set_deterministic(False)
    cudeform.set_allow_tf32(True)
    cudeform.set_workspace_limit(2**16)  # several chunks for the convolution cases


def settings():
    """Everything a call could leave changed behind it."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return dict(
        deterministic=cudeform.is_deterministic(), allow_tf32=cudeform.allow_tf32(),
        workspace_limit=cudeform.workspace_limit(), overrides=_modes._overrides.get(),
        bfloat16_views=_arrays._bfloat16_views.get(), loop_order=loader._loop_order.get(),
        blas=[pool["num_threads"] for pool in threadpoolctl.threadpool_info()
              if pool["user_api"] == "blas"])


def fault_points(count, every_up_to=30, spread=30):
    """Which of ``count`` points get a fault: each of the first ``every_up_to``, then
    ``spread`` more spread evenly up to the last."""
    spread_points = numpy.linspace(1, count, spread).round().astype(int).tolist()
    return sorted({*range(1, min(count, every_up_to) + 1), *spread_points})


def _copies(arrays):
    return {name: None if value is None else value.copy() for name, value in arrays.items()}


def _assert_fault_leaves_nothing(call, fault_at, faults, fault, arrays):
    """``call(fault_at(k))`` raises ``fault`` for each k in ``faults``; after each, the
    settings and ``arrays`` are unchanged and ``call(None)`` gives its earlier result."""
    before, inputs = settings(), _copies(arrays)
    reference = call(None)
    for k in faults:
        with _modes.override(deterministic=True), loop_order("shuffled"):
            with pytest.raises(fault):
                call(fault_at(k))
        assert settings() == before, f"fault {k}"
        assert same_bits(tuple(arrays.values()), tuple(inputs.values())), f"fault {k}"
        assert same_bits(call(None), reference), f"fault {k}"


# --- the host run: a fault at the k-th launch or allocation ----------------------------

def _host_cases():
    from tests.test_kernels_host import CONV
    from tests.test_kernels_host_psroi_pool import PSROI_POOL
    from tests.test_kernels_host_roi_pool import ROI_POOL

    rng = numpy.random.default_rng(50)
    return {
        "conv": (CONV, *split_case(conv_case(rng, batch=3, size=(5, 4)))),
        "roi-pool": (ROI_POOL, *roi_pool_case(rng)),
        "psroi-pool": (PSROI_POOL, *psroi_case(rng, num_classes=2, output_dim=2)),
    }


HOST_CASES = ("conv", "roi-pool", "psroi-pool")


def faulty_launch(k, fault):
    """A host launcher whose k-th launch raises ``fault`` instead of running."""
    launched = []

    def launch(kernel, dtype_name, bits, count, **args):
        launched.append(kernel)
        if len(launched) == k:
            raise fault(f"injected at launch {k} ({kernel.name})")
        return host_launch(kernel, dtype_name, bits, count, **args)
    return launch


class FaultyAllocations:
    """``numpy``, except that its k-th allocation (counted over all threads) raises
    ``fault``."""

    ALLOCATIONS = ("empty", "zeros", "ones", "full", "empty_like", "zeros_like")

    def __init__(self, k, fault):
        self.k, self.fault, self.count = k, fault, 0
        self._lock = threading.Lock()  # the NumPy path allocates in its worker threads

    def __getattr__(self, name):
        function = getattr(numpy, name)
        if name not in self.ALLOCATIONS:
            return function

        def allocate(*args, **kwargs):
            with self._lock:
                self.count += 1
                fails = self.count == self.k
            if fails:
                raise self.fault(f"injected at allocation {self.k} ({name})")
            return function(*args, **kwargs)
        return allocate


def _host_call(op, arrays, options, grad, deterministic, launch=host_launch, xp=numpy):
    g = op.geometry(arrays, options)
    engine = dict(dtype_name=arrays["input"].dtype.name, xp=xp, launch=launch,
                  gemm=numpy_gemm, deterministic=deterministic)
    # The convolution picks its forward by the array module; a stand-in for NumPy must
    # get the host's choice (im2col) explicitly.
    forward_engine = dict(engine=default_engine(numpy)) if op.gpu is conv_gpu else {}
    return (op.gpu.forward(*op.operands(arrays), g, **engine, **forward_engine),
            tuple(op.gpu.backward(grad, *op.operands(arrays), g, **engine)))


@needs_compiler
@FAULTS
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize("name", HOST_CASES)
def test_fault_at_any_host_launch(unusual_settings, name, deterministic, fault):
    op, arrays, options = _host_cases()[name]
    grad = op.grad_output(numpy.random.default_rng(0), arrays, options)
    calls = []
    _host_call(op, arrays, options, grad, deterministic, launch=recording_launch(calls))
    assert len(calls) >= 3

    def call(launch):
        return _host_call(op, arrays, options, grad, deterministic,
                          launch=launch or host_launch)

    _assert_fault_leaves_nothing(call, lambda k: faulty_launch(k, fault),
                                 range(1, len(calls) + 1), fault, arrays)


@needs_compiler
@FAULTS
@pytest.mark.parametrize("name", HOST_CASES)
def test_fault_at_any_host_allocation(unusual_settings, name, fault):
    op, arrays, options = _host_cases()[name]
    grad = op.grad_output(numpy.random.default_rng(0), arrays, options)
    counter = FaultyAllocations(0, fault)
    _host_call(op, arrays, options, grad, True, xp=counter)
    assert counter.count >= 3

    def call(xp):
        return _host_call(op, arrays, options, grad, True, xp=xp or numpy)

    _assert_fault_leaves_nothing(call, lambda k: FaultyAllocations(k, fault),
                                 fault_points(counter.count), fault, arrays)


# --- the NumPy path and the torch adapter: a fault in the k-th parallel section -----------

def faulty_split(monkeypatch, fault):
    """Make the k-th ``parallel.split`` raise ``fault`` in its first part (a worker
    thread when there are several); returns a function that sets k (0: no fault) and
    returns the number of sections entered since it was last called."""
    real_split, state = parallel.split, dict(k=0, count=0)

    def split(count, function):
        state["count"] += 1
        if state["count"] != state["k"]:
            return real_split(count, function)

        def first_part_fails(part):
            if part.start == 0:
                raise fault(f"injected in parallel section {state['k']}")
            return function(part)
        return real_split(count, first_part_fails)

    def arm(k):
        entered, state["count"], state["k"] = state["count"], 0, k
        return entered

    monkeypatch.setattr(parallel, "split", split)
    return arm


def test_fault_in_a_parallel_part_returns_after_every_part(monkeypatch):
    # Regression: when a part failed, split raised while the other parts still ran,
    # so a failed call left work (and the memory it allocates) running behind it.
    monkeypatch.setenv(parallel.ENVIRONMENT_VARIABLE, "2")
    second_started, finished = threading.Event(), []

    def part(part):
        if part.start == 0:
            assert second_started.wait(60)
            raise MemoryError("injected")
        second_started.set()
        time.sleep(0.2)
        finished.append(part)

    with pytest.raises(MemoryError):
        parallel.split(2, part)
    assert finished == [slice(1, 2)]


def _numpy_path_calls():
    rng = numpy.random.default_rng(60)
    conv = conv_case(rng, batch=4, size=(6, 5))
    roi_arrays, roi_options = roi_pool_case(rng)
    ps_arrays, ps_options = psroi_case(rng, num_classes=2, output_dim=2)
    grads = {}

    def run(forward, backward, arrays, options):
        def call():
            output = forward(**arrays, **options)
            grad = grads.setdefault(forward, rng.standard_normal(output.shape))
            return output, tuple(backward(grad, **arrays, **options))
        return call, arrays

    return {
        "conv": run(cudeform.deform_conv2d, cudeform.deform_conv2d_backward,
                    {k: conv[k] for k in ("input", "offset", "weight", "bias", "mask")},
                    {k: conv[k] for k in ("stride", "padding", "dilation")}),
        "roi-pool": run(cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward,
                        roi_arrays, roi_options),
        "psroi-pool": run(cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward,
                          ps_arrays, ps_options),
    }


@FAULTS
@pytest.mark.parametrize("name", HOST_CASES)
def test_fault_in_any_numpy_path_section(unusual_settings, monkeypatch, name, fault):
    call, arrays = _numpy_path_calls()[name]
    arm = faulty_split(monkeypatch, fault)
    call()
    sections = arm(0)
    assert sections >= 2

    def armed_call(k):
        arm(k or 0)
        return call()

    _assert_fault_leaves_nothing(armed_call, lambda k: k, range(1, sections + 1), fault,
                                 arrays)


@FAULTS
@pytest.mark.parametrize("name", HOST_CASES)
def test_fault_at_any_numpy_path_allocation(unusual_settings, monkeypatch, name, fault):
    call, arrays = _numpy_path_calls()[name]
    counter = FaultyAllocations(0, fault)
    for allocation in FaultyAllocations.ALLOCATIONS:
        monkeypatch.setattr(numpy, allocation, getattr(counter, allocation))
    call()
    allocations = counter.count
    assert allocations >= 2

    def armed_call(k):
        counter.k, counter.count = k or 0, 0
        return call()

    _assert_fault_leaves_nothing(armed_call, lambda k: k, fault_points(allocations), fault,
                                 arrays)


@FAULTS
@pytest.mark.parametrize("deterministic_torch", [False, True])
def test_fault_in_torch_autograd(unusual_settings, monkeypatch, fault, deterministic_torch):
    torch = pytest.importorskip("torch")
    from cudeform.adapters.torch import functional

    rng = numpy.random.default_rng(70)
    conv = conv_case(rng, batch=3, groups=2, offset_groups=2)
    names = ("input", "offset", "weight", "bias", "mask")
    arrays = {name: conv[name] for name in names}

    def call(k):
        arm(k or 0)
        tensors = {name: torch.tensor(arrays[name], requires_grad=True) for name in names}
        output = functional.deform_conv2d(**tensors, stride=conv["stride"],
                                          padding=conv["padding"], dilation=conv["dilation"])
        output.backward(torch.ones_like(output))
        return output.detach().numpy(), tuple(tensors[name].grad.numpy() for name in names)

    arm = faulty_split(monkeypatch, fault)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic_torch)
    try:
        call(None)
        sections = arm(0)
        assert sections >= 4  # forward and backward
        _assert_fault_leaves_nothing(call, lambda k: k, range(1, sections + 1), fault, arrays)
        assert torch.are_deterministic_algorithms_enabled() == deterministic_torch
    finally:
        torch.use_deterministic_algorithms(previous)
