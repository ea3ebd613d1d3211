"""Concurrency on the GPU: first calls from several threads and processes compiling into
one CuPy kernel cache at once, a damaged cache entry, and threaded calls compared bit
for bit with serial ones in deterministic mode.

Skipped without CuPy or a usable CUDA device (``tests.gpu.requires_gpu``). Without a
GPU, tests/test_concurrency_builds.py checks the same cache logic with NVRTC alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy
import pytest

from tests.concurrency import assert_threads_match_serial
from tests.cupy_cache import cache_entries, is_intact
from tests.gpu import ROOT, requires_gpu

pytestmark = requires_gpu
TIMEOUT = 600

# Four threads make the first calls of a process at once (every module compiles then,
# into CUPY_CACHE_DIR); each result must match the NumPy path.
_FIRST_CALLS = textwrap.dedent("""
    import threading
    import cupy, numpy
    import cudeform
    from tests.helpers import assert_close, conv_case
    from tests.roi_pool_cases import roi_pool_case

    rng = numpy.random.default_rng(0)
    conv = conv_case(rng, dtype=numpy.float32)
    roi_arrays, roi_options = roi_pool_case(rng, dtype=numpy.float32)
    calls = [(cudeform.deform_conv2d, conv), (cudeform.deform_roi_pool,
                                              dict(roi_arrays, **roi_options))]
    expected = [function(**arguments) for function, arguments in calls]
    results, errors = {}, []

    def run(index):
        try:
            function, arguments = calls[index % len(calls)]
            device = {k: cupy.asarray(v) if isinstance(v, numpy.ndarray) else v
                      for k, v in arguments.items()}
            results[index] = cupy.asnumpy(function(**device))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for index, result in results.items():
        assert_close(result, expected[index % len(calls)], numpy.float32)
    print("ok")
""")


def _first_calls(cache, processes):
    environment = dict(os.environ, CUPY_CACHE_DIR=str(cache))
    runs = [subprocess.Popen([sys.executable, "-c", _FIRST_CALLS], cwd=ROOT, env=environment,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(processes)]
    outputs = [run.communicate(timeout=TIMEOUT)[0] for run in runs]
    assert all(run.returncode == 0 and "ok" in output for run, output in zip(runs, outputs)), \
        outputs


def test_concurrent_first_calls_on_gpu_share_one_cupy_cache(tmp_path):
    _first_calls(tmp_path, processes=2)
    entries = cache_entries(tmp_path)
    assert entries and all(is_intact(entry) for entry in entries)


@pytest.mark.parametrize("damage", ["truncated", "flipped-byte"])
def test_concurrency_damaged_cupy_cache_entries_on_gpu_are_recompiled(tmp_path, damage):
    from tests.test_concurrency_builds import DAMAGE

    _first_calls(tmp_path, processes=1)
    entries = cache_entries(tmp_path)
    for entry in entries:
        DAMAGE[damage](entry)
    _first_calls(tmp_path, processes=1)
    assert all(is_intact(entry) for entry in cache_entries(tmp_path))


def test_concurrent_deterministic_gpu_calls_match_serial_calls():
    import cupy

    import cudeform
    from cudeform import _modes
    from tests.helpers import conv_case
    from tests.psroi_cases import psroi_case
    from tests.roi_pool_cases import roi_pool_case

    rng = numpy.random.default_rng(1)

    def device(arrays):
        return {k: cupy.asarray(v) if isinstance(v, numpy.ndarray) else v
                for k, v in arrays.items()}

    conv = device(conv_case(rng, dtype=numpy.float32, batch=4, groups=2, offset_groups=2))
    roi_arrays, roi_options = roi_pool_case(rng)
    ps_arrays, ps_options = psroi_case(rng, num_classes=2, output_dim=2, dtype=numpy.float32)
    cases = [
        (cudeform.deform_conv2d, cudeform.deform_conv2d_backward, conv),
        (cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward,
         dict(device(roi_arrays), **roi_options)),
        (cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward,
         dict(device(ps_arrays), **ps_options)),
    ]
    stream_of_thread = threading.local()

    def call(forward, backward, arguments):
        def run():
            # Each thread on its own stream, deterministic through its own override.
            if not hasattr(stream_of_thread, "stream"):
                stream_of_thread.stream = cupy.cuda.Stream(non_blocking=True)
            with stream_of_thread.stream, _modes.override(deterministic=True):
                output = forward(**arguments)
                grads = backward(cupy.ones_like(output), **arguments)
                stream_of_thread.stream.synchronize()
                return (cupy.asnumpy(output),
                        tuple(None if g is None else cupy.asnumpy(g) for g in grads))
        return run

    assert_threads_match_serial([call(*case) for case in cases], threads=4)
