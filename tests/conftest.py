"""Shared fixtures, and assert rewriting for the shared test modules."""

import pytest

pytest.register_assert_rewrite("tests.helpers", "tests.gpu", "tests.host.compare")


@pytest.fixture
def launches(monkeypatch):
    """Record ``(kernel name, index bits)`` of every CUDA launch (GPU tests)."""
    from cudeform._gpu import launch

    calls, real = [], launch.cuda_launch

    def recording(kernel, dtype_name, bits, count, **args):
        calls.append((kernel.name, bits))
        return real(kernel, dtype_name, bits, count, **args)

    monkeypatch.setattr(launch, "cuda_launch", recording)
    return calls
