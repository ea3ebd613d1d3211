"""The public functions call the NumPy path or the CUDA host logic by name, and NumPy
users never import CuPy."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy

import cudeform
from cudeform._cpu import deform_conv as cpu_deform_conv


def test_numpy_calls_never_import_cupy():
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import cudeform

        x = np.ones((1, 4, 6, 6), np.float32)
        y = cudeform.deform_conv2d(x, np.zeros((1, 18, 4, 4), np.float32),
                                   np.ones((2, 4, 3, 3), np.float32))
        cudeform.deform_conv2d_backward(np.ones_like(y), x, np.zeros((1, 18, 4, 4), np.float32),
                                        np.ones((2, 4, 3, 3), np.float32))
        rois = np.array([[0, 0, 0, 4, 4]], np.float32)
        cudeform.deform_roi_pool_backward(np.ones((1, 4, 2, 2), np.float32), x, rois,
                                          output_size=2)
        cudeform.deform_psroi_pool_backward(np.ones((1, 1, 2, 2), np.float32), x, rois,
                                            output_dim=1, group_size=2, pooled_size=2)
        print("cupy" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_numpy_arrays_reach_the_numpy_path(monkeypatch):
    calls = []

    def forward(*args):
        calls.append(args)
        return "from the NumPy path"

    monkeypatch.setattr(cpu_deform_conv, "forward", forward)
    x = numpy.ones((1, 1, 3, 3))
    result = cudeform.deform_conv2d(x, numpy.zeros((1, 2, 3, 3)), numpy.ones((1, 1, 1, 1)))
    assert result == "from the NumPy path"
    (input, offset, weight, bias, mask, g), = calls
    assert input is x and bias is None and mask is None and g.output_shape == (1, 1, 3, 3)
