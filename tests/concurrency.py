"""Run functions in several threads at once, and compare results bit for bit."""

from __future__ import annotations

import threading

import numpy

JOIN_TIMEOUT = 300  # seconds; a thread still running then is a deadlock


def run_in_threads(functions, threads=4, rounds=2):
    """Call every function of ``functions`` ``rounds`` times in each of ``threads``
    threads, which start together (a barrier) and take the functions in different
    orders (rotated). Returns ``results[thread][round][index]``; re-raises the first
    exception of any thread."""
    start = threading.Barrier(threads)
    results = [[[None] * len(functions) for _ in range(rounds)] for _ in range(threads)]
    errors = []

    def work(thread):
        try:
            start.wait()
            order = list(range(len(functions)))
            order = order[thread % len(order):] + order[:thread % len(order)]
            for round_ in range(rounds):
                for index in order:
                    results[thread][round_][index] = functions[index]()
        except BaseException as error:  # reported in the main thread
            errors.append(error)
            start.abort()

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN_TIMEOUT)
    assert not any(worker.is_alive() for worker in workers), "threads still running: deadlock?"
    if errors:
        raise errors[0]
    return results


def same_bits(first, second):
    """Whether two results (arrays, None, or tuples of them) are identical bit for bit."""
    if isinstance(first, (tuple, list)):
        return (isinstance(second, (tuple, list)) and len(first) == len(second)
                and all(same_bits(a, b) for a, b in zip(first, second)))
    if first is None or second is None:
        return first is None and second is None
    first, second = numpy.asarray(first), numpy.asarray(second)
    return (first.dtype == second.dtype and first.shape == second.shape
            and first.tobytes() == second.tobytes())


def assert_threads_match_serial(functions, threads=4, rounds=2):
    """Every threaded call of ``functions`` returns exactly what a serial call returns."""
    serial = [function() for function in functions]
    for thread, rounds_ in enumerate(run_in_threads(functions, threads, rounds)):
        for round_, results in enumerate(rounds_):
            for index, result in enumerate(results):
                assert same_bits(result, serial[index]), (
                    f"call {index} in thread {thread}, round {round_} differs from the "
                    "serial call")
    return serial
