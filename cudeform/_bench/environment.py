"""What the bench runs on: the device to use, the machine and library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform


# (label, distributions that provide it)
LIBRARIES = (
    ("numpy", ("numpy",)),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    ("onnx", ("onnx",)),
    ("openvino", ("openvino",)),
    ("chainer", ("chainer",)),
    ("torch", ("torch",)),
    ("torchvision", ("torchvision",)),
    ("cupy", ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x")),
)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine(device):
    """One line: CPU, cores, OS, Python and, on CUDA, the GPU."""
    text = (f"{cpu_model()}, {os.cpu_count()} cores ({usable_cores()} usable){_load()}; "
            f"{platform.system()} {platform.machine()}; Python {platform.python_version()}")
    if device == "cuda":
        text += f"; GPU: {gpu_description()}"
    return text


def _load():
    """The load average at the start: other work on the machine skews CPU timings."""
    try:
        return f", load average {os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return ""


def gpu_description():
    try:
        import cupy

        runtime = cupy.cuda.runtime
        device = cupy.cuda.Device()
        name = runtime.getDeviceProperties(device.id)["name"]
        name = name.decode() if isinstance(name, bytes) else name
        total = runtime.memGetInfo()[1] / 2**30
        return (f"{name} ({total:.0f} GiB), CUDA runtime {runtime.runtimeGetVersion()}, "
                f"driver {runtime.driverGetVersion()}")
    except Exception as error:  # describing the GPU must not stop the bench
        return f"unknown ({type(error).__name__}: {error})"


def version_of(distributions):
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def blas():
    """NumPy's BLAS, e.g. ``OpenBLAS 0.3.31, Haswell kernels``: the kernels a
    BLAS picks for the CPU set the speed of every GEMM of the NumPy path."""
    try:
        import threadpoolctl

        info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    except Exception:  # describing the BLAS must not stop the bench
        info = []
    if not info:
        return "BLAS unknown"
    name = {"openblas": "OpenBLAS", "mkl": "MKL"}.get(info[0].get("internal_api"),
                                                      info[0].get("internal_api"))
    kernels = info[0].get("architecture")
    return f"{name} {info[0].get('version')}" + (f", {kernels} kernels" if kernels else "")


def versions():
    """``label version`` for each library, or ``label not installed``; NumPy's BLAS."""
    parts = []
    for label, distributions in LIBRARIES:
        version = version_of(distributions)
        parts.append(f"{label} {version}" if version else f"{label} not installed")
        if label == "numpy":
            parts[-1] += f" with {blas()}"
    return ", ".join(parts)
