"""Bugs planted in test-only copies of the kernel source, to show that the checks bite.

Each plant replaces one piece of a family's source text and runs an op through the
host loader with the modified copy (:func:`tests.host.loader.source_launch`):

- ``write-past-the-end``: the RoI pooling forward writes ``output[index + 1]``, so
  its last thread writes one element past the end of the output;
- ``write-into-the-next-image``: the convolution's mask gradient is written one
  element further on; with one image per batch chunk, the first chunk's stray write
  lands in the next image's part of the same array, which only the guard zones
  can see (for AddressSanitizer it is inside one allocation);
- ``float-cast-overflow``: the RoI pooling forward casts 1e30 to its index type,
  undefined behaviour that leaves the results right on x86 and that only
  UndefinedBehaviorSanitizer reports.

``python -c 'from tests.host.planted import run; run("write-past-the-end")'`` runs
one; the guard-zone and sanitizer tests do.
"""

from __future__ import annotations

import numpy

from cudeform import _workspace
from cudeform._gpu.source import family_source
from tests.helpers import conv_case, split_case
from tests.host.loader import source_launch

# name: (family, original text, planted text)
PLANTS = {
    "write-past-the-end": (
        "deform_roi_pool",
        "output[index] = from_acc<T>(sum / bin.count);",
        "output[index + 1] = from_acc<T>(sum / bin.count);"),
    "write-into-the-next-image": (
        "deform_conv",
        "grad_mask[r.tap] = from_acc<T>(sum);",
        "grad_mask[r.tap + 1] = from_acc<T>(sum);"),
    "float-cast-overflow": (
        "deform_roi_pool",
        "output[index] = from_acc<T>(sum / bin.count);",
        "output[index] = from_acc<T>(sum / bin.count) + T(0) * T(static_cast<I>(A(1e30) + sum));"),
}


def planted_source(name):
    """``(family, kernel source)`` with the plant ``name`` in place of the original."""
    family, original, planted = PLANTS[name]
    source = family_source(family)
    if source.count(original) != 1:
        raise AssertionError(f"the plant {name} no longer fits {family}.cu: "
                             f"{original!r} occurs {source.count(original)} times")
    return family, source.replace(original, planted)


def _roi_pool(launch):
    from tests.test_kernels_host_roi_pool import ROI_POOL

    rng = numpy.random.default_rng(0)
    arrays = dict(input=rng.standard_normal((1, 2, 4, 4)),
                  rois=numpy.array([[0, 0.5, 0.5, 3.0, 3.5], [0, 1.0, 0.0, 2.5, 3.0]]),
                  offset=None)
    options = dict(output_size=(2, 2))
    return ROI_POOL.assert_matches_numpy(arrays, options, ROI_POOL.grad_output(
        rng, arrays, options), launch=launch)


def _conv_backward(launch):
    from tests.test_kernels_host import CONV

    rng = numpy.random.default_rng(1)
    arrays, options = split_case(conv_case(rng, batch=2, in_channels=2, out_channels=2,
                                           size=(4, 4)))
    previous = _workspace._limit
    _workspace.set_workspace_limit(1)  # one image per chunk
    try:
        return CONV.backward(CONV.grad_output(rng, arrays, options), arrays, options,
                             launch=launch)
    finally:
        _workspace._limit = previous


RUNS = {"write-past-the-end": _roi_pool, "write-into-the-next-image": _conv_backward,
        "float-cast-overflow": _roi_pool}


def run(name, launch_wrapper=None):
    """Run the op of plant ``name`` on the planted source; ``launch_wrapper`` may wrap
    the launcher (to record launches)."""
    family, source = planted_source(name)
    launch = source_launch({family: source})
    return RUNS[name](launch if launch_wrapper is None else launch_wrapper(launch))
