"""The mode switches: ``set_deterministic``/``is_deterministic`` with the environment
variable ``CUDEFORM_DETERMINISTIC``, ``set_allow_tf32``/``allow_tf32``, and the
per-call override that adapters use, which stays inside its thread and context.

The GPU host logic reads both modes in ``cudeform._arrays.on_gpu``; what they change
there is tested in test_determinism_host.py (host runs) and the GPU test files.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

import numpy
import pytest

import cudeform
from cudeform import _arrays, _modes
from cudeform._gpu import gemm


@pytest.fixture(autouse=True)
def restore_modes(monkeypatch):
    monkeypatch.setattr(_modes, "_deterministic", None)
    monkeypatch.setattr(_modes, "_allow_tf32", False)
    monkeypatch.delenv(_modes.DETERMINISTIC_VARIABLE, raising=False)
    # setenv first, so that a value the test makes is removed afterwards
    monkeypatch.setenv(gemm.CUBLAS_WORKSPACE_VARIABLE, "")
    monkeypatch.delenv(gemm.CUBLAS_WORKSPACE_VARIABLE)
    monkeypatch.setattr(gemm, "_warned_configs", set())


def test_defaults_are_float_atomics_and_exact_fp32():
    assert cudeform.is_deterministic() is False
    assert cudeform.allow_tf32() is False


def test_set_deterministic_and_back_to_the_environment(monkeypatch):
    cudeform.set_deterministic(True)
    assert cudeform.is_deterministic() is True
    monkeypatch.setenv("CUDEFORM_DETERMINISTIC", "0")
    assert cudeform.is_deterministic() is True  # the call wins over the environment
    cudeform.set_deterministic(False)
    monkeypatch.setenv("CUDEFORM_DETERMINISTIC", "1")
    assert cudeform.is_deterministic() is False
    cudeform.set_deterministic(None)
    assert cudeform.is_deterministic() is True
    cudeform.set_deterministic(numpy.bool_(False))
    assert cudeform.is_deterministic() is False


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("", False),
                                             (" 1 ", True)])
def test_environment_variable(monkeypatch, value, expected):
    monkeypatch.setenv("CUDEFORM_DETERMINISTIC", value)
    assert cudeform.is_deterministic() is expected


def test_environment_variable_is_read_by_a_fresh_process():
    script = "import cudeform; print(cudeform.is_deterministic())"
    env = {"CUDEFORM_DETERMINISTIC": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, env=env)
    assert result.stdout.strip() == "True"


def test_bad_environment_value_is_a_named_error(monkeypatch):
    monkeypatch.setenv("CUDEFORM_DETERMINISTIC", "yes")
    with pytest.raises(ValueError, match=r"CUDEFORM_DETERMINISTIC is not valid: expected 0 "
                                         r"or 1, got 'yes'"):
        cudeform.is_deterministic()


@pytest.mark.parametrize("setter", [cudeform.set_deterministic, cudeform.set_allow_tf32])
def test_setters_take_booleans_only(setter):
    with pytest.raises(TypeError, match=r"enabled must be True, False or None, got 1"):
        setter(1)
    with pytest.raises(TypeError, match=r"got 'on'"):
        setter("on")


def test_set_allow_tf32():
    cudeform.set_allow_tf32(True)
    assert cudeform.allow_tf32() is True
    cudeform.set_allow_tf32(False)
    assert cudeform.allow_tf32() is False


def test_override_applies_inside_the_block_only():
    cudeform.set_allow_tf32(True)
    with _modes.override(deterministic=True, allow_tf32=False):
        assert cudeform.is_deterministic() is True and cudeform.allow_tf32() is False
        with _modes.override(allow_tf32=True):  # nested: the other mode is kept
            assert cudeform.is_deterministic() is True and cudeform.allow_tf32() is True
        with _modes.override():
            assert cudeform.is_deterministic() is True
    assert cudeform.is_deterministic() is False and cudeform.allow_tf32() is True
    with pytest.raises(TypeError, match=r"deterministic must be True, False or None"):
        with _modes.override(deterministic="1"):
            pass


def test_override_does_not_leak_into_other_threads():
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def other_thread():
        inside.wait()
        seen["other"] = cudeform.is_deterministic()
        release.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with _modes.override(deterministic=True):
        inside.set()
        release.wait(timeout=10)
        seen["this"] = cudeform.is_deterministic()
    thread.join()
    assert seen == {"this": True, "other": False}


class _ArrayOnNoDevice:
    """Stands in for a CuPy array: ``on_gpu`` only enters its ``device``."""

    device = contextlib.nullcontext()


@pytest.mark.parametrize("deterministic, tf32", [(False, False), (True, True), (True, False)])
def test_on_gpu_hands_the_modes_to_the_host_logic(deterministic, tf32):
    cupy = pytest.importorskip("cupy")
    from cudeform._gpu.gemm import cublas_gemm

    cudeform.set_deterministic(not deterministic)
    with _modes.override(deterministic=deterministic, allow_tf32=tf32):
        with _arrays.on_gpu(_ArrayOnNoDevice(), numpy.dtype(numpy.float32)) as engine:
            pass
    assert set(engine) == {"dtype_name", "xp", "launch", "gemm", "deterministic"}
    assert engine["xp"] is cupy and engine["deterministic"] is deterministic
    assert engine["gemm"].func is cublas_gemm and engine["gemm"].keywords == {"allow_tf32": tf32}


def test_deterministic_mode_makes_cublas_reproducible_with_several_streams():
    cudeform.set_deterministic(False)
    assert gemm.CUBLAS_WORKSPACE_VARIABLE not in os.environ
    cudeform.set_deterministic(True)
    assert os.environ[gemm.CUBLAS_WORKSPACE_VARIABLE] == ":4096:8"


def test_a_cublas_workspace_setting_of_the_user_is_kept(monkeypatch, recwarn):
    monkeypatch.setenv(gemm.CUBLAS_WORKSPACE_VARIABLE, ":16:8")
    cudeform.set_deterministic(True)
    assert os.environ[gemm.CUBLAS_WORKSPACE_VARIABLE] == ":16:8" and not recwarn.list
    monkeypatch.setenv(gemm.CUBLAS_WORKSPACE_VARIABLE, ":0:0")
    with pytest.warns(RuntimeWarning, match=r"CUBLAS_WORKSPACE_CONFIG=':0:0': cuBLAS "
                                            r"documents .* only for :4096:8 or :16:8"):
        cudeform.set_deterministic(True)
    assert gemm.reproducible_workspace() == ":0:0"  # kept, and warned only once
    assert os.environ[gemm.CUBLAS_WORKSPACE_VARIABLE] == ":0:0"
