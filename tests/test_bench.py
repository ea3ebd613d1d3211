"""The benchmark (``python -m cudeform bench``), on the CPU with tiny layers: the
interleaving of the timing harness, the agreement check, the JSON rows, skipped
peers, failures of cudeform, and the torch side of the GPU peers on CPU tensors.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import types

import numpy
import pytest

import cudeform
from cudeform import _bench, _cli
from cudeform.__main__ import main as cudeform_main
from cudeform._bench import cases, checks, memory, roi_cases, runner, timing
from cudeform._bench.core_sides import core_sides
from cudeform._bench.pairs import FORWARD, FORWARD_BACKWARD, Pair, Side, deform_names, labels
from cudeform._bench.report import Report
from cudeform._cpu import parallel

JSON_KEYS = {"op", "shape", "dtype", "device", "pass", "ms", "peer", "peer_ms", "ratio"}
FAST = timing.Settings(warmup=1, repeats=2, min_repeats=1, budget_s=0.0)
DCNV2 = cases.Case("T1", "tiny DCNv2", batch=1, in_channels=4, out_channels=6, height=6,
                   width=7, mask=True, seed=5)
DILATED = cases.Case("T2", "tiny, dilation 2, 2 offset groups", batch=2, in_channels=4,
                     out_channels=4, height=7, width=5, dilation=2, offset_groups=2, seed=6)


def run_bench(tmp_path, tiny_cases, **options):
    """``(exit status, printed text, JSON rows)`` of a CPU run on ``tiny_cases``, with
    two workers unless ``thread_counts`` says otherwise."""
    out, path = io.StringIO(), tmp_path / "bench.json"
    options.setdefault("thread_counts", (2,))
    status = _bench.run("cpu", tiny_cases, json_path=str(path), out=out, settings=FAST,
                        **options)
    return status, out.getvalue(), json.loads(path.read_text())


# --- timing --------------------------------------------------------------------------


def test_interleaved_alternates_after_warm_up_and_takes_medians():
    log, now = [], [0.0]

    def call(name, durations):
        remaining = iter(durations)

        def function():
            log.append(name)
            now[0] += next(remaining)
        return function

    def clock():
        log.append("clock")
        return now[0]

    cudeform_run = call("cudeform", [9.0, 9.0, 0.001, 0.003, 0.002])
    peer_run = call("peer", [9.0, 9.0, 0.010, 0.030, 0.050])
    settings = timing.Settings(warmup=2, repeats=3, min_repeats=3, budget_s=1e9)
    result = timing.interleaved(cudeform_run, peer_run, settings,
                                sync=lambda: log.append("sync"), clock=clock)

    warm_up = ["cudeform", "peer"] * 2 + ["sync"]
    timed = []
    for _ in range(3):
        for name in ("cudeform", "peer"):
            timed += ["sync", "clock", name, "sync", "clock"]
    assert log == warm_up + timed
    assert result.first_ms == pytest.approx(2.0)  # median of 1, 3, 2 ms
    assert result.second_ms == pytest.approx(30.0)  # the warm-up's 9 s do not count
    assert result.rounds == 3


def test_interleaved_stops_on_its_budget_after_the_minimum():
    now = [0.0]

    def one_second():
        now[0] += 1.0

    settings = timing.Settings(warmup=0, repeats=10, min_repeats=3, budget_s=2.5)
    result = timing.interleaved(one_second, one_second, settings, clock=lambda: now[0])
    assert result.rounds == 3  # 2 s per round: over budget after the 2nd, minimum is 3
    settings = timing.Settings(warmup=0, repeats=10, min_repeats=1, budget_s=2.5)
    assert timing.interleaved(one_second, one_second, settings,
                              clock=lambda: now[0]).rounds == 2


# --- agreement check ----------------------------------------------------------------


def test_relative_error_and_tolerances():
    expected = numpy.array([1.0, -2.0, 4.0], numpy.float32)
    assert checks.relative_error(expected, expected + 4e-4) == pytest.approx(1e-4, rel=1e-2)
    assert checks.relative_error(expected, numpy.array([1.0, numpy.nan, 4.0])) == numpy.inf
    assert checks.relative_error(expected, expected[:2]) == numpy.inf
    assert checks.disagreements(["output"], [expected], [expected * (1 + 5e-4)], "float32") == []
    problems = checks.disagreements(["output"], [expected], [expected * 1.01], "float32")
    assert len(problems) == 1 and problems[0].startswith("output: relative error 1.00e-02")
    assert checks.disagreements(["output"], [expected], [expected * 1.005], "float16") == []


def raise_not_implemented():
    raise RuntimeError("deform_conv2d not implemented for 'BFloat16'\nmore lines")


def divide_by_zero():
    return 1 / 0


class FakePeer:
    """A peer computing cudeform's own results, spoiled by ``spoil`` if given; with
    ``fail`` the peer's or cudeform's side raises."""

    name = "fake peer"

    def __init__(self, spoil=None, fail=None):
        self.spoil = spoil or (lambda results: results)
        self.fail = fail

    def pairs(self, case, dtype, arrays):
        sides = core_sides(numpy, arrays, case)
        label, shape = labels(case)
        pairs = []
        for passes in (FORWARD, FORWARD_BACKWARD):
            side = sides[passes]
            peer = Side(raise_not_implemented if self.fail == "peer" else side.run,
                        lambda result, side=side: self.spoil(tuple(side.results(result))),
                        "tracemalloc")
            mine = Side(divide_by_zero, tuple) if self.fail == "cudeform" else side
            pairs.append(Pair(label, shape, dtype, passes, self.name, mine, peer,
                              deform_names(passes, case.mask)))
        return pairs


def swap_offset_gradient_halves(results):
    """The offset gradient with dy and dx exchanged: a layout bug."""
    if len(results) == 1:
        return results
    grad_offset = results[2].copy()
    grad_offset[:, 0::2], grad_offset[:, 1::2] = results[2][:, 1::2], results[2][:, 0::2]
    return results[:2] + (grad_offset,) + results[3:]


def test_a_peer_that_agrees_gets_a_ratio(tmp_path):
    status, text, rows = run_bench(tmp_path, [DCNV2], peers=[FakePeer()])
    assert status == 0 and "WARNING" not in text
    assert [(r["pass"], r["peer"]) for r in rows] == [("fwd", "fake peer"),
                                                       ("fwd+bwd", "fake peer")]
    for row in rows:
        assert row["ratio"] == pytest.approx(row["ms"] / row["peer_ms"], rel=1e-12)


@pytest.mark.parametrize("spoil, wrong", [
    (lambda results: (results[0] * 1.01,) + results[1:], "output"),
    (swap_offset_gradient_halves, "grad offset"),
])
def test_the_agreement_check_catches_a_wrong_peer(tmp_path, spoil, wrong):
    status, text, rows = run_bench(tmp_path, [DCNV2], peers=[FakePeer(spoil)])
    assert status == 0
    assert "WARNING: fake peer disagrees with cudeform on T1 float32" in text
    assert f"{wrong}: relative error" in text
    wrong_rows = [r for r in rows if wrong == "output" or r["pass"] == "fwd+bwd"]
    assert wrong_rows and all(r["ratio"] is None and r["peer_ms"] > 0 for r in wrong_rows)
    assert "mismatch" in text


def test_a_failing_peer_is_skipped_and_a_failing_cudeform_fails_the_run(tmp_path):
    status, text, rows = run_bench(tmp_path, [DCNV2], peers=[FakePeer(fail="peer")])
    assert status == 0 and rows == []
    assert ("skipped: fake peer on T1 float32 fwd, T1 float32 fwd+bwd: RuntimeError: "
            "deform_conv2d not implemented for 'BFloat16'") in text
    status, text, rows = run_bench(tmp_path, [DCNV2], peers=[FakePeer(fail="cudeform")])
    assert status == 1 and rows == []
    assert "FAILED: cudeform failed on T1 float32 fwd" in text and "ZeroDivisionError" in text


# --- whole CPU runs with the peers installed here --------------------------------------


def test_cpu_run_rows_keys_ratios_and_skips(tmp_path):
    pytest.importorskip("onnxruntime")
    status, text, rows = run_bench(tmp_path, [DCNV2, DILATED])
    assert status == 0, text
    assert "WARNING" not in text and "FAILED" not in text
    assert rows and all(set(row) == JSON_KEYS for row in rows)  # memory stays out
    for row in rows:
        assert row["device"] == "cpu (2 threads)" and row["dtype"] == "float32"
        assert row["op"] == "deform_conv2d" and row["pass"] in ("fwd", "fwd+bwd", "bwd")
        assert row["ratio"] == pytest.approx(row["ms"] / row["peer_ms"], rel=1e-12)
    found = {(row["shape"].split(":")[0], row["peer"], row["pass"]) for row in rows}
    assert ("T1", "onnxruntime DeformConv", "fwd") in found
    assert ("T2", "onnxruntime DeformConv", "fwd") in found
    assert not any(peer == "onnxruntime DeformConv" and passes == "fwd+bwd"
                   for _, peer, passes in found)  # forward only
    for shape in ("T1", "T2"):
        assert (shape, "cudeform deform_conv2d (fwd)", "bwd") in found
    if importlib.util.find_spec("openvino") is not None:
        assert ("T1", "OpenVINO DeformableConvolution", "fwd") in found
        assert ("T2", "OpenVINO DeformableConvolution", "fwd") in found
    if importlib.util.find_spec("chainer") is not None:
        assert ("T1 (DCNv1 form, mask dropped)", "chainer sampler", "fwd+bwd") in found
        assert not any(shape.startswith("T2") and peer == "chainer sampler"
                       for shape, peer, _ in found)
        assert "skipped: chainer sampler on T2: dilation 2 and 2 offset groups" in text
        memory_table = text.split("peak extra memory of forward+backward")[1]
        line = next(x for x in memory_table.splitlines() if "chainer sampler" in x)
        assert line.split()[1:7] == ["T1", "(DCNv1", "form)", "float32", "cpu", "(2"]
        assert "n/a" not in line  # both NumPy-based: tracemalloc sees both
    assert "peak extra memory of forward+backward" in text
    assert "below 1 means cudeform is faster" in text


def test_a_missing_peer_is_reported_as_skipped(tmp_path, monkeypatch):
    for name in ("onnxruntime", "openvino", "chainer", "torchvision"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails: "halted"
    monkeypatch.delitem(sys.modules, "cudeform.adapters.chainer", raising=False)
    status, text, rows = run_bench(tmp_path, [DCNV2])
    assert status == 0, text
    assert "skipped: onnxruntime DeformConv (not installed: import of onnxruntime halted" in text
    assert "skipped: OpenVINO DeformableConvolution (not installed: import of openvino" in text
    assert "skipped: chainer sampler (not installed: import of chainer halted" in text
    if importlib.util.find_spec("torch") is not None:
        assert "skipped: torchvision deform_conv2d (not installed: " in text
    assert {row["peer"] for row in rows} <= {"torch conv2d (floor)",
                                             "cudeform deform_conv2d (fwd)"}


def test_without_any_peer_the_bench_prints_cudeform_own_times(tmp_path):
    blocked = ("torch", "torchvision", "chainer", "onnxruntime", "onnx", "openvino", "cupy")
    script = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
              "import cudeform._bench as bench\n"
              f"sys.exit(bench.main(['--quick', '--json', {str(tmp_path / 'b.json')!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "bench on cpu (quick run)" in done.stdout  # auto: no CuPy, so cpu
    for peer in ("onnxruntime DeformConv", "OpenVINO DeformableConvolution",
                 "chainer sampler", "torchvision deform_conv2d", "torch conv2d (floor)"):
        assert f"skipped: {peer} (not installed:" in done.stdout
    rows = json.loads((tmp_path / "b.json").read_text())
    own = {(row["op"], row["peer"], row["pass"]) for row in rows}
    assert ("deform_conv2d", "cudeform deform_conv2d (fwd)", "bwd") in own
    if parallel.worker_count() > 1:
        for op in ("deform_roi_pool", "deform_psroi_pool"):
            assert {(op, "cudeform, 1 thread", "fwd"), (op, "cudeform, 1 thread", "bwd")} <= own
    assert all(set(row) == JSON_KEYS and row["ratio"] > 0 for row in rows)
    table = done.stdout.split("peak extra memory")[0]
    assert "cudeform deform_conv2d (fwd)" in table  # printed, not only in the JSON


def test_help_is_plain_text_and_shows_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        _bench.main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # the help wraps lines
    assert "``" not in text and "(default: auto)" in text and "--markdown FILE" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_device_cuda_without_a_gpu_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "why_no_cuda", lambda: "no CUDA device (CuPy: none here)")
    assert cudeform_main(["bench", "--device", "cuda"]) == 2
    error = capsys.readouterr().err
    assert error == ("python -m cudeform bench: error: --device cuda: no CUDA device (CuPy: "
                     "none here)\n")


@pytest.mark.parametrize("argv, environment, message", [
    (["--no-such-option"], {}, "unrecognized arguments: --no-such-option (see python -m "
                               "cudeform bench --help)"),
    (["--device", "tpu"], {}, "argument --device: invalid choice: 'tpu'"),
    (["--quick"], {"CUDEFORM_NUM_THREADS": "many"},
     "CUDEFORM_NUM_THREADS is not valid: expected a positive integer, got 'many'"),
    (["--quick"], {"CUDEFORM_WORKSPACE_LIMIT": "lots"},
     "CUDEFORM_WORKSPACE_LIMIT is not valid"),
    (["--quick", "--json", "/no/such/folder/b.json"], {},
     "--json /no/such/folder/b.json: cannot write it (No such file or directory)"),
    (["--quick", "--markdown", "/"], {}, "--markdown /: cannot write it (Is a directory)"),
])
def test_usage_errors_are_one_line_with_status_2(argv, environment, message):
    done = subprocess.run([sys.executable, "-m", "cudeform", "bench", *argv],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **environment))
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("python -m cudeform bench: error: ")
    assert message in done.stderr and "Traceback" not in done.stderr


def test_thread_counts_reach_cudeform_and_the_peers(tmp_path):
    seen = []

    class CountingPeer(FakePeer):
        def pairs(self, case, dtype, arrays):
            seen.append(parallel.worker_count())
            return super().pairs(case, dtype, arrays)

    status, text, rows = run_bench(tmp_path, [DCNV2], peers=[CountingPeer()],
                                   thread_counts=(1, 3))
    assert status == 0, text
    assert seen == [1, 3]
    assert [row["device"] for row in rows] == ["cpu (1 thread)"] * 2 + ["cpu (3 threads)"] * 2


def test_markdown_table_has_every_row_and_the_machine(tmp_path):
    table = tmp_path / "bench.md"
    status, text, rows = run_bench(tmp_path, [DCNV2], peers=[FakePeer()],
                                   markdown_path=str(table))
    lines = table.read_text().splitlines()
    assert status == 0, text
    assert lines[0].startswith("Measured ") and " on " in lines[0] and "numpy " in lines[0]
    body = [line for line in lines if line.startswith("| deform_conv2d")]
    assert len(body) == len(rows) == 2
    assert body[0].startswith("| deform_conv2d | T1 | cpu (2 threads) | fwd | ")
    assert "- T1: N=1, 4->6, 6x7" in table.read_text()


# --- the torch side of the GPU peers, on CPU tensors -----------------------------------


def run_pairs(pairs):
    report = Report(io.StringIO())
    for pair in pairs:
        runner.run_pair(pair, types.SimpleNamespace(name="cpu", sync=lambda: None), FAST,
                        report)
    return report


@pytest.mark.parametrize("broken", [False, True], ids=["agrees", "drops-the-mask"])
def test_torchvision_peer_on_cpu_tensors(broken):
    pytest.importorskip("torch")
    from cudeform.adapters import torch as adapter
    from cudeform._bench.torch_peers import TorchvisionPeer

    def without_mask(x, offset, weight, mask=None, **options):
        return adapter.deform_conv2d(x, offset, weight, **options)

    ops = types.SimpleNamespace(deform_conv2d=without_mask if broken else adapter.deform_conv2d)
    peer = TorchvisionPeer("cpu", torchvision_ops=ops)
    report = run_pairs(peer.pairs(DCNV2, "float32", cases.inputs(DCNV2)))
    assert [row.passes for row in report.rows] == ["fwd", "fwd+bwd"]
    assert not report.failures and not report.skips
    if broken:
        assert len(report.warnings) == 2 and all(r.ratio is None for r in report.rows)
        assert "grad mask: missing" in report.warnings[1]  # an unused mask has no gradient
    else:
        assert report.warnings == [] and all(r.ratio > 0 for r in report.rows)
    # torch's CPU allocations are invisible: no number rather than a wrong one
    assert [(m.cudeform_bytes, m.peer_bytes) for m in report.memory_rows] == [(None, None)]


def test_conv_floor_is_checked_against_zero_offsets(monkeypatch):
    torch = pytest.importorskip("torch")
    from cudeform._bench.torch_peers import ConvFloorPeer

    peer = ConvFloorPeer("cpu")
    pairs = peer.pairs(DILATED, "float32", cases.inputs(DILATED))
    assert not run_pairs(pairs).warnings
    real_conv2d = torch.nn.functional.conv2d

    def undilated(x, weight, bias, **options):  # a floor with the wrong dilation
        return real_conv2d(x, weight, bias, **dict(options, dilation=1, padding=1))

    monkeypatch.setattr(torch.nn.functional, "conv2d", undilated)
    report = run_pairs(ConvFloorPeer("cpu").pairs(DILATED, "float32", cases.inputs(DILATED)))
    assert len(report.warnings) == 2


def test_gpu_run_wiring_on_cpu_tensors(tmp_path, monkeypatch):
    """The GPU run's peers and header, with CPU tensors and a torchvision stand-in
    (cudeform's adapter), since this machine has no GPU."""
    pytest.importorskip("torch")
    from cudeform._bench import chainer_peer, gpu_peers, torch_peers
    from cudeform.adapters import torch as adapter

    ops = types.SimpleNamespace(deform_conv2d=adapter.deform_conv2d)
    monkeypatch.setattr(gpu_peers, "LOADERS", (
        ("torchvision deform_conv2d", lambda: torch_peers.TorchvisionPeer("cpu", ops)),
        ("chainer sampler", lambda: chainer_peer.ChainerPeer(numpy, memory="tracemalloc")),
        ("cuDNN conv2d (floor)", lambda: torch_peers.ConvFloorPeer("cpu", adapter=True)),
    ))
    monkeypatch.setattr(gpu_peers, "CudaDevice", lambda: types.SimpleNamespace(
        name="cuda", sync=lambda: None, release=lambda: None))
    out, path = io.StringIO(), tmp_path / "gpu.json"
    status = _bench.run("cuda", [DCNV2, DILATED], quick=True, json_path=str(path), out=out,
                        settings=FAST)
    text, rows = out.getvalue(), json.loads(path.read_text())
    assert status == 0, text
    assert "WARNING" not in text and "FAILED" not in text
    assert "settings: cudeform workspace limit" in text and "cudnn.benchmark" in text
    assert {row["device"] for row in rows} == {"cuda"}
    assert {row["dtype"] for row in rows} == {"float32"}  # quick: float32 only
    peers = {(row["shape"].split(":")[0], row["peer"], row["pass"]) for row in rows}
    for shape in ("T1", "T2"):
        for passes in ("fwd", "fwd+bwd"):
            assert (shape, "torchvision deform_conv2d", passes) in peers
            assert (shape, "torch conv2d (floor)", passes) in peers


# --- memory, cases -------------------------------------------------------------------


def test_tracemalloc_peak_sees_numpy_buffers():
    def allocate():
        scratch = numpy.ones(1 << 20)  # 8 MiB, freed before returning
        return numpy.zeros(1 << 17) + scratch[: 1 << 17]  # 1 MiB result

    peak = memory.peak_bytes("tracemalloc", allocate, lambda: None)
    assert 9 * memory.MIB <= peak < 11 * memory.MIB
    assert memory.peak_bytes(None, allocate, lambda: None) is None


def test_cupy_hook_counts_blocks_taken_while_registered():
    pytest.importorskip("cupy")
    hook = memory.cupy_peak_hook()
    hook.malloc_postprocess(device_id=0, size=100, mem_size=512, mem_ptr=1, pmem_id=1)
    hook.malloc_postprocess(device_id=0, size=900, mem_size=1024, mem_ptr=2, pmem_id=2)
    hook.free_postprocess(device_id=0, mem_size=512, mem_ptr=1, pmem_id=1)
    hook.free_postprocess(device_id=0, mem_size=4096, mem_ptr=3, pmem_id=3)  # older block
    hook.malloc_postprocess(device_id=0, size=10, mem_size=512, mem_ptr=0, pmem_id=0)  # failed
    assert (hook.current, hook.peak) == (1024, 1536)


def test_cases_cover_what_the_issue_asks_and_are_seeded():
    cpu = cases.CPU_CASES
    assert any(not c.mask and c.offset_groups == 1 and c.dilation == 1 for c in cpu)
    assert any(c.mask for c in cpu)
    assert any(c.dilation > 1 and c.offset_groups > 1 for c in cpu)
    s1, s2, s3, s4 = cases.GPU_CASES
    assert (s1.batch, s1.in_channels, s1.height, s1.width, s1.dilation, s1.offset_groups,
            s1.mask) == (1, 512, 38, 63, 2, 4, False)
    assert [(c.in_channels, c.height, c.width, c.batch, c.mask) for c in (s2, s3, s4)] == [
        (512, 25, 42, 2, True), (256, 50, 84, 2, True), (128, 100, 168, 2, True)]
    assert [c.batch for c in cases.cases_for("cuda", quick=False)] == [1, 2, 2, 2] + [16] * 4
    assert cases.cases_for("cuda", quick=True) == cases.GPU_CASES
    first, again = cases.inputs(DCNV2), cases.inputs(DCNV2)
    for name in ("input", "offset", "weight", "mask"):
        numpy.testing.assert_array_equal(first[name], again[name])
    assert 0 < first["mask"].min() and first["mask"].max() < 1
    assert 1.5 < first["offset"].std() < 2.5
    y = cudeform.deform_conv2d(first["input"], first["offset"], first["weight"], padding=1,
                               mask=first["mask"])
    assert y.shape == (1, 6, 6, 7)  # padding = dilation keeps the size


# --- the CPU peers and cudeform's own times --------------------------------------------


def test_openvino_peer_agrees_and_a_wrong_border_rule_is_caught(monkeypatch):
    pytest.importorskip("openvino")
    from cudeform._bench.openvino_peer import OpenVinoPeer

    report = run_pairs(OpenVinoPeer().pairs(DCNV2, "float32", cases.inputs(DCNV2)) +
                       OpenVinoPeer().pairs(DILATED, "float32", cases.inputs(DILATED)))
    assert [row.passes for row in report.rows] == ["fwd", "fwd"]
    assert not report.warnings and all(row.ratio > 0 for row in report.rows)
    opset8 = sys.modules["openvino.opset8"]
    real = opset8.deformable_convolution

    def torchvision_border(*args, **options):  # samples near the border read differently
        return real(*args, **dict(options, bilinear_interpolation_pad=False))

    monkeypatch.setattr(opset8, "deformable_convolution", torchvision_border)
    report = run_pairs(OpenVinoPeer().pairs(DCNV2, "float32", cases.inputs(DCNV2)))
    assert len(report.warnings) == 1 and report.rows[0].ratio is None


TINY_ROI = roi_cases.RoICase("Rt", "tiny", "deform_roi_pool", rois=6, channels=3, batch=2,
                             height=5, width=6, spatial_scale=1 / 16, pooled=2, seed=7)
TINY_PSROI = roi_cases.RoICase("Pt", "tiny", "deform_psroi_pool", rois=5, channels=2,
                               batch=1, height=6, width=5, spatial_scale=1 / 16, pooled=3,
                               seed=8)


def test_own_times_roi_ops_on_every_worker_against_one(tmp_path, monkeypatch):
    from cudeform._bench.own_times import OneWorker

    status, text, rows = run_bench(tmp_path, [DCNV2, TINY_ROI, TINY_PSROI],
                                   peers=[OneWorker()], thread_counts=(1, 3))
    assert status == 0 and "WARNING" not in text, text
    assert "skipped: cudeform, 1 thread on Rt, Pt: cudeform has one worker here" in text
    assert [(r["op"], r["pass"], r["device"]) for r in rows] == [
        ("deform_roi_pool", "fwd", "cpu (3 threads)"),
        ("deform_roi_pool", "bwd", "cpu (3 threads)"),
        ("deform_psroi_pool", "fwd", "cpu (3 threads)"),
        ("deform_psroi_pool", "bwd", "cpu (3 threads)")]  # the convolution is not theirs
    # The check compares the workers' results with one worker's: a wrong split shows.
    from cudeform._cpu import deform_roi_pool

    real = deform_roi_pool._forward_part

    def shifted(g, data, rois, offset, output, part):
        real(g, data, rois, offset, output, slice(part.start, max(part.start, part.stop - 1)))

    monkeypatch.setattr(deform_roi_pool, "_forward_part", shifted)  # drops a RoI per worker
    status, text, rows = run_bench(tmp_path, [TINY_ROI], peers=[OneWorker()],
                                   thread_counts=(3,))
    assert "WARNING: cudeform, 1 thread disagrees with cudeform on Rt float32 fwd" in text


def test_environment_names_the_blas_and_its_kernels():
    text = _bench.environment.versions()
    assert "numpy " in text and "openvino " in text
    blas = _bench.environment.blas()
    assert blas == "BLAS unknown" or blas.split()[0] in ("OpenBLAS", "MKL", "blis")
    assert f"with {blas}" in text


def test_cpu_layers_and_roi_cases_are_the_ones_the_targets_name():
    layers = [(c.batch, c.in_channels, c.height, c.width, c.out_channels, c.padding, c.mask)
              for c in cases.CPU_LAYERS]
    assert layers == [(4, 64, 56, 56, 64, 1, False), (2, 256, 28, 28, 256, 1, False),
                      (1, 512, 14, 14, 512, 1, False)]
    full = cases.cases_for("cpu", quick=False)
    assert set(cases.CPU_LAYERS + roi_cases.ROI_CASES) <= set(full)
    assert not set(cases.CPU_LAYERS) & set(cases.cases_for("cpu", quick=True))
    assert [case.op for case in roi_cases.ROI_CASES] == ["deform_roi_pool", "deform_psroi_pool"]
    for case in roi_cases.ROI_CASES:
        assert (case.rois, case.channels, case.pooled) == (512, 256, 7)
    small = roi_cases.QUICK_ROI_CASES[1]
    arrays = small.arrays()
    output = cudeform.deform_psroi_pool(arrays["input"], arrays["rois"], arrays["offset"],
                                        **small.options())
    assert output.shape == (small.rois, small.channels, 7, 7) and numpy.abs(output).max() > 0
