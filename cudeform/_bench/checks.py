"""The agreement check run before a pair is timed, so the bench never times a
wrong result: each result of the peer must match cudeform's within a tolerance
of the dtype.

The error of an array is its largest absolute difference divided by the largest
absolute value of cudeform's array (a relative error that ignores near-zero
elements). Gradients get a looser bound in 16-bit types: peers such as
torchvision accumulate the offset gradient in the element type.
"""

from __future__ import annotations

import numpy

# dtype: (output tolerance, gradient tolerance)
TOLERANCES = {
    "float64": (1e-9, 1e-9),
    "float32": (1e-3, 1e-3),
    "float16": (1e-2, 3e-2),
    "bfloat16": (4e-2, 8e-2),
}


def to_numpy(array):
    """A float NumPy copy of a NumPy, CuPy, torch or Chainer array (16-bit as float32)."""
    if hasattr(array, "array") and not isinstance(array, numpy.ndarray):  # chainer.Variable
        array = array.array
    if hasattr(array, "detach"):  # torch.Tensor
        array = array.detach()
        if array.dtype.is_floating_point and array.element_size() < 4:
            array = array.float()
        return array.cpu().numpy()
    if hasattr(array, "get") and not isinstance(array, numpy.ndarray):  # cupy.ndarray
        array = array.get()
    array = numpy.asarray(array)
    if array.dtype.kind == "f" and array.dtype.itemsize >= 4:
        return array
    return array.astype(numpy.float32)  # float16 and ml_dtypes.bfloat16


def relative_error(expected, actual):
    """``max|actual - expected| / max|expected|``; inf when only one side is NaN or
    infinite somewhere, or when the shapes differ."""
    if expected.shape != actual.shape:
        return numpy.inf
    expected = expected.astype(numpy.float64)
    actual = actual.astype(numpy.float64)
    finite = numpy.isfinite(expected)
    if not numpy.array_equal(finite, numpy.isfinite(actual)):
        return numpy.inf
    if not finite.any():
        return 0.0
    difference = numpy.abs(actual[finite] - expected[finite]).max()
    scale = numpy.abs(expected[finite]).max()
    if scale == 0.0:
        return 0.0 if difference == 0.0 else numpy.inf
    return float(difference / scale)


def disagreements(names, expected, actual, dtype):
    """Messages for each result of ``actual`` that misses ``expected`` (cudeform's);
    an empty list when all agree. ``names[0]`` is the output, the rest gradients."""
    output_tolerance, gradient_tolerance = TOLERANCES[dtype]
    if len(expected) != len(actual) or len(names) != len(expected):
        return [f"expected {len(names)} results ({', '.join(names)}), cudeform gave "
                f"{len(expected)} and the peer {len(actual)}"]
    problems = []
    for index, (name, want, got) in enumerate(zip(names, expected, actual)):
        if want is None or got is None:
            if want is not got:
                side = "the peer's" if got is None else "cudeform's"
                problems.append(f"{name}: missing on {side} side")
            continue
        want, got = to_numpy(want), to_numpy(got)
        tolerance = output_tolerance if index == 0 else gradient_tolerance
        if want.shape != got.shape:
            problems.append(f"{name}: shape {got.shape}, cudeform's is {want.shape}")
            continue
        error = relative_error(want, got)
        if not error <= tolerance:
            problems.append(f"{name}: relative error {error:.2e} > {tolerance:.0e}")
    return problems
