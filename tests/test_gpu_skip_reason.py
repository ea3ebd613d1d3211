"""Why GPU work cannot run: "no CUDA device" first when there is none, CuPy's own message
in parentheses (the command line's ``--device cuda``, the tour and the GPU test skips)."""

from __future__ import annotations

import types

import pytest

from cudeform import _cli
from tests import gpu

INSUFFICIENT_DRIVER = ("cudaErrorInsufficientDriver: CUDA driver version is insufficient for "
                       "CUDA runtime version")


class CUDARuntimeError(RuntimeError):
    pass


def _fake_cupy(get_device_count):
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


def _failing():
    raise CUDARuntimeError(INSUFFICIENT_DRIVER)


def test_no_driver_reads_no_cuda_device_with_cupys_message(monkeypatch):
    monkeypatch.setattr(_cli, "driver_device_count", lambda: 0)
    monkeypatch.setattr(gpu, "cupy", _fake_cupy(_failing))
    expected = f"no CUDA device (CuPy: {INSUFFICIENT_DRIVER})"
    assert _cli.why_cupy_cannot_run(gpu.cupy) == expected
    assert gpu._why_no_gpu() == expected


def test_a_driver_with_devices_is_not_called_no_device(monkeypatch):
    for count in (1, None):  # a device, or a driver that fails in another way
        monkeypatch.setattr(_cli, "driver_device_count", lambda: count)
        assert _cli.why_cupy_cannot_run(_fake_cupy(_failing)) == (
            f"CuPy cannot use the CUDA device (CuPy: {INSUFFICIENT_DRIVER})")


def test_reason_without_cupy_or_devices(monkeypatch):
    monkeypatch.setattr(gpu, "cupy", None)
    assert gpu._why_no_gpu().startswith("no CUDA device (CuPy is not installed")
    monkeypatch.setattr(gpu, "cupy", _fake_cupy(lambda: 0))
    assert gpu._why_no_gpu() == "no CUDA device (CuPy counts 0 devices)"
    monkeypatch.setattr(gpu, "cupy", _fake_cupy(lambda: 1))
    assert gpu._why_no_gpu() is None


@pytest.mark.skipif(_cli.why_no_cuda() is None, reason="this machine has a GPU")
def test_this_machine_without_a_gpu_says_no_cuda_device():
    # Here the NVIDIA driver library itself is missing or finds no device.
    assert _cli.driver_device_count() == 0
    reason = _cli.why_no_cuda()
    assert reason.startswith("no CUDA device (CuPy") or reason.startswith("CuPy is not installed")


@pytest.mark.skipif(_cli.why_no_cuda() is not None, reason=str(_cli.why_no_cuda()))
def test_this_machine_with_a_gpu_counts_its_devices():
    assert _cli.driver_device_count() >= 1
    assert gpu.NO_GPU is None
