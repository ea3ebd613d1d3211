"""Why GPU tests skip: the reason says "no CUDA device" first, CuPy's error after it."""

from __future__ import annotations

import types

from tests import gpu


def _fake_cupy(get_device_count):
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


def test_reason_when_the_driver_is_missing(monkeypatch):
    class CUDARuntimeError(RuntimeError):
        pass

    def fail():
        raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                               "insufficient for CUDA runtime version")

    monkeypatch.setattr(gpu, "cupy", _fake_cupy(fail))
    assert gpu._why_no_gpu() == ("no CUDA device (CUDARuntimeError: cudaErrorInsufficientDriver:"
                                 " CUDA driver version is insufficient for CUDA runtime version)")


def test_reason_without_cupy_or_devices(monkeypatch):
    monkeypatch.setattr(gpu, "cupy", None)
    assert gpu._why_no_gpu().startswith("no CUDA device (CuPy is not installed")
    monkeypatch.setattr(gpu, "cupy", _fake_cupy(lambda: 0))
    assert gpu._why_no_gpu().startswith("no CUDA device (")
    monkeypatch.setattr(gpu, "cupy", _fake_cupy(lambda: 1))
    assert gpu._why_no_gpu() is None
