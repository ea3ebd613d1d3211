"""Interleaved timing: cudeform and a peer take turns, so drifts in clock speed,
temperature or background load hit both alike.

Each round runs ``first`` then ``second``, each timed on its own between two
synchronisations of the device (a no-op on the CPU). Warm-up rounds come first
and are not timed. The result is the median of each side.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long to time a pair: ``warmup`` untimed rounds, then up to ``repeats``
    timed ones; after ``min_repeats`` the pair stops once ``budget_s`` seconds of
    timed rounds have passed, so a slow layer cannot blow the run's time limit."""

    warmup: int
    repeats: int
    min_repeats: int
    budget_s: float


@dataclasses.dataclass(frozen=True)
class Timing:
    first_ms: float
    second_ms: float
    rounds: int


def _nothing():
    return None


def interleaved(first: Callable[[], object], second: Callable[[], object], settings: Settings,
                *, sync: Callable[[], object] = _nothing,
                clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Median milliseconds of ``first`` and ``second``, run in alternation."""
    for _ in range(settings.warmup):
        first()
        second()
    sync()
    samples = ([], [])
    spent = 0.0
    for round_index in range(settings.repeats):
        for function, times in zip((first, second), samples):
            sync()
            start = clock()
            function()
            sync()
            times.append(clock() - start)
        spent += samples[0][-1] + samples[1][-1]
        if round_index + 1 >= settings.min_repeats and spent >= settings.budget_s:
            break
    return Timing(statistics.median(samples[0]) * 1e3, statistics.median(samples[1]) * 1e3,
                  len(samples[0]))
