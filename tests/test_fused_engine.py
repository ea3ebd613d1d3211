"""Choosing the forward engine (cudeform/_gpu/forward_engine.py), without a GPU.

``CUDEFORM_CONV_FORWARD`` is read and checked; ``auto`` times every candidate once per
key with the device's timer (a fake one here) and keeps the fastest; a fused tile that
cannot run is skipped and named with its reason; ``fused`` with nothing to run raises,
listing every tile. The whole choice runs end to end on the host: im2col through the
one-thread host run and the fused kernel through the block emulator.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy
import pytest

from cudeform._cpu import deform_conv as cpu
from cudeform._gpu import deform_conv as gpu
from cudeform._gpu import forward_engine, fused_tiles
from cudeform._gpu.forward_engine import VARIABLE, Device, Engine, environment_mode
from cudeform._gpu.fused_forward import why_not
from cudeform._gpu.signatures import DEFORM_CONV_FUSED
from cudeform._shapes import deform_conv2d_geometry
from tests.helpers import conv_case, split_case
from tests.host.block_loader import block_launch
from tests.host.loader import compiler, host_launch

OPERANDS = ("input", "offset", "weight", "bias", "mask")
GEOMETRY = deform_conv2d_geometry((2, 4, 7, 6), (2, 18, 7, 6), (6, 4, 3, 3), padding=1)
TILES = fused_tiles.TILES


class FakeTimer:
    """Times each run by the table ``ms`` (candidate name -> ms), recording the order."""

    def __init__(self, ms):
        self.ms, self.timed = ms, []

    def __call__(self, run):
        name = run()
        self.timed.append(name)
        return self.ms[name]


def built(dtype_name, math):
    """Candidate names of the tiles built for ``dtype_name`` with ``math``."""
    return [f"fused {t.name} ({math})" for t in TILES
            if fused_tiles.why_not_built(t, math, dtype_name) is None]


def choose(engine, g=GEOMETRY, dtype_name="float32"):
    """The name of the candidate ``engine`` runs; the runs return their names."""
    return engine.run(g, dtype_name, has_mask=False, has_bias=True, im2col=lambda: "im2col",
                      fused=lambda tile, math: f"fused {tile.name} ({math})")


# --- CUDEFORM_CONV_FORWARD ----------------------------------------------------------------


@pytest.mark.parametrize("value, mode", [(None, "auto"), ("", "auto"), ("fused", "fused"),
                                         ("im2col", "im2col"), ("auto", "auto"),
                                         (" fused ", "fused")])
def test_fused_environment_variable(monkeypatch, value, mode):
    if value is None:
        monkeypatch.delenv(VARIABLE, raising=False)
    else:
        monkeypatch.setenv(VARIABLE, value)
    assert environment_mode() == mode


@pytest.mark.parametrize("value", ["cudnn", "FUSED", "1"])
def test_fused_environment_variable_rejects_other_values(monkeypatch, value):
    monkeypatch.setenv(VARIABLE, value)
    with pytest.raises(ValueError, match=rf"^{VARIABLE} is not valid: expected one of fused, "
                                         rf"im2col, auto, got '{value}'$"):
        choose(Engine(Device("test")))


def test_fused_engine_follows_the_variable_at_each_call(monkeypatch):
    engine = Engine(Device("test"))
    monkeypatch.setenv(VARIABLE, "im2col")
    assert choose(engine) == "im2col"
    monkeypatch.setenv(VARIABLE, "fused")
    assert choose(engine) == f"fused {TILES[0].name} (simt)"


# --- auto: time once per key, keep the fastest ----------------------------------------------


def test_fused_auto_times_every_candidate_once_per_key_and_keeps_the_fastest(caplog):
    names = [f"fused {t.name} (simt)" for t in TILES] + ["im2col"]
    timer = FakeTimer({name: 3.0 + index for index, name in enumerate(names)})
    timer.ms[names[1]] = 1.5
    engine = Engine(Device("test", time=timer), mode="auto")
    with caplog.at_level(logging.DEBUG, logger=forward_engine.__name__):
        assert choose(engine) == names[1]
        assert choose(engine) == names[1]
    assert timer.timed == names  # each once, on the first call only
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert f"auto forward of deform_conv2d float32 {GEOMETRY} on test: {names[1]}" in message
    assert all(f"{name} " in message for name in names)

    timer.timed.clear()
    assert choose(engine, dtype_name="float64") == names[1]  # a new key: timed again
    # Only the tiles built for float64 (128x64x32 is not) and im2col.
    assert timer.timed == built("float64", "simt") + ["im2col"]


def test_fused_auto_keys_on_the_geometry_and_the_tf32_mode():
    timer = FakeTimer({**{f"fused {t.name} ({m})": 2.0 for t in TILES for m in ("simt",
                                                                                  "tensor")},
                       "im2col": 1.0})
    cache = {}
    for allow_tf32 in (False, True):
        for g in (GEOMETRY, dataclasses.replace(GEOMETRY, batch=3)):
            assert choose(Engine(Device("test", time=timer), mode="auto", cache=cache,
                                 allow_tf32=allow_tf32), g) == "im2col"
    tensor, simt = built("float32", "tensor"), built("float32", "simt")
    assert len(cache) == 4
    assert len(timer.timed) == 2 * (len(simt) + 1) + 2 * (len(tensor) + 1)
    assert sum(name.endswith("(tensor)") for name in timer.timed) == 2 * len(tensor)


def test_fused_mode_times_only_the_fused_tiles():
    names = built("float16", "tensor")
    timer = FakeTimer({name: 2.0 + index for index, name in enumerate(names)})
    timer.ms[names[2]] = 1.0
    engine = Engine(Device("test", time=timer), mode="fused")
    assert choose(engine, dtype_name="float16") == names[2]
    assert timer.timed == names


# --- skipped candidates and their reasons ---------------------------------------------------


def test_fused_skips_a_tile_that_does_not_fit_and_says_why(caplog):
    engine = Engine(Device("test"), mode="fused")
    with pytest.warns(RuntimeWarning, match=rf"{VARIABLE}=fused: skipped fused "
                                            rf"{TILES[0].name} \(simt\): its tiles need 49664 "
                                            rf"bytes of shared memory in float64, over the "
                                            rf"49152 bytes"), \
            caplog.at_level(logging.DEBUG, logger=forward_engine.__name__):
        assert choose(engine, dtype_name="float64") == f"fused {TILES[1].name} (simt)"
    assert "skipped fused 128x64x32 (simt): its tiles need 49664 bytes" in caplog.text


def test_fused_with_nothing_to_run_lists_every_tile_and_reason():
    engine = Engine(Device("test", arch=75), mode="fused")
    with pytest.raises(RuntimeError) as raised:
        choose(engine)
    message = str(raised.value)
    assert message.startswith(f"{VARIABLE}=fused, but no fused configuration can run "
                              f"deform_conv2d float32")
    for tile in TILES:
        assert (f"fused {tile.name} (simt): needs compute capability 8.0 or newer (WMMA with "
                f"bfloat16 and TF32), the device has 7.5") in message


def test_fused_auto_falls_back_to_im2col_when_no_tile_can_run(caplog):
    timer = FakeTimer({})
    engine = Engine(Device("test", arch=75, time=timer), mode="auto")
    with caplog.at_level(logging.DEBUG, logger=forward_engine.__name__):
        assert choose(engine) == "im2col"
    assert timer.timed == []  # one candidate: nothing to time
    assert "needs compute capability 8.0" in caplog.text


def test_fused_skips_what_the_device_check_rejects():
    rejected = TILES[0]

    def check(kernel, dtype_name, bits):
        assert bits == 32 and dtype_name == "float16"
        return "does not compile here: no crt/mma.h" if kernel.threads and (
            kernel.variant == f"tensor_{rejected.name}") else None

    engine = Engine(Device("test", check=check), mode="fused")
    with pytest.warns(RuntimeWarning, match="does not compile here: no crt/mma.h"):
        assert choose(engine, dtype_name="float16") == f"fused {TILES[1].name} (tensor)"


def test_fused_grid_limit_is_a_reason():
    g = dataclasses.replace(GEOMETRY, in_channels=70000, out_channels=70000, groups=70000)
    assert "over CUDA's 65535" in why_not(TILES[0], g, "float32", "simt", 90)
    assert why_not(TILES[0], GEOMETRY, "float32", "simt", 90) is None


def test_fused_engine_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        Engine(Device("test"), mode="fast")


def test_fused_numpy_default_engine_is_im2col(monkeypatch):
    monkeypatch.setenv(VARIABLE, "fused")
    assert choose(forward_engine.default_engine(numpy)) == "im2col"


# --- end to end on the host ------------------------------------------------------------------


def host_launch_any(kernel, dtype_name, bits, count, **args):
    """Tiled kernels in the block emulator, grid-stride ones in the one-thread host run."""
    launch = block_launch if kernel.threads is not None else host_launch
    return launch(kernel, dtype_name, bits, count, **args)


@pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the host run")
@pytest.mark.parametrize("fastest", ["im2col", f"fused {TILES[2].name} (simt)"])
def test_fused_auto_end_to_end_on_the_host(fastest):
    rng = numpy.random.default_rng(4000)
    arrays, options = split_case(conv_case(rng, dtype=numpy.float32, groups=2,
                                           offset_groups=2))
    g = deform_conv2d_geometry(*(None if arrays[k] is None else arrays[k].shape
                                 for k in OPERANDS), **options)
    operands = [arrays[k] for k in OPERANDS]
    ran = []

    def timer(run):
        before = len(ran)
        output = run()
        assert output.shape == g.output_shape
        return 1.0 if ran[before:] == [fastest] else 2.0

    names = {kernel: f"fused {tile.name} ({math})"
             for (tile, math), kernel in DEFORM_CONV_FUSED.items()}

    def recording(kernel, dtype_name, bits, count, **args):
        if kernel.threads or kernel.name == "deform_im2col":
            ran.append(names.get(kernel, "im2col"))
        return host_launch_any(kernel, dtype_name, bits, count, **args)

    engine = Engine(Device("host", time=timer), mode="auto")
    output = gpu.forward(*operands, g, dtype_name="float32", xp=numpy, launch=recording,
                         engine=engine)
    assert ran[-1] == fastest and len(ran) == len(TILES) + 2  # each timed, then the choice
    numpy.testing.assert_allclose(output, cpu.forward(*operands, g), rtol=1e-4, atol=1e-4)


# --- deterministic mode ------------------------------------------------------------------------


@pytest.mark.parametrize("mode, expected", [("auto", "im2col"),
                                            ("fused", f"fused {TILES[0].name} (simt)")])
def test_fused_deterministic_mode_chooses_without_timing(mode, expected):
    """A choice by timing could differ from process to process, and the bits with it."""
    timer = FakeTimer({})
    engine = Engine(Device("test", time=timer), mode=mode)
    chosen = engine.run(GEOMETRY, "float32", has_mask=False, has_bias=True, deterministic=True,
                        im2col=lambda: "im2col",
                        fused=lambda tile, math: f"fused {tile.name} ({math})")
    assert chosen == expected and timer.timed == []
    assert engine.choice(GEOMETRY, "float32", has_mask=False, has_bias=True,
                         deterministic=True) == expected
    assert engine.choice(GEOMETRY, "float32", has_mask=False, has_bias=True) is None


# --- auto compares each fused output with im2col's before timing it ----------------------------


def test_fused_auto_skips_a_tile_whose_output_disagrees_with_im2col(caplog):
    """A faulty fused kernel (here: one tile's output off by a tenth of its scale) is never
    chosen, however fast: auto warns, names it with the difference, and times the rest."""
    rng = numpy.random.default_rng(4100)
    reference = rng.standard_normal((2, 6, 7, 6))
    faulty = f"fused {TILES[1].name} (simt)"

    def run(name):
        output = reference + rng.standard_normal(reference.shape) * 1e-7
        if name == faulty:
            output[0, 0, 0, 0] += 0.1 * numpy.abs(reference).max()
        return name, output

    names = [f"fused {t.name} (simt)" for t in TILES] + ["im2col"]
    timer = FakeTimer({name: 2.0 + index for index, name in enumerate(names)})
    timer.ms[faulty] = 0.5  # the fastest, were it right
    engine = Engine(Device("test", time=lambda r: timer(lambda: r()[0]),
                           agree=lambda output, reference, *types: forward_engine.disagreement(
                               output[1], reference[1], *types)), mode="auto")
    message = rf"skipped {re.escape(faulty)}: its output differs from im2col's by 0\.1 of"
    with pytest.warns(RuntimeWarning, match=message), \
            caplog.at_level(logging.DEBUG, logger=forward_engine.__name__):
        chosen, _ = engine.run(GEOMETRY, "float32", has_mask=False, has_bias=True,
                               im2col=lambda: run("im2col"),
                               fused=lambda tile, math: run(f"fused {tile.name} ({math})"))
    assert chosen == names[0] != faulty
    assert faulty not in timer.timed and "im2col" in timer.timed
    assert f"skipped {faulty}: its output differs" in caplog.text


@pytest.mark.parametrize("dtype_name, math", sorted(forward_engine.AGREEMENT))
def test_fused_disagreement_follows_the_dtype_tolerance(dtype_name, math):
    reference = numpy.linspace(-3.0, 5.0, 60).reshape(3, 4, 5)
    tolerance = forward_engine.AGREEMENT[(dtype_name, math)]
    near, far = reference.copy(), reference.copy()
    near[1, 2, 3] += 0.5 * tolerance * 5.0
    far[1, 2, 3] += 2.0 * tolerance * 5.0
    assert forward_engine.disagreement(near, reference, dtype_name, math) is None
    assert "differs from im2col's" in forward_engine.disagreement(far, reference, dtype_name,
                                                                  math)


def test_fused_disagreement_compares_nan_and_infinities():
    reference = numpy.array([1.0, numpy.nan, numpy.inf, -numpy.inf])
    assert forward_engine.disagreement(reference.copy(), reference, "float32", "simt") is None
    for index, value in [(0, numpy.nan), (1, 0.0), (2, -numpy.inf), (3, 1.0)]:
        output = reference.copy()
        output[index] = value
        assert forward_engine.disagreement(output, reference, "float32", "simt") == (
            "its NaN and infinite outputs differ from im2col's")


def test_fused_disagreement_reads_bfloat16_views_bit_for_bit():
    values = numpy.array([1.0, -2.5, 3.0, 0.0078125], numpy.float32)
    bits = (values.view(numpy.uint32) >> 16).astype(numpy.uint16).view(numpy.int16)
    assert numpy.array_equal(forward_engine.view_as_float(bits, "bfloat16", numpy), values)
    shifted = bits.copy()
    shifted[0] += 64  # 1.0 -> 1.5 in bfloat16: a sixth of the largest magnitude
    assert "differs" in forward_engine.disagreement(shifted, bits, "bfloat16", "tensor")
