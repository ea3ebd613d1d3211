"""cudeform: deformable convolution and deformable RoI pooling on NumPy and CuPy arrays.

CUDA kernels are compiled at run time by CuPy; NumPy arrays run on the CPU.
"""

from cudeform._typing import Array, IntPair
from cudeform._modes import allow_tf32, is_deterministic, set_allow_tf32, set_deterministic
from cudeform._workspace import set_workspace_limit, workspace_limit
from cudeform.deform_conv import DeformConv2dGrads, deform_conv2d, deform_conv2d_backward
from cudeform.deform_psroi_pool import (
    DeformPSRoIPoolGrads, deform_psroi_pool, deform_psroi_pool_backward,
)
from cudeform.deform_roi_pool import DeformRoIPoolGrads, deform_roi_pool, deform_roi_pool_backward

__all__ = [
    "Array",
    "DeformConv2dGrads",
    "DeformPSRoIPoolGrads",
    "DeformRoIPoolGrads",
    "IntPair",
    "allow_tf32",
    "deform_conv2d",
    "deform_conv2d_backward",
    "deform_psroi_pool",
    "deform_psroi_pool_backward",
    "deform_roi_pool",
    "deform_roi_pool_backward",
    "is_deterministic",
    "set_allow_tf32",
    "set_deterministic",
    "set_workspace_limit",
    "workspace_limit",
]
__version__ = "0.2.0"
