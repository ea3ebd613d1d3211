"""Which forward computes ``deform_conv2d`` on the GPU: im2col + cuBLAS, or the fused
kernel in one of its tile configurations (:mod:`cudeform._gpu.fused_tiles`).

``CUDEFORM_CONV_FORWARD`` chooses, read at every call:

- ``im2col``: the column buffer and cuBLAS;
- ``fused``: the fastest fused configuration that can run the call;
- ``auto`` (the default, also when unset or empty): the fastest of those and im2col.

On the first call of a key (device, dtype, TF32 mode, geometry, mask and bias present),
every candidate that can run is timed once on the device (after one warm-up call, which
also compiles it) and the fastest is kept for that key for the rest of the process; the
choice, the times and every skipped candidate with its reason are logged at debug level
(logger ``cudeform._gpu.forward_engine``). Before ``auto`` times a fused configuration,
its output is compared with im2col's on the same call: one that disagrees is skipped,
with a warning, so that a faulty kernel can never be chosen over im2col. In
deterministic mode nothing is timed: ``auto`` takes im2col and ``fused`` its first
configuration that can run, so that every process computes the same bits. A fused
configuration that cannot run the call (its dtype, shared memory, compute capability,
grid or compilation) is skipped and named with the reason; ``fused`` warns when it
skips its first configuration, and raises a ``RuntimeError`` listing every configuration
and its reason when none can run. The backward always uses the im2col kernels.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import Callable, Optional

import numpy

from cudeform._gpu import fused_forward, fused_tiles

VARIABLE = "CUDEFORM_CONV_FORWARD"
MODES = ("fused", "im2col", "auto")
IM2COL = "im2col"

logger = logging.getLogger(__name__)


def environment_mode():
    """The mode ``CUDEFORM_CONV_FORWARD`` asks for (``auto`` when unset or empty).

    Raises:
        ValueError: any other value, naming the variable.
    """
    value = os.environ.get(VARIABLE, "").strip()
    if value == "":
        return "auto"
    if value not in MODES:
        raise ValueError(f"{VARIABLE} is not valid: expected one of {', '.join(MODES)}, "
                         f"got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Device:
    """Where the candidates run.

    ``key`` tells devices apart in the cache. ``arch`` is the compute capability (e.g. 90;
    None: no limit). ``time(run)`` returns the milliseconds of one call of ``run`` after a
    warm-up call (None: nothing is timed and the first candidate that can run is taken).
    ``check(kernel, dtype_name, bits)`` says why a kernel cannot be built or launched here,
    or returns None (None: every kernel can). ``agree(output, reference, dtype_name,
    math)`` says why a fused output differs from im2col's, or returns None (None: outputs
    are not compared).
    """

    key: object
    arch: Optional[int] = None
    time: Optional[Callable] = None
    check: Optional[Callable] = None
    agree: Optional[Callable] = None


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str  # "im2col" or "fused <tile> (<math>)"
    tile: Optional[fused_tiles.Tile] = None  # None for im2col
    math: Optional[str] = None


# The choices of the process, by mode and key (the CUDA engine's cache).
_choices: dict = {}


class Engine:
    """Chooses and runs a forward. ``mode`` None reads ``CUDEFORM_CONV_FORWARD`` at each
    call; ``tiles`` are the fused configurations to consider, first the preferred one
    (default: :data:`cudeform._gpu.fused_tiles.TILES`);
    ``allow_tf32`` lets float32 use the tensor-core kernels; ``cache`` keeps the choices
    (a fresh dict by default)."""

    def __init__(self, device, *, mode=None, tiles=None, allow_tf32=False, cache=None):
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.device = device
        self.mode = mode
        self.tiles = tuple(fused_tiles.TILES if tiles is None else tiles)
        self.allow_tf32 = allow_tf32
        self.cache = {} if cache is None else cache

    def _key(self, mode, g, dtype_name, has_mask, has_bias, deterministic):
        return (mode, self.device.key, dtype_name, self.allow_tf32, g, has_mask, has_bias,
                deterministic)

    def choice(self, g, dtype_name, *, has_mask, has_bias, deterministic=False):
        """The name of the forward :meth:`run` takes now for these arguments ("im2col" or
        "fused <tile> (<math>)"), or None when it has not chosen yet."""
        mode = self.mode or environment_mode()
        if mode == IM2COL:
            return IM2COL
        chosen = self.cache.get(self._key(mode, g, dtype_name, has_mask, has_bias,
                                          deterministic))
        return None if chosen is None else chosen.name

    def run(self, g, dtype_name, *, has_mask, has_bias, im2col, fused, deterministic=False):
        """The output of the chosen forward: ``im2col()`` or ``fused(tile, math)``.

        With ``deterministic``, nothing is timed: ``auto`` takes im2col and ``fused`` its
        first configuration that can run, so that every process makes the same choice
        (and so computes the same bits).
        """
        mode = self.mode or environment_mode()
        if mode == IM2COL:
            return im2col()
        key = self._key(mode, g, dtype_name, has_mask, has_bias, deterministic)
        chosen = self.cache.get(key)
        if chosen is None:
            chosen = self._choose(mode, g, dtype_name, im2col, fused, deterministic)
            self.cache[key] = chosen
        return im2col() if chosen.tile is None else fused(chosen.tile, chosen.math)

    def candidates(self, g, dtype_name):
        """``(runnable, skipped)``: the fused candidates that can run ``g`` in
        ``dtype_name`` here, and ``(candidate, reason)`` for those that cannot."""
        math = fused_tiles.math_for(dtype_name, self.allow_tf32)
        runnable, skipped = [], []
        for tile in self.tiles:
            candidate = Candidate(f"fused {tile.name} ({math})", tile, math)
            reason = fused_forward.why_not(tile, g, dtype_name, math, self.device.arch)
            if reason is None and self.device.check is not None:
                reason = self.device.check(fused_forward.kernel(tile, math), dtype_name,
                                           fused_forward.launch_bits(g))
            if reason is None:
                runnable.append(candidate)
            else:
                skipped.append((candidate, reason))
        return runnable, skipped

    def _choose(self, mode, g, dtype_name, im2col, fused, deterministic):
        runnable, skipped = self.candidates(g, dtype_name)
        where = f"deform_conv2d {dtype_name} {g}"
        if mode == "fused":
            if not runnable:
                raise RuntimeError(f"{VARIABLE}=fused, but no fused configuration can run "
                                   f"{where}: " + _reasons(skipped))
            if skipped and skipped[0][0].tile == self.tiles[0]:
                warnings.warn(f"{VARIABLE}=fused: skipped {_reasons(skipped)}; using "
                              f"{runnable[0].name}", RuntimeWarning, stacklevel=4)
        elif deterministic:
            runnable = [Candidate(IM2COL)]
        else:
            runnable.append(Candidate(IM2COL))
        if mode == "auto" and not deterministic and self.device.agree is not None:
            runnable, disagreeing = self._agreeing(runnable, dtype_name, im2col, fused)
            skipped += disagreeing
        times = {}
        if self.device.time is not None and len(runnable) > 1 and not deterministic:
            for candidate in runnable:
                run = im2col if candidate.tile is None else (
                    lambda c=candidate: fused(c.tile, c.math))
                times[candidate.name] = self.device.time(run)
            chosen = min(runnable, key=lambda c: times[c.name])
        else:
            chosen = runnable[0]
        logger.debug("%s%s forward of %s on %s: %s%s%s", mode,
                     " (deterministic)" if deterministic else "", where, self.device.key,
                     chosen.name,
                     "; timed " + ", ".join(f"{n} {ms:.4g} ms" for n, ms in times.items())
                     if times else "",
                     "; skipped " + _reasons(skipped) if skipped else "")
        return chosen


    def _agreeing(self, runnable, dtype_name, im2col, fused):
        """``(agreeing, disagreeing)``: the candidates whose output agrees with im2col's
        on this call, and ``(candidate, reason)`` for the others (each warned about)."""
        reference = im2col()
        agreeing, disagreeing = [], []
        for candidate in runnable:
            reason = None if candidate.tile is None else self.device.agree(
                fused(candidate.tile, candidate.math), reference, dtype_name, candidate.math)
            if reason is None:
                agreeing.append(candidate)
                continue
            disagreeing.append((candidate, reason))
            warnings.warn(f"{VARIABLE}=auto: skipped {candidate.name}: {reason}; this is a "
                          "bug of the fused kernel on this device, please report it",
                          RuntimeWarning, stacklevel=5)
        return agreeing, disagreeing


# The largest difference from im2col's output, relative to its largest finite magnitude,
# that a fused output may have: both add the same rounded samples in other orders, and
# 16-bit outputs are rounded once more. A faulty kernel misses by far more (order one).
AGREEMENT = {("float64", "simt"): 1e-9, ("float32", "simt"): 1e-3,
             ("float32", "tensor"): 1e-2, ("float16", "tensor"): 1e-2,
             ("bfloat16", "tensor"): 3e-2}


def disagreement(output, reference, dtype_name, math):
    """Why ``output`` (a fused forward's) differs from ``reference`` (im2col's), or None
    when they agree: the same NaN and infinite entries, and the finite ones within
    :data:`AGREEMENT` of the largest finite magnitude. Works on NumPy and CuPy arrays
    (bfloat16 ones as their 16-bit views, read through ``view_as_float``)."""
    xp = _array_module(reference)
    output, reference = (view_as_float(a, dtype_name, xp) for a in (output, reference))
    if output.shape != reference.shape:
        return f"its output has shape {output.shape}, im2col's {reference.shape}"
    finite = xp.isfinite(reference)
    same_specials = (xp.all(finite == xp.isfinite(output))
                     & xp.all(xp.isnan(output) == xp.isnan(reference))
                     & xp.all(xp.where(xp.isinf(reference), output == reference, True)))
    if not bool(same_specials):
        return "its NaN and infinite outputs differ from im2col's"
    if not bool(xp.any(finite)):
        return None
    scale = max(float(xp.max(xp.abs(xp.where(finite, reference, 0)))), 1e-30)
    error = float(xp.max(xp.abs(xp.where(finite, output, 0) - xp.where(finite, reference, 0))))
    error /= scale
    if error > AGREEMENT[(dtype_name, math)]:
        return (f"its output differs from im2col's by {error:.3g} of the largest magnitude "
                f"(allowed {AGREEMENT[(dtype_name, math)]:g})")
    return None


def view_as_float(array, dtype_name, xp):
    """``array`` as float64 values; bfloat16 16-bit views are widened bit for bit."""
    if dtype_name == "bfloat16" and array.dtype.itemsize == 2 and array.dtype.kind in "iu":
        bits = array.view(xp.uint16).astype(xp.uint32) << 16
        return bits.view(xp.float32).astype(xp.float64)
    return array.astype(xp.float64)


def _array_module(array):
    if isinstance(array, numpy.ndarray):
        return numpy
    import cupy

    return cupy


def _reasons(skipped):
    return "; ".join(f"{candidate.name}: {reason}" for candidate, reason in skipped)


def _cuda_time(run):
    import cupy

    run()  # compiles and loads what it needs
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    run()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop)


def _cuda_check(kernel, dtype_name, bits):
    import cupy

    from cudeform._gpu.compile import get_function
    from cudeform._gpu.signatures import ELEMENT_TYPES, INDEX_TYPES

    try:
        function = get_function(kernel, ELEMENT_TYPES[dtype_name], INDEX_TYPES[bits])
    except cupy.cuda.compiler.CompileException as error:
        first = str(error).strip().splitlines()
        return f"does not compile here: {first[0] if first else type(error).__name__}"
    if function.max_threads_per_block < kernel.threads:
        return (f"launches at most {function.max_threads_per_block} threads a block here, "
                f"it needs {kernel.threads}")
    return None


def default_engine(xp):
    """The engine of an array module: on CuPy, ``CUDEFORM_CONV_FORWARD`` on the current
    device, with the process's choices and :func:`cudeform.allow_tf32` as it is now; on
    NumPy (the host tests' twin) im2col, which the one-thread host run can launch."""
    if xp is numpy:
        return Engine(Device("host"), mode=IM2COL)
    from cudeform import _modes

    device = xp.cuda.Device()
    return Engine(Device(("cuda", device.id), int(device.compute_capability), _cuda_time,
                         _cuda_check, disagreement),
                  allow_tf32=_modes.allow_tf32(), cache=_choices)
