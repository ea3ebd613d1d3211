"""``python -m cudeform bench``: cudeform's deform_conv2d against every peer found
on this machine, in one run, and, on the CPU, its own backward/forward ratios and
the RoI ops' speed-up on every core.

Each pair (cudeform and one peer, on one layer, thread count, dtype and pass) is
first checked for agreement, then timed interleaved with warm-up (medians), and
its forward+backward measured for peak extra memory. See the modules:

- ``cases``, ``roi_cases``: the layers (CPU: C1-C6; GPU: S1-S4 and their batch-16
  versions) and the RoI pooling cases (CPU);
- ``cpu_peers`` / ``gpu_peers``: which peers each device has, and how to sync it;
- ``onnxruntime_peer``, ``openvino_peer``, ``chainer_peer``, ``torch_peers``,
  ``core_sides``, ``own_times``: the calls;
- ``checks``, ``timing``, ``memory``: agreement, interleaved medians, peak memory;
- ``runner``: check, time, measure; ``report``: tables, JSON and markdown.

JSON rows have exactly the keys ``op, shape, dtype, device, pass, ms, peer,
peer_ms, ratio``. ``ms`` and ``peer_ms`` are medians in milliseconds; ``ratio`` is
``ms / peer_ms`` (below 1: cudeform is faster), and null when the peer's results
disagreed with cudeform's (``peer_ms`` is then still the measured median).
``device`` is ``cuda`` or ``cpu (N threads)``. Memory goes to its own printed
table, not into the JSON.

The exit status is 0 on success, 1 when cudeform itself failed on some pair,
2 on a usage error (one line on stderr: a bad option or setting, an output file
that cannot be written, ``--device cuda`` without a GPU), 130 when interrupted.
"""

from __future__ import annotations

import time

import cudeform
from cudeform import _cli
from cudeform._bench import cases as cases_module
from cudeform._bench import environment
from cudeform._bench.imports import load_peers
from cudeform._bench.report import Report
from cudeform._bench.runner import run_cases
from cudeform._bench.timing import Settings
from cudeform._cli import (
    Parser, add_device_option, require_cuda, require_settings, require_writable_file,
)

SETTINGS = {
    # (device, quick): the CPU quick run stays under a minute on two cores, the full
    # GPU run within about three minutes on an H100.
    ("cpu", True): Settings(warmup=1, repeats=5, min_repeats=3, budget_s=1.0),
    ("cpu", False): Settings(warmup=3, repeats=25, min_repeats=7, budget_s=4.0),
    ("cuda", True): Settings(warmup=2, repeats=7, min_repeats=3, budget_s=0.3),
    ("cuda", False): Settings(warmup=2, repeats=15, min_repeats=4, budget_s=0.6),
}


def _parser():
    parser = Parser(
        prog="python -m cudeform bench",
        description="Time cudeform against every peer found on this machine (onnxruntime, "
                    "OpenVINO, Chainer, torch, torchvision, cuDNN), interleaved, after "
                    "checking that their results agree. On the CPU it also times "
                    "cudeform's backward against its forward, and the RoI ops on every "
                    "core against one.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and the small layers only; on the GPU only "
                             "float32 and the batch-as-given layers")
    parser.add_argument("--json", metavar="FILE",
                        help="write the rows as a JSON list (keys: op, shape, dtype, device, "
                             "pass, ms, peer, peer_ms, ratio)")
    parser.add_argument("--markdown", metavar="FILE",
                        help="write the rows as a markdown table, with the machine, the "
                             "versions and the date")
    add_device_option(parser, "cuda when CuPy sees a GPU, else cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    require_settings()  # the settings the NumPy path reads, checked before any work
    require_writable_file("--json", args.json)
    require_writable_file("--markdown", args.markdown)
    device = args.device
    if device == "cuda":
        require_cuda()
    elif device == "auto":
        device = "cpu" if _cli.why_no_cuda() is not None else "cuda"
    return run(device, cases_module.cases_for(device, args.quick), quick=args.quick,
               json_path=args.json, markdown_path=args.markdown)


def _machine(device, quick, thread_counts):
    """The device's module (``cpu_peers`` or ``gpu_peers``), device object and dtypes."""
    if device == "cpu":
        from cudeform._bench import cpu_peers

        return cpu_peers, cpu_peers.CpuDevice(quick, thread_counts), cpu_peers.DTYPES
    from cudeform._bench import gpu_peers

    dtypes = gpu_peers.QUICK_DTYPES if quick else gpu_peers.FULL_DTYPES
    return gpu_peers, gpu_peers.CudaDevice(), dtypes


def run(device, cases, *, quick=False, json_path=None, markdown_path=None, out=None,
        settings=None, dtypes=None, peers=None, thread_counts=None):
    """Run the bench on ``cases`` (:class:`cases.Case` and :class:`roi_cases.RoICase`);
    print to ``out`` (stdout by default). ``settings``, ``dtypes``, ``peers`` and the
    CPU's ``thread_counts`` default to the device's (a full CPU run: 1 and all
    workers); tests pass tiny cases, fast settings or fake peers. Returns the exit status."""
    module, machine, default_dtypes = _machine(device, quick, thread_counts)
    report = Report(out, json_path, module.MEMORY_NOTE, markdown_path)
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
    report.print(f"cudeform {cudeform.__version__} bench on {device} "
                 f"({'quick' if quick else 'full'} run), {time.strftime('%Y-%m-%d')}")
    report.context(machine=environment.machine(device), versions=environment.versions())
    report.print(f"cudeform runs through {module.CUDEFORM_API}.")
    report.print(module.notes())
    report.print(f"timing: median of up to {settings.repeats} interleaved rounds (cudeform, peer, "
                 f"cudeform, peer, ...) after {settings.warmup} warm-up round(s); a pair stops "
                 f"after {settings.min_repeats} rounds once {settings.budget_s:g} s of timing "
                 f"have passed" + ("; each call between device synchronisations."
                                   if device == "cuda" else "."))
    report.print("fwd+bwd: the forward, then the backward with a gradient of ones, giving every "
                 "gradient on both sides (input, offset, weight, mask; the floors: input, "
                 "weight). bwd: the backward alone.")
    report.print("Before timing, the peer's results are checked against cudeform's (the "
                 "floors: against cudeform with zero offsets and no mask).")
    report.print("ratio = cudeform ms / peer ms: below 1 means cudeform is faster. Against "
                 "'cudeform deform_conv2d (fwd)' it is backward / forward; against 'cudeform, "
                 "1 thread' it is the time on all threads / on one (the speed-up is 1 / ratio).")
    report.print()
    report.print("shapes (convolutions: 3x3 kernels, stride 1, padding = dilation so the output "
                 "has the input's size; offsets ~ 2 px, masks in (0, 1)):")
    for case in cases:
        report.print(f"  {case.name:7s} {case.geometry()} - {case.about}")
    report.print('  "(DCNv1 form)": the mask is dropped on both sides (Chainer\'s sampler has '
                 "none).")
    report.print()
