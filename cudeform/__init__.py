"""cudeform: deformable convolution and deformable RoI pooling on NumPy and CuPy arrays.

CUDA kernels are compiled at run time by CuPy; NumPy arrays run on the CPU.
"""

from cudeform._workspace import set_workspace_limit, workspace_limit
from cudeform.deform_conv import DeformConv2dGrads, deform_conv2d, deform_conv2d_backward

__all__ = [
    "DeformConv2dGrads",
    "deform_conv2d",
    "deform_conv2d_backward",
    "set_workspace_limit",
    "workspace_limit",
]
__version__ = "0.1.0"
