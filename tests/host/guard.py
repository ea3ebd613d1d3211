"""Guard zones: every array a host-run kernel sees sits between two canary regions.

:func:`guarded_call` copies each array into a larger buffer, between canaries of
random bytes, runs the kernel on the copies, checks that every canary is intact
and that no read-only array changed, and copies the results back. A write out of
bounds then fails the launch that made it, with or without a sanitizer, even
when the array is a slice of a larger one (a batch chunk), where AddressSanitizer
alone sees nothing: the neighbouring bytes belong to the same allocation.

When the AddressSanitizer runtime is loaded (the sanitized host run), the canaries
are also poisoned for the call, so that ASan reports the faulty access itself,
reads included, with its stack, at the moment it happens.
"""

from __future__ import annotations

import ctypes

import numpy

ALIGNMENT = 64        # canaries and data start on this many bytes
LARGEST_GUARD = 2**20  # a canary region is as large as its array, up to this
# Random bytes: a stray write of any value, an atomicOr or an atomicMax changes
# some of them with overwhelming likelihood.
_PATTERN = numpy.random.default_rng(0x5EED).integers(0, 256, LARGEST_GUARD, dtype=numpy.uint8)


class GuardZoneError(AssertionError):
    """A host-run kernel wrote outside an array, or into a read-only one."""


def _asan_functions():
    """``(poison, unpoison)`` from the AddressSanitizer runtime, or None without one."""
    process = ctypes.CDLL(None)
    try:
        poison = process["__asan_poison_memory_region"]
        unpoison = process["__asan_unpoison_memory_region"]
    except AttributeError:
        return None
    for function in (poison, unpoison):
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        function.restype = None
    return poison, unpoison


_ASAN = _asan_functions()


def guard_bytes(nbytes):
    """The size of each canary region around an array of ``nbytes`` bytes."""
    padded = -(-max(nbytes, 1) // ALIGNMENT) * ALIGNMENT
    return min(padded, LARGEST_GUARD)


class _Guarded:
    """One array's copy between canaries: ``buffer = before | data | after``."""

    def __init__(self, array):
        self.array = array
        self.guard = guard_bytes(array.nbytes)
        self.data_end = self.guard + array.nbytes
        total = self.data_end + self.guard
        # numpy.empty aligns to at least 16 bytes; start the data on ALIGNMENT.
        raw = numpy.empty(total + ALIGNMENT, dtype=numpy.uint8)
        start = -raw.ctypes.data % ALIGNMENT
        self.buffer = raw[start:start + total]
        self.buffer[:self.guard] = _PATTERN[:self.guard]
        self.buffer[self.data_end:] = _PATTERN[:self.guard]
        self.buffer[self.guard:self.data_end] = array.reshape(-1).view(numpy.uint8)

    @property
    def pointer(self):
        return self.buffer.ctypes.data + self.guard

    def canaries(self):
        return ((self.buffer.ctypes.data, self.guard),
                (self.buffer.ctypes.data + self.data_end, self.guard))

    def data(self):
        return self.buffer[self.guard:self.data_end]

    def damage(self):
        """The changed canary bytes, as offsets from the array's first byte, or None."""
        before = numpy.flatnonzero(self.buffer[:self.guard] != _PATTERN[:self.guard])
        after = numpy.flatnonzero(self.buffer[self.data_end:] != _PATTERN[:self.guard])
        offsets = numpy.concatenate([before - self.guard, after + self.array.nbytes])
        if not offsets.size:
            return None
        return (f"{offsets.size} byte(s) outside its {self.array.nbytes} changed, at "
                f"offsets {offsets.min()} to {offsets.max()} from its first byte")


def kernel_arrays(kernel, values):
    """``(arrays, read_only)`` of a launch: ``{parameter name: array}`` of the non-null
    pointer arguments of ``kernel`` (``values`` in the order of its parameters, as
    :func:`cudeform._gpu.launch.kernel_arguments` gives them), and the names of those
    the kernel must only read (its ``const`` pointers)."""
    arrays = {name: value for (name, _), value in zip(kernel.params, values)
              if isinstance(value, numpy.ndarray)}
    read_only = {name for name, kind in kernel.params if kind.startswith("const ")}
    return arrays, read_only


def guarded_call(kernel_name, arrays, read_only, call):
    """Run ``call(pointers)`` on guarded copies of ``arrays`` and copy results back.

    Args:
        kernel_name: named in the error.
        arrays: ``{parameter name: C-contiguous ndarray}``; no two may overlap.
        read_only: the names of the parameters the kernel must not write.
        call: runs the kernel; gets ``{parameter name: address of the copy}``.

    Raises:
        GuardZoneError: a canary changed, or a read-only array did.
    """
    names = list(arrays)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if numpy.may_share_memory(arrays[first], arrays[second]):
                raise ValueError(f"{kernel_name}: {first} and {second} overlap; a guarded "
                                 "launch copies each array on its own")
    guarded = {name: _Guarded(array) for name, array in arrays.items()}
    regions = [region for copy in guarded.values() for region in copy.canaries()]
    if _ASAN is not None:
        for address, size in regions:
            _ASAN[0](address, size)
    try:
        call({name: copy.pointer for name, copy in guarded.items()})
    finally:
        if _ASAN is not None:
            for address, size in regions:
                _ASAN[1](address, size)
    problems = []
    for name, copy in guarded.items():
        damage = copy.damage()
        if damage:
            problems.append(f"{name}: {damage}")
        original = copy.array.reshape(-1).view(numpy.uint8)
        if name in read_only and not numpy.array_equal(copy.data(), original):
            problems.append(f"{name}: changed, but it is read-only")
    if problems:
        raise GuardZoneError(f"{kernel_name} wrote out of bounds: " + "; ".join(problems))
    for name, copy in guarded.items():
        if name not in read_only:
            copy.array.reshape(-1).view(numpy.uint8)[...] = copy.data()
