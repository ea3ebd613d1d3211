"""``python -m cudeform bench``: cudeform's deform_conv2d against every peer found
on this machine, in one run.

Each pair (cudeform and one peer, on one layer, dtype and pass) is first checked
for agreement, then timed interleaved with warm-up (medians), and its
forward+backward measured for peak extra memory. See the modules:

- ``cases``: the layers (CPU: C1-C3; GPU: S1-S4 and their batch-16 versions);
- ``cpu_peers`` / ``gpu_peers``: which peers each device has, and how to sync it;
- ``onnxruntime_peer``, ``chainer_peer``, ``torch_peers``, ``core_sides``: the calls;
- ``checks``, ``timing``, ``memory``: agreement, interleaved medians, peak memory;
- ``runner``: check, time, measure; ``report``: tables and JSON.

JSON rows have exactly the keys ``op, shape, dtype, device, pass, ms, peer,
peer_ms, ratio``. ``ms`` and ``peer_ms`` are medians in milliseconds; ``ratio`` is
``ms / peer_ms`` (below 1: cudeform is faster), and null when the peer's results
disagreed with cudeform's (``peer_ms`` is then still the measured median).
Memory goes to its own printed table, not into the JSON.

The exit status is 0 on success, 1 when cudeform itself failed on some pair,
2 when ``--device cuda`` finds no GPU, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys

import cudeform
from cudeform._bench import cases as cases_module
from cudeform._bench import environment
from cudeform._bench.imports import load_peers
from cudeform._bench.report import Report
from cudeform._bench.runner import run_cases
from cudeform._bench.timing import Settings

SETTINGS = {
    # (device, quick): the CPU quick run stays under a minute on two cores, the full
    # GPU run within about three minutes on an H100.
    ("cpu", True): Settings(warmup=1, repeats=5, min_repeats=3, budget_s=1.0),
    ("cpu", False): Settings(warmup=3, repeats=25, min_repeats=7, budget_s=4.0),
    ("cuda", True): Settings(warmup=2, repeats=7, min_repeats=3, budget_s=0.3),
    ("cuda", False): Settings(warmup=2, repeats=15, min_repeats=4, budget_s=0.6),
}


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m cudeform bench",
        description="Time cudeform's deform_conv2d against every peer found on this machine "
                    "(onnxruntime, Chainer, torch, torchvision, cuDNN), interleaved, after "
                    "checking that their results agree.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats; on the GPU only float32 and the batch-as-given "
                             "layers")
    parser.add_argument("--json", metavar="FILE",
                        help="write the rows as a JSON list (keys: op, shape, dtype, device, "
                             "pass, ms, peer, peer_ms, ratio)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when CuPy sees a GPU, else cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = args.device
    if device != "cpu":
        why_not = environment.cuda_unavailable()
        if why_not is not None and device == "cuda":
            print(f"--device cuda: no GPU ({why_not})", file=sys.stderr)
            return 2
        device = "cpu" if why_not is not None else "cuda"
    return run(device, cases_module.cases_for(device, args.quick), quick=args.quick,
               json_path=args.json)


def _machine(device, quick):
    """The device's module (``cpu_peers`` or ``gpu_peers``), device object and dtypes."""
    if device == "cpu":
        from cudeform._bench import cpu_peers

        return cpu_peers, cpu_peers.CpuDevice(), cpu_peers.DTYPES
    from cudeform._bench import gpu_peers

    dtypes = gpu_peers.QUICK_DTYPES if quick else gpu_peers.FULL_DTYPES
    return gpu_peers, gpu_peers.CudaDevice(), dtypes


def run(device, cases, *, quick=False, json_path=None, out=None, settings=None, dtypes=None,
        peers=None):
    """Run the bench on ``cases`` (a sequence of :class:`cases.Case`); print to ``out``
    (stdout by default). ``settings``, ``dtypes`` and ``peers`` default to the
    device's; tests pass tiny cases, fast settings or fake peers. Returns the exit status."""
    module, machine, default_dtypes = _machine(device, quick)
    report = Report(out, json_path, module.MEMORY_NOTE)
    if peers is None:
        peers, missing = load_peers(module.LOADERS)
        for name, reason in missing:
            report.skipped(name, reason)
    dtypes = dtypes or default_dtypes
    settings = settings or SETTINGS[(device, quick)]
    _print_header(report, device, quick, settings, cases, module)
    status = 0
    try:
        report.start_table()
        run_cases(cases, dtypes, peers, machine, settings, report)
    except KeyboardInterrupt:
        report.print("INTERRUPTED: the rows above are complete; the rest was not run.")
        status = 130
    report.summary()
    if report.failures:
        status = status or 1
    return status


def _print_header(report, device, quick, settings, cases, module):
    report.print(f"cudeform {cudeform.__version__} bench of deform_conv2d on {device} "
                 f"({'quick' if quick else 'full'} run)")
    report.print(f"machine: {environment.machine(device)}")
    report.print(f"versions: {environment.versions()}")
    report.print(f"cudeform runs through {module.CUDEFORM_API}.")
    report.print(module.notes())
    report.print(f"timing: median of up to {settings.repeats} interleaved rounds (cudeform, peer, "
                 f"cudeform, peer, ...) after {settings.warmup} warm-up round(s); a pair stops "
                 f"after {settings.min_repeats} rounds once {settings.budget_s:g} s of timing "
                 f"have passed" + ("; each call between device synchronisations."
                                   if device == "cuda" else "."))
    report.print("fwd+bwd: the forward, then the backward with a gradient of ones, giving every "
                 "gradient on both sides (input, offset, weight, mask; the floors: input, "
                 "weight).")
    report.print("Before timing, the peer's results are checked against cudeform's (the "
                 "floors: against cudeform with zero offsets and no mask).")
    report.print("ratio = cudeform ms / peer ms: below 1 means cudeform is faster.")
    report.print()
    report.print("shapes (3x3 kernels, stride 1, padding = dilation so the output has the "
                 "input's size; offsets ~ 2 px, masks in (0, 1)):")
    for case in cases:
        report.print(f"  {case.name:7s} {case.geometry()} - {case.about}")
    report.print('  "(DCNv1 form)": the mask is dropped on both sides (Chainer\'s sampler has '
                 "none).")
    report.print()
