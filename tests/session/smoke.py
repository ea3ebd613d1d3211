"""The smoke stage of the GPU session: every kernel module compiled, with its NVRTC time,
then each op's forward and backward on one small case in float32, float16 and bfloat16
against the NumPy path (float64, on the same rounded inputs), with the largest errors.

``python -m tests.session.smoke`` prints one line per module and per (op, dtype), then a
line ``summary: ...``; exit status 1 when a module fails to compile or a result misses
its dtype's tolerance (the bench's agreement tolerances). bfloat16 travels as 16-bit
integer views, as the torch adapter hands it over, so ml_dtypes is not needed.
"""

from __future__ import annotations

import contextlib
import sys
import time

import numpy

import cudeform
from cudeform import _arrays
from cudeform._bench.checks import TOLERANCES, relative_error
from cudeform._gpu.signatures import ELEMENT_TYPES, FAMILIES, INDEX_TYPES, WMMA_FAMILIES
from cudeform._gpu.storage import narrow, values

DTYPES = ("float32", "float16", "bfloat16")


def all_modules():
    """``(family, element type, index type)`` of every module the GPU path can build, but
    the fused forward's (WMMA_FAMILIES): its tiles take the longest to compile, and its
    GPU tests and the bench compile it."""
    return [(family, element, index) for family in FAMILIES if family not in WMMA_FAMILIES
            for element in ELEMENT_TYPES.values() for index in INDEX_TYPES.values()]


def compile_modules(build, modules=None, clock=time.perf_counter):
    """``[(module, seconds, error or None)]`` of ``build(*module)`` for every module."""
    results = []
    for module in modules or all_modules():
        start = clock()
        try:
            build(*module)
            error = None
        except Exception as caught:  # a compile error names the module and goes on
            error = f"{type(caught).__name__}: {str(caught).strip().splitlines()[0:1]}"
        results.append((module, clock() - start, error))
    return results


def cupy_build(family, element_type, index_type):
    """Compile (NVRTC) and load one module on the current GPU, as a launch would."""
    from cudeform._gpu.compile import _module

    _module(family, element_type, index_type).compile()


# --- ops ----------------------------------------------------------------------------------


def _cases():
    from tests.helpers import conv_case, split_case
    from tests.psroi_cases import psroi_case
    from tests.roi_pool_cases import roi_pool_case

    rng = numpy.random.default_rng(1600)
    return {
        "deform_conv2d": (cudeform.deform_conv2d, cudeform.deform_conv2d_backward,
                          split_case(conv_case(rng, dtype=numpy.float64, groups=2,
                                               out_channels=4, offset_groups=2))),
        "deform_roi_pool": (cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward,
                            roi_pool_case(rng, dtype=numpy.float64)),
        "deform_psroi_pool": (cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward,
                              psroi_case(rng, dtype=numpy.float64)),
    }


class NumpyDevice:
    """The NumPy path in float32 (host tests of this module)."""

    dtypes = ("float32",)

    def to_device(self, array, dtype_name):
        return array.astype(dtype_name)

    def to_host(self, array, dtype_name):
        return array.astype(numpy.float64)

    def context(self, dtype_name):
        return contextlib.nullcontext()


class CupyDevice:
    """CuPy arrays on the current GPU; bfloat16 as int16 views of its bits."""

    dtypes = DTYPES

    def __init__(self):
        import cupy

        self.cupy = cupy

    def to_device(self, array, dtype_name):
        if dtype_name == "bfloat16":
            bits = narrow(array.astype(numpy.float32), numpy.dtype(numpy.int16), dtype_name,
                          numpy)
            return self.cupy.asarray(bits)
        return self.cupy.asarray(array.astype(dtype_name))

    def to_host(self, array, dtype_name):
        return values(self.cupy.asnumpy(array), dtype_name, numpy).astype(numpy.float64)

    def context(self, dtype_name):
        return _arrays.bfloat16_views() if dtype_name == "bfloat16" else contextlib.nullcontext()


def _rounded(array, dtype_name):
    """``array``'s values after rounding to ``dtype_name``, in float64."""
    if array is None:
        return None
    if dtype_name == "bfloat16":
        bits = narrow(array.astype(numpy.float32), numpy.dtype(numpy.int16), dtype_name, numpy)
        return values(bits, dtype_name, numpy).astype(numpy.float64)
    return array.astype(dtype_name).astype(numpy.float64)


def check_op(forward, backward, case, dtype_name, device):
    """``[(result name, relative error, tolerance)]`` of one op on ``device`` against the
    NumPy path in float64 on the same rounded inputs."""
    arrays, options = case
    exact = {k: _rounded(v, dtype_name) for k, v in arrays.items()}
    output = forward(**exact, **options)
    grad_output = _rounded(numpy.random.default_rng(7).standard_normal(output.shape),
                           dtype_name)
    grads = backward(grad_output, **exact, **options)
    expected = {"output": output, **grads._asdict()}

    on_device = {k: None if v is None else device.to_device(v, dtype_name)
                 for k, v in exact.items()}
    with device.context(dtype_name):
        actual_output = forward(**on_device, **options)
        actual_grads = backward(device.to_device(grad_output, dtype_name), **on_device,
                                **options)
    actual = {"output": actual_output, **actual_grads._asdict()}
    output_tolerance, grad_tolerance = TOLERANCES[dtype_name]
    rows = []
    for name, want in expected.items():
        got = actual[name]
        if want is None or got is None:
            rows.append((name, 0.0 if want is got else numpy.inf, 0.0))
            continue
        error = relative_error(want, device.to_host(got, dtype_name))
        rows.append((name, error, output_tolerance if name == "output" else grad_tolerance))
    return rows


def check_ops(device):
    """``[(op, dtype, rows or error text)]`` for every op and dtype of ``device``."""
    results = []
    for op, (forward, backward, case) in _cases().items():
        for dtype_name in device.dtypes:
            try:
                rows = check_op(forward, backward, case, dtype_name, device)
            except Exception as error:
                rows = f"{type(error).__name__}: {str(error).strip()[:300]}"
            results.append((op, dtype_name, rows))
    return results


def report(compiled, checked, out=print):
    """Print the lines and the summary; return the exit status."""
    failed = 0
    for module, seconds, error in compiled:
        out(f"compile {' '.join(module)}: {seconds:.2f} s" + (f"  FAILED {error}" if error else ""))
        failed += error is not None
    worst = {}
    for op, dtype_name, rows in checked:
        if isinstance(rows, str):
            out(f"{op} {dtype_name}: FAILED {rows}")
            failed += 1
            continue
        misses = [name for name, error, tolerance in rows if not error <= tolerance]
        failed += bool(misses)
        largest = max(error for _, error, _ in rows)
        worst[f"{op} {dtype_name}"] = largest
        out(f"{op} {dtype_name}: " + ", ".join(f"{n} {e:.1e}" for n, e, _ in rows)
            + (f"  MISSES its tolerance: {', '.join(misses)}" if misses else "  ok"))
    total = sum(seconds for _, seconds, _ in compiled)
    slowest = max((seconds for _, seconds, _ in compiled), default=0.0)
    largest = ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    out(f"summary: {len(compiled)} modules compiled in {total:.1f} s (slowest {slowest:.1f} s);"
        f" largest relative errors: {largest}; {failed} failure(s)")
    return 1 if failed else 0


def main():
    import cupy

    device = cupy.cuda.Device()
    print(f"GPU {device.id}: {cupy.cuda.runtime.getDeviceProperties(device.id)['name']}")
    compiled = compile_modules(cupy_build)
    return report(compiled, check_ops(CupyDevice()))


if __name__ == "__main__":
    sys.exit(main())
