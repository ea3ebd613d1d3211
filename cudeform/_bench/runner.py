"""Runs the pairs: agreement check, interleaved timing, then peak memory.

For each case the float32 inputs are drawn once; for each thread count (on the
CPU), dtype and peer the peer builds its pairs, and each pair is

1. checked: cudeform's results (or its ``reference``) against the peer's. An
   exception on cudeform's side is a failure of cudeform (the run exits
   non-zero); one on the peer's side skips the pair with its message. A
   disagreement prints a warning; the pair is still timed, but its row gets
   no ratio;
2. timed, interleaved, with warm-up (:mod:`cudeform._bench.timing`);
3. for forward+backward, measured for peak extra memory on both sides.

The runner reports through a listener (:class:`cudeform._bench.report.Report`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

from cudeform._bench import checks, memory, timing
from cudeform._bench.pairs import FORWARD_BACKWARD, Skip

OP = "deform_conv2d"


@dataclasses.dataclass
class Row:
    """One line of the time table. ``as_json`` gives the JSON row, whose keys are fixed."""

    op: str
    label: str
    shape: str
    dtype: str
    device: str
    passes: str
    ms: float
    peer: str
    peer_ms: Optional[float]
    ratio: Optional[float]

    def as_json(self):
        return {"op": self.op, "shape": self.shape, "dtype": self.dtype, "device": self.device,
                "pass": self.passes, "ms": self.ms, "peer": self.peer, "peer_ms": self.peer_ms,
                "ratio": self.ratio}


@dataclasses.dataclass
class MemoryRow:
    op: str
    label: str
    dtype: str
    cudeform_bytes: Optional[int]
    peer: str
    peer_bytes: Optional[int]
    device: str = ""


class _SideFailed(Exception):
    def __init__(self, side, error):
        super().__init__(side, error)
        self.side = side
        self.error = error


def _tagged(function, side):
    def call():
        try:
            return function()
        except Exception as error:
            raise _SideFailed(side, error) from error
    return call


def describe(error):
    """``Type: first line of the message``, at most 300 characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 300 else text[:297] + "..."


def _thread_settings(device):
    """``(threads, context)`` for each thread count the device runs: the CPU sets its
    workers (and the peers follow), the GPU has none."""
    for threads in getattr(device, "thread_counts", (None,)):
        yield threads, (device.threads(threads) if threads is not None
                        else contextlib.nullcontext())


def _ops(peer):
    return getattr(peer, "timed_ops", (OP,))


def run_cases(cases, dtypes, peers, device, settings, listener):
    """Check, time and measure every pair of every peer on every case, thread count
    and dtype; a peer only sees the cases of the ops in its ``timed_ops`` (default: the
    convolution)."""
    for case in cases:
        arrays = case.arrays()
        for _, threads in _thread_settings(device):
            with threads:
                _run_case(case, arrays, dtypes, peers, device, settings, listener)


def _run_case(case, arrays, dtypes, peers, device, settings, listener):
    for dtype in dtypes:
        for peer in peers:
            if getattr(case, "op", OP) not in _ops(peer):
                continue
            where = f"{case.name} {dtype}"
            try:
                pairs = peer.pairs(case, dtype, arrays)
            except Skip as reason:
                listener.skipped(peer.name, str(reason),
                                 dtype if reason.scope == "dtype" else case.name)
                continue
            except Exception as error:  # a peer that cannot even set up is skipped
                listener.skipped(peer.name, f"set-up failed: {describe(error)}", where)
                continue
            try:
                for pair in pairs:
                    run_pair(pair, device, settings, listener)
            finally:
                del pairs
                device.release()


def device_label(device):
    """The JSON's ``device``: ``cuda``, or ``cpu (N threads)``."""
    label = getattr(device, "label", None)
    return label() if label is not None else device.name


def _where(pair):
    return f"{pair.label} {pair.dtype} {pair.passes}"


def run_pair(pair, device, settings, listener):
    """Check, time and (for forward+backward) measure one pair; report through ``listener``."""
    reference = pair.reference or pair.cudeform
    try:
        expected = reference.results(reference.run())
    except Exception as error:
        listener.failure(f"cudeform failed on {_where(pair)} (checking against {pair.peer}): "
                         f"{describe(error)}")
        return
    try:
        actual = pair.other.results(pair.other.run())
    except Exception as error:
        listener.skipped(pair.peer, describe(error), _where(pair))
        return
    problems = checks.disagreements(pair.names, expected, actual, pair.dtype)
    del expected, actual
    if problems:
        listener.warning(f"{pair.peer} disagrees with cudeform on {_where(pair)}: "
                         f"{'; '.join(problems)}. Timed, but no ratio is reported.")
    try:
        measured = timing.interleaved(_tagged(pair.cudeform.run, "cudeform"),
                                      _tagged(pair.other.run, "peer"), settings,
                                      sync=device.sync)
    except _SideFailed as failed:
        if failed.side == "cudeform":
            listener.failure(f"cudeform failed on {_where(pair)} (timing against {pair.peer}): "
                             f"{describe(failed.error)}")
        else:
            listener.skipped(pair.peer, f"failed while timed: {describe(failed.error)}",
                             _where(pair))
        return
    ratio = None if problems or measured.second_ms <= 0 else measured.first_ms / measured.second_ms
    listener.row(Row(getattr(pair, "op", OP), pair.label, pair.shape, pair.dtype,
                     device_label(device), pair.passes, measured.first_ms, pair.peer,
                     measured.second_ms, ratio))
    if pair.passes == FORWARD_BACKWARD:
        listener.memory(MemoryRow(pair.op, pair.label, pair.dtype,
                                  _peak(pair.cudeform, device, listener, "cudeform", pair),
                                  pair.peer, _peak(pair.other, device, listener, pair.peer,
                                                   pair), device_label(device)))


def _peak(side, device, listener, who, pair):
    try:
        return memory.peak_bytes(side.memory, side.run, device.sync)
    except Exception as error:  # a measurement problem must not lose the timings
        listener.warning(f"could not measure the memory of {who} on {_where(pair)}: "
                         f"{describe(error)}")
        return None
