"""Every copy and allocation of an op happens on the GPU of its arrays, whatever device
is current: the order of operations with a fake device context (host), and the ops
on a second GPU with non-contiguous inputs while the first one is current (two GPUs).
"""

from __future__ import annotations

import numpy
import pytest

import cudeform
from cudeform import _arrays
from tests.gpu import NO_GPU, DeviceOp, cupy, noncontiguous_device
from tests.helpers import conv_case, split_case
from tests.psroi_cases import psroi_case
from tests.roi_pool_cases import roi_pool_case


class FakeDevice:
    """A device context that records entering and leaving, and which is current."""

    def __init__(self, log, name, current):
        self.log, self.name, self.current = log, name, current

    def __enter__(self):
        self.log.append(("enter", self.name))
        self.current.append(self.name)

    def __exit__(self, *exc):
        self.log.append(("exit", self.current.pop()))


class FakeArray:
    def __init__(self, device, contiguous):
        self.device = device
        self.contiguous = contiguous


class FakeArrayModule:
    """``ascontiguousarray`` records the device current when it copies."""

    def __init__(self, log, current):
        self.log, self.current = log, current

    def ascontiguousarray(self, array):
        if array.contiguous:
            return array
        self.log.append(("copy", self.current[-1]))
        return FakeArray(array.device, True)


def test_contiguous_copies_are_made_on_the_arrays_device():
    log, current = [], ["gpu0"]  # the other GPU is current
    gpu1 = FakeDevice(log, "gpu1", current)
    xp = FakeArrayModule(log, current)
    arrays = {"input": FakeArray(gpu1, False), "offset": FakeArray(gpu1, True), "mask": None,
              "weight": FakeArray(gpu1, False)}
    result = _arrays.contiguous_arrays(xp, arrays)
    assert log == [("enter", "gpu1"), ("copy", "gpu1"), ("copy", "gpu1"), ("exit", "gpu1")]
    assert current == ["gpu0"]
    assert result["mask"] is None and result["offset"] is arrays["offset"]
    assert all(a.contiguous for a in result.values() if a is not None)


def test_numpy_arrays_need_no_device():
    x = numpy.ones((2, 3)).T
    result = _arrays.contiguous_arrays(numpy, {"input": x, "mask": None})
    assert result["input"].flags.c_contiguous and result["mask"] is None
    numpy.testing.assert_array_equal(result["input"], x)


# --- two GPUs ------------------------------------------------------------------------------

OPS = {
    "deform_conv2d": (DeviceOp(cudeform.deform_conv2d, cudeform.deform_conv2d_backward,
                               ("output", "input", "offset", "weight", "bias", "mask")),
                      lambda rng: split_case(conv_case(rng, dtype=numpy.float64))),
    "deform_roi_pool": (DeviceOp(cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward,
                                 ("output", "input", "offset")),
                        lambda rng: roi_pool_case(rng, dtype=numpy.float64)),
    "deform_psroi_pool": (DeviceOp(cudeform.deform_psroi_pool,
                                   cudeform.deform_psroi_pool_backward,
                                   ("output", "input", "offset")),
                          lambda rng: psroi_case(rng, dtype=numpy.float64)),
}


def _two_gpus():
    if NO_GPU is not None:
        pytest.skip(NO_GPU)
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")


@pytest.mark.gpu
@pytest.mark.parametrize("name", OPS)
def test_noncontiguous_arrays_on_the_second_gpu_while_the_first_is_current(name):
    _two_gpus()
    op, make_case = OPS[name]
    rng = numpy.random.default_rng(3100)
    arrays, options = make_case(rng)
    grad_output = op.grad_output(rng, arrays, options)
    with cupy.cuda.Device(1):
        device = {k: noncontiguous_device(v) for k, v in arrays.items()}
        device_grad_output = noncontiguous_device(grad_output)
        cupy.cuda.Device(1).synchronize()
    pool = cupy.get_default_memory_pool()  # its byte counts are the current device's
    with cupy.cuda.Device(0):
        pool.free_all_blocks()
        held_before = pool.total_bytes()
        actual = op.assert_matches_numpy(arrays, options, grad_output, device_arrays=device,
                                         device_grad_output=device_grad_output)
        assert pool.total_bytes() == held_before, "the call allocated on GPU 0"
    for result in (actual[0], *actual[1]):
        assert result is None or result.device.id == 1


@pytest.mark.gpu
def test_kernel_functions_are_looked_up_once_per_device():
    if NO_GPU is not None:
        pytest.skip(NO_GPU)
    from cudeform._gpu.compile import get_function
    from cudeform._gpu.signatures import DEFORM_IM2COL

    function = get_function(DEFORM_IM2COL, "float", "int")
    assert get_function(DEFORM_IM2COL, "float", "int") is function
    assert get_function(DEFORM_IM2COL, "double", "int") is not function
    if cupy.cuda.runtime.getDeviceCount() > 1:
        with cupy.cuda.Device(1):
            assert get_function(DEFORM_IM2COL, "float", "int") is not function
