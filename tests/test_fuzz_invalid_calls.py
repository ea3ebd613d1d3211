"""Property-based fuzzing of invalid calls: a random valid call of each op, forward or
backward, through the core API or the PyTorch adapter, with one argument corrupted
(``tests/fuzz_calls.py``). The only outcomes allowed are a TypeError or ValueError
that names the argument, or, where the corruption may leave the call valid, a result:
never another exception, a crash, or an allocation the size of a zero-stride input.

``pytest -k fuzz`` selects these tests.
"""

from __future__ import annotations

import functools
import itertools
import types

import numpy
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests import fuzz_calls  # noqa: E402
from tests.fuzz_calls import OPS, arguments, check_outcome, corruptions  # noqa: E402
from tests.gpu import NO_GPU, cupy  # noqa: E402

# Each example makes a few tiny arrays and fails its checks (or runs a tiny op).
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL_KINDS = ("kind", "dtype", "mix", "ndim", "size", "large", "option")


def _numpy_array(spec):
    if spec.large:
        return numpy.broadcast_to(numpy.zeros((), spec.dtype), spec.shape)
    return numpy.zeros(spec.shape, spec.dtype)


NUMPY = types.SimpleNamespace(
    kinds=ALL_KINDS, option_values=fuzz_calls.option_values, make=_numpy_array,
    junk=lambda array: [array.tolist(), 1.0, "input", numpy.float32(1), object()],
    bad_dtypes=[numpy.int32, numpy.int64, numpy.uint8, numpy.bool_, numpy.complex64,
                numpy.complex128, object, numpy.float16, numpy.str_])


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("op", sorted(OPS))
@FUZZ
@given(data=st.data())
def test_fuzz_invalid_core_calls(op, backward, data):
    call = data.draw(OPS[op](), label="valid call")
    corruption = data.draw(corruptions(call, backward, NUMPY), label="corruption")
    kwargs = arguments(call, corruption, backward, NUMPY.make)
    function = call.backward if backward else call.forward
    check_outcome(lambda: function(**kwargs), call, corruption)


# --- CuPy arrays (on a GPU) -------------------------------------------------------------


def _cupy_array(spec, floats):
    dtype = floats.get(numpy.dtype(spec.dtype).name, spec.dtype)
    if spec.large:
        return cupy.broadcast_to(cupy.zeros((), dtype), spec.shape)
    return cupy.zeros(spec.shape, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=str(NO_GPU))
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("op", sorted(OPS))
@FUZZ
@given(data=st.data())
def test_fuzz_invalid_cupy_calls(op, backward, data):
    floats = data.draw(st.permutations([numpy.float16, numpy.float32, numpy.float64]),
                       label="float dtypes")
    caller = types.SimpleNamespace(
        kinds=ALL_KINDS, option_values=fuzz_calls.option_values,
        make=functools.partial(_cupy_array, floats=dict(float32=floats[0], float64=floats[1])),
        bad_dtypes=[numpy.int32, numpy.int64, numpy.uint8, numpy.bool_, numpy.complex64],
        junk=lambda array: [array.tolist(), 1.0, "input", numpy.zeros(array.shape), object()])
    call = data.draw(OPS[op](), label="valid call")
    corruption = data.draw(corruptions(call, backward, caller), label="corruption")
    kwargs = arguments(call, corruption, backward, caller.make)
    function = call.backward if backward else call.forward
    check_outcome(lambda: function(**kwargs), call, corruption)


# --- the PyTorch adapter ----------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


def _torch_array(spec, floats, device):
    """The tensor of ``spec`` on ``device``; its NumPy float dtypes become the torch
    dtypes ``floats`` maps them to (so that 16-bit tensors are fuzzed too, and a mix
    stays a mix)."""
    torch = _torch()
    dtype = spec.dtype if isinstance(spec.dtype, torch.dtype) else \
        floats[numpy.dtype(spec.dtype).name]
    if spec.large:
        return torch.zeros((), dtype=dtype, device=device).expand(spec.shape)
    return torch.zeros(spec.shape, dtype=dtype, device=device)


def _torch_caller(floats, device, *, backward):
    torch = _torch()
    make = functools.partial(_torch_array, floats=floats, device=device)
    bad_dtypes = [torch.int32, torch.int64, torch.uint8, torch.int8, torch.bool,
                  torch.complex64]
    if not backward:  # the functional ops: every kind of corruption
        return types.SimpleNamespace(
            kinds=ALL_KINDS, option_values=fuzz_calls.option_values, make=make,
            bad_dtypes=bad_dtypes,
            junk=lambda array: [array.tolist(), 1.0, "input", numpy.zeros(array.shape),
                                object()] + [torch.zeros(array.shape)] * (device != "cpu"))
    # torch.ops.cudeform.<op>_backward: the dispatcher checks the schema's Python kinds
    # (a str for an int[] is its own RuntimeError), so only values of the right kind.
    return types.SimpleNamespace(
        kinds=ALL_KINDS, option_values=_schema_values, make=make,
        bad_dtypes=bad_dtypes, junk=lambda array: [])


def _schema_values(kind):
    if kind == "positive":
        return [0.0, -0.5, float("nan"), float("inf")]
    if kind == "finite":
        return [float("nan"), float("inf"), -float("inf")]
    form, minimum = kind
    if form == "int":
        return [minimum - 1, -(2**31), 2**31, 2**62]
    return [[minimum - 1, minimum], [1], [1, 2, 3], [1, 2**31], [2**40, 1]]


def _adapter_function(op):
    from cudeform.adapters.torch import functional

    return getattr(functional, op)


def _backward_op(op, kwargs):
    """``torch.ops.cudeform.<op>_backward`` with the schema's types."""
    torch = _torch()
    for name in ("stride", "padding", "dilation", "output_size"):
        if isinstance(kwargs.get(name), int):
            kwargs[name] = [kwargs[name]] * 2
        elif isinstance(kwargs.get(name), tuple):
            kwargs[name] = list(kwargs[name])
    if "part_size" in kwargs and kwargs["part_size"] is None:
        kwargs["part_size"] = kwargs["pooled_size"]
    for name in ("spatial_scale", "gamma", "trans_std"):
        if isinstance(kwargs.get(name), int):
            kwargs[name] = float(kwargs[name])
    return lambda: getattr(torch.ops.cudeform, f"{op}_backward")(**kwargs)


def _torch_sees_no_gpu():
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    _torch_sees_no_gpu(), reason="PyTorch sees no CUDA device")])]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("device", DEVICES)
@FUZZ
@given(data=st.data())
def test_fuzz_invalid_torch_calls(device, op, backward, data):
    torch = _torch()
    floats = data.draw(st.permutations([torch.float16, torch.bfloat16, torch.float32,
                                        torch.float64]), label="float dtypes")
    caller = _torch_caller(dict(float32=floats[0], float64=floats[1]), device,
                           backward=backward)
    call = data.draw(OPS[op](), label="valid call")
    corruption = data.draw(corruptions(call, backward, caller), label="corruption")
    kwargs = arguments(call, corruption, backward, caller.make)
    run = _backward_op(op, kwargs) if backward else \
        (lambda: _adapter_function(op)(**kwargs))
    check_outcome(run, call, corruption)


# --- regressions the fuzzing found -----------------------------------------------------


def test_fuzz_regression_large_invalid_call_is_checked_before_any_copy():
    # A zero-stride input of 2**40 elements whose batch does not match the offset: the
    # shapes are checked before the arrays are made contiguous (it was a MemoryError).
    large = numpy.broadcast_to(numpy.float32(0), (2**20, 2**20, 1, 1))
    with pytest.raises(ValueError, match=r"weight.shape\[1\] is not valid"):
        fuzz_calls.cudeform.deform_conv2d(large, numpy.zeros((2**20, 2, 1, 1), numpy.float32),
                                          numpy.ones((3, 7, 1, 1), numpy.float32))


def test_fuzz_regression_16_bit_tensors_are_checked_before_conversion():
    # float16 CPU tensors are copied to float32 for the NumPy path; a zero-stride RoI
    # tensor of 2**33 elements with the wrong width is rejected first (it was an
    # allocation of 32 GiB).
    torch = _torch()
    from cudeform.adapters.torch import deform_roi_pool

    rois = torch.zeros((), dtype=torch.float16).expand(2**31 + 1, 4)
    with pytest.raises(ValueError, match=r"^rois.shape is not valid: expected \(R, 5\)"):
        deform_roi_pool(torch.zeros(1, 1, 4, 4, dtype=torch.float16), rois, output_size=2)


def test_fuzz_regression_the_ops_name_a_missing_tensor_as_a_tensor():
    torch = _torch()
    x, w = torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 1, 1)
    with pytest.raises(TypeError, match=r"^input must be a torch.Tensor, got NoneType$"):
        torch.ops.cudeform.deform_conv2d_backward(torch.zeros(1, 1, 3, 3), None,
                                                  torch.zeros(1, 2, 3, 3), w, None, [1, 1],
                                                  [0, 0], [1, 1], None)
    assert x.shape == (1, 1, 3, 3)


@pytest.mark.parametrize("call, error, match", [
    # zero channels: a ZeroDivisionError, and a NumPy reshape error
    (lambda: fuzz_calls.cudeform.deform_conv2d(
        numpy.zeros((1, 0, 3, 3)), numpy.zeros((1, 2, 3, 3)), numpy.zeros((1, 1, 1, 1))),
     ValueError, r"^input.shape\[1\] is not valid: expected a positive number of channels"),
    (lambda: fuzz_calls.cudeform.deform_roi_pool(
        numpy.zeros((1, 0, 3, 3)), numpy.zeros((1, 5)), output_size=2),
     ValueError, r"^input.shape is not valid: expected positive channels, height and width"),
    # options past the C types: OverflowErrors, and NumPy's "array is too big"
    (lambda: fuzz_calls.cudeform.deform_conv2d(
        numpy.zeros((1, 1, 3, 3)), numpy.zeros((1, 2, 1, 1)), numpy.zeros((1, 1, 1, 1)),
        stride=2**70), ValueError, r"^stride is not valid: expected values <= 2147483647"),
    (lambda: fuzz_calls.cudeform.deform_roi_pool(
        numpy.zeros((1, 1, 3, 3)), numpy.zeros((0, 5)), output_size=2**31),
     ValueError, r"^output_size is not valid: expected values <= 2147483647"),
    (lambda: fuzz_calls.cudeform.deform_roi_pool(
        numpy.zeros((1, 1, 3, 3)), numpy.zeros((1, 5)), output_size=2, spatial_scale=10**400),
     ValueError, r"^spatial_scale is not valid: expected a positive number"),
    # an endless iterable as a pair: it used to be read to its end
    (lambda: fuzz_calls.cudeform.deform_roi_pool(
        numpy.zeros((1, 1, 3, 3)), numpy.zeros((1, 5)), output_size=itertools.count()),
     ValueError, r"^output_size is not valid: expected an int or a pair of ints"),
])
def test_fuzz_regression_edge_values(call, error, match):
    with pytest.raises(error, match=match):
        call()
