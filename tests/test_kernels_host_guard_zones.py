"""The guard zones of every host run (tests/host/guard.py) catch stray writes.

The planted bugs (tests/host/planted.py) are real kernel source with one index off
by one, built through the loader; the other tests drive :func:`guarded_call` with
writes made from Python through ``ctypes``.
"""

from __future__ import annotations

import ctypes

import numpy
import pytest

from cudeform._gpu.signatures import DEFORM_COL2IM_COORD_REDUCE
from tests.host import planted
from tests.host.guard import GuardZoneError, guard_bytes, guarded_call
from tests.host.loader import compiler

needs_compiler = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")


@needs_compiler
def test_planted_write_past_the_end_fails_its_launch():
    with pytest.raises(GuardZoneError, match=r"deform_roi_pool_forward wrote out of bounds: "
                                             r"output: 8 byte\(s\) outside its 128 changed, at "
                                             r"offsets 128 to 135"):
        planted.run("write-past-the-end")


@needs_compiler
def test_planted_write_into_the_next_image_fails_the_first_chunk():
    # The stray write of the first chunk stays inside grad_mask: no sanitizer sees it,
    # and the second chunk overwrites it with the right value.
    kernels = []

    def recording(launch):
        def launch_and_record(kernel, *args, **kwargs):
            kernels.append(kernel)
            return launch(kernel, *args, **kwargs)
        return launch_and_record

    with pytest.raises(GuardZoneError, match="deform_col2im_coord_reduce wrote out of "
                                             "bounds: grad_mask"):
        planted.run("write-into-the-next-image", recording)
    assert kernels.count(DEFORM_COL2IM_COORD_REDUCE) == 1


@needs_compiler
def test_planted_undefined_behaviour_passes_unsanitized():
    # The cast of 1e30 to int is undefined, but x86 gives INT_MIN and the result is
    # right: only UndefinedBehaviorSanitizer sees it (test_kernels_sanitized.py).
    planted.run("float-cast-overflow")


def _write(address, offset, value=0xFF):
    ctypes.memset(address + offset, value, 1)


@pytest.mark.parametrize("offset, where", [(-1, "-1 to -1"), (32, "32 to 32"),
                                           (40, "40 to 40"), (-64, "-64 to -64")])
def test_a_write_on_either_side_is_reported_with_its_offset(offset, where):
    output = numpy.zeros(4, numpy.float64)  # 32 bytes
    with pytest.raises(GuardZoneError, match=f"probe wrote out of bounds: output: 1 byte"
                                             rf"\(s\) outside its 32 changed, at offsets {where}"):
        guarded_call("probe", {"output": output}, set(),
                     lambda pointers: _write(pointers["output"], offset))


def test_writes_inside_are_copied_back_and_inputs_must_not_change():
    values = numpy.arange(6, dtype=numpy.float32)
    output = numpy.zeros((2, 3), numpy.float32)

    def copy(pointers):
        ctypes.memmove(pointers["output"], pointers["values"], values.nbytes)

    guarded_call("copy", {"values": values, "output": output}, {"values"}, copy)
    assert (output.reshape(-1) == values).all()

    with pytest.raises(GuardZoneError, match="values: changed, but it is read-only"):
        guarded_call("scribble", {"values": values}, {"values"},
                     lambda pointers: _write(pointers["values"], 0))
    assert (values == numpy.arange(6)).all()  # nothing is copied back after a failure


def test_a_slice_gets_its_own_guard_zones():
    # A batch chunk is a slice: a write one element past it stays inside its parent.
    parent = numpy.zeros((3, 4), numpy.float32)
    with pytest.raises(GuardZoneError, match="offsets 16 to 16"):
        guarded_call("probe", {"chunk": parent[1]}, set(),
                     lambda pointers: _write(pointers["chunk"], 16))
    assert not parent.any()


def test_overlapping_arrays_are_refused():
    parent = numpy.zeros(8)
    with pytest.raises(ValueError, match="a and b overlap"):
        guarded_call("probe", {"a": parent[:5], "b": parent[4:]}, set(), lambda pointers: None)


def test_guard_size_follows_the_array():
    assert guard_bytes(0) == guard_bytes(1) == 64
    assert guard_bytes(65) == 128
    assert guard_bytes(10**9) == 2**20
