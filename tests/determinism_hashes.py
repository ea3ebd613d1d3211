"""SHA-256 of every gradient of the three ops in deterministic mode on the GPU, as JSON.

``python -m tests.determinism_hashes OUT.json`` (needs a CUDA device). The GPU session
runs it twice, in two processes, and compares the files: bit-identical gradients must
give identical hashes. The cases are the layers of a real network, scaled so that many
contributions land on the same input elements; float32, float16 and bfloat16 (when CuPy
takes ml_dtypes arrays).
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy

import cudeform
from tests.helpers import conv_case, split_case
from tests.psroi_cases import psroi_case
from tests.roi_pool_cases import roi_pool_case


def _cases(rng):
    conv_arrays, conv_options = split_case(conv_case(
        rng, batch=2, in_channels=256, out_channels=256, offset_groups=4, size=(25, 42),
        offset_scale=6.0))
    roi_arrays, roi_options = roi_pool_case(rng, batch=2, channels=64, size=(25, 42),
                                            rois=512, output_size=(7, 7))
    psroi_arrays, psroi_options = psroi_case(rng, batch=2, output_dim=21, num_classes=3,
                                             group_size=3, pooled_size=3, rois=512,
                                             size=(25, 42))
    return {
        "deform_conv2d": (cudeform.deform_conv2d, cudeform.deform_conv2d_backward,
                          conv_arrays, conv_options),
        "deform_roi_pool": (cudeform.deform_roi_pool, cudeform.deform_roi_pool_backward,
                            roi_arrays, roi_options),
        "deform_psroi_pool": (cudeform.deform_psroi_pool, cudeform.deform_psroi_pool_backward,
                              psroi_arrays, psroi_options),
    }


def _dtypes(cupy):
    dtypes = {"float32": numpy.float32, "float16": numpy.float16}
    try:
        import ml_dtypes

        cupy.asarray(numpy.zeros(2, ml_dtypes.bfloat16))
        dtypes["bfloat16"] = ml_dtypes.bfloat16
    except Exception as error:  # no ml_dtypes, or a CuPy that refuses it
        print(f"bfloat16 left out: {type(error).__name__}: {error}", file=sys.stderr)
    return dtypes


def hashes():
    """``{"op dtype result": sha256}`` of one deterministic forward and backward."""
    import cupy

    cudeform.set_deterministic(True)
    digests = {}
    for op, (forward, backward, arrays, options) in _cases(numpy.random.default_rng(0)).items():
        for dtype_name, dtype in _dtypes(cupy).items():
            device = {k: None if v is None else cupy.asarray(v.astype(dtype))
                      for k, v in arrays.items()}
            output = forward(**device, **options)
            rng = numpy.random.default_rng(1)
            grad_output = cupy.asarray(rng.standard_normal(output.shape).astype(dtype))
            grads = backward(grad_output, **device, **options)
            for field, result in zip(("output", *grads._fields), (output, *grads)):
                if result is not None:
                    data = cupy.asnumpy(result).tobytes()
                    digests[f"{op} {dtype_name} {field}"] = hashlib.sha256(data).hexdigest()
    return digests


if __name__ == "__main__":
    with open(sys.argv[1], "w") as file:
        json.dump(hashes(), file, indent=1, sort_keys=True)
