"""Shared fixtures, hypothesis profiles, and assert rewriting for the shared test modules."""

import os

import pytest

pytest.register_assert_rewrite("tests.helpers", "tests.gpu", "tests.host.compare")

# Hypothesis profiles of the property-based tests (``pytest -k fuzz``), chosen by
# HYPOTHESIS_PROFILE: "ci" (the default) draws few examples, the same on every run
# (derandomized, no example database), to keep the whole property suite within about
# two minutes on two cores; "long" draws many, randomly, remembers failures in
# .hypothesis/ and prints how to reproduce one.
PROFILE_VARIABLE = "HYPOTHESIS_PROFILE"
CI_EXAMPLES = 100
LONG_EXAMPLES = 2000

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property-based tests skip without hypothesis
    settings = None
else:
    _SLOW_DRAWS = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, database=None,
                              deadline=None, print_blob=True, suppress_health_check=_SLOW_DRAWS)
    settings.register_profile("long", max_examples=LONG_EXAMPLES, deadline=None,
                              print_blob=True, suppress_health_check=_SLOW_DRAWS)
    _profile = os.environ.get(PROFILE_VARIABLE, "ci")
    if _profile not in ("ci", "long"):
        raise ValueError(f"{PROFILE_VARIABLE} is not valid: expected ci or long, got "
                         f"{_profile!r}")
    settings.load_profile(_profile)


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
