"""Split NumPy work over the CPU's cores.

NumPy releases the GIL inside ``take`` and ``matmul``, so threads that write
into their own buffers run in parallel. While they run, BLAS is held to one
thread, with one worker as with several: OpenBLAS's own threads busy-wait
between calls, and next to our workers (or to whatever runs after us) they
take the cores away. With one worker and OpenBLAS free to use two threads, a
forward of (4, 64, 56, 56) -> 64 took 5 to 20 times as long on a two-core
machine with one core busy elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import threading

ENVIRONMENT_VARIABLE = "CUDEFORM_NUM_THREADS"


def worker_count():
    """Threads used by the NumPy path: ``$CUDEFORM_NUM_THREADS``, else the usable cores."""
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    if value:
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"{ENVIRONMENT_VARIABLE} is not valid: expected a positive "
                             f"integer, got {value!r}")
        return count
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def _pool(workers):
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cudeform")


@functools.lru_cache(maxsize=None)
def _blas_controller():
    try:
        import threadpoolctl
    except ImportError:  # a dependency, but without it run on one thread rather than fail
        return None
    return threadpoolctl.ThreadpoolController()


_blas_limit = threading.Lock()  # held by the one call that limits BLAS now


@contextlib.contextmanager
def _single_threaded_blas(controller):
    """BLAS at one thread within this context, unless another call holds that limit now.

    threadpoolctl's limit is process-wide: calls from several threads that set it in
    overlapping intervals would each restore the count they found (one, if another
    call had set it), and the last one out could leave BLAS at one thread for good.
    So one call at a time sets and restores it; a call that overlaps with it runs
    with the limit while that call holds it, and with BLAS's own count after.
    """
    if not _blas_limit.acquire(blocking=False):
        yield
        return
    try:
        with controller.limit(limits=1, user_api="blas"):
            yield
    finally:
        _blas_limit.release()


def split(count, function):
    """``[function(part) for part in parts]`` over contiguous slices covering ``range(count)``.

    The parts run in parallel, one per worker, with single-threaded BLAS (also
    with one worker; see :func:`_single_threaded_blas` for calls from several
    threads at once); the split depends only on ``count`` and the worker count,
    so results are reproducible for a given ``CUDEFORM_NUM_THREADS``.
    Exceptions propagate once no part runs any more, so that a failed or interrupted
    call leaves no work behind it.
    """
    workers = max(1, min(worker_count(), count))
    controller = _blas_controller()
    if controller is None:
        return [function(slice(0, count))]
    bounds = [count * i // workers for i in range(workers + 1)]
    parts = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
    with _single_threaded_blas(controller):
        if workers == 1:
            return [function(parts[0])]
        futures = [_pool(workers).submit(function, part) for part in parts]
        try:
            return [future.result() for future in futures]
        finally:  # after a failure: cancel the parts not started, wait for the others
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)
