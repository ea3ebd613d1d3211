"""The C signature of every kernel, the one table that launches are checked against.

The CUDA launch helper casts arguments with it, and the host-run test loader
builds its ``extern "C"`` wrappers and ``ctypes`` argument types from it.
"""

from __future__ import annotations

import dataclasses

import numpy

# Parameter kinds. T is the element type, A its accumulation type, I the index type.
IN = "const T*"
OUT = "T*"
ACC_OUT = "A*"
SIZE = "I"
SCALAR = "A"  # a real number, passed in the accumulation type

# C element type of each supported storage dtype name.
ELEMENT_TYPES = {
    "float32": "float",
    "float64": "double",
    "float16": "__half",
    "bfloat16": "__nv_bfloat16",
}
# Accumulation dtype name of each storage dtype name (16-bit types accumulate in float).
ACCUMULATE_DTYPES = {
    "float32": "float32",
    "float64": "float64",
    "float16": "float32",
    "bfloat16": "float32",
}
INDEX_TYPES = {32: "int", 64: "long long"}
INDEX_DTYPES = {32: numpy.int32, 64: numpy.int64}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A templated kernel ``template <typename T, typename I> __global__ name(params)``."""

    family: str
    name: str
    params: tuple  # ((name, kind), ...)
    nullable: frozenset = frozenset()  # pointer parameters that may be null

    def name_expression(self, element_type, index_type):
        return f"cudeform::{self.name}<{element_type}, {index_type}>"


CONV_SHAPE = tuple((name, SIZE) for name in (
    "batch", "channels", "height", "width", "kernel_h", "kernel_w", "pad_h", "pad_w",
    "stride_h", "stride_w", "dilation_h", "dilation_w", "out_h", "out_w", "offset_groups",
))

DEFORM_IM2COL = Kernel(
    "deform_conv", "deform_im2col",
    (("input", IN), ("offset", IN), ("mask", IN), ("columns", OUT)) + CONV_SHAPE,
    frozenset({"mask"}),
)
DEFORM_COL2IM = Kernel(
    "deform_conv", "deform_col2im",
    (("grad_columns", IN), ("offset", IN), ("mask", IN), ("grad_input", ACC_OUT)) + CONV_SHAPE,
    frozenset({"mask"}),
)
DEFORM_COL2IM_COORD = Kernel(
    "deform_conv", "deform_col2im_coord",
    (("grad_columns", IN), ("input", IN), ("offset", IN), ("mask", IN),
     ("grad_offset", OUT), ("grad_mask", OUT)) + CONV_SHAPE,
    frozenset({"mask", "grad_mask"}),
)

# --- deform_roi_pool (kernels/deform_roi_pool.cu) ---------------------------------------
ROI_POOL_SHAPE = tuple((name, SIZE) for name in (
    "batch", "channels", "height", "width", "num_rois", "pooled_h", "pooled_w", "sampling_ratio",
)) + (("spatial_scale", SCALAR), ("gamma", SCALAR))

DEFORM_ROI_POOL_FORWARD = Kernel(
    "deform_roi_pool", "deform_roi_pool_forward",
    (("input", IN), ("rois", IN), ("offset", IN), ("output", OUT)) + ROI_POOL_SHAPE,
    frozenset({"offset"}),
)
DEFORM_ROI_POOL_BACKWARD_INPUT = Kernel(
    "deform_roi_pool", "deform_roi_pool_backward_input",
    (("grad_output", IN), ("rois", IN), ("offset", IN), ("grad_input", ACC_OUT))
    + ROI_POOL_SHAPE,
    frozenset({"offset"}),
)
DEFORM_ROI_POOL_BACKWARD_OFFSET = Kernel(
    "deform_roi_pool", "deform_roi_pool_backward_offset",
    (("grad_output", IN), ("input", IN), ("rois", IN), ("offset", IN), ("grad_offset", OUT))
    + ROI_POOL_SHAPE,
)
DEFORM_ROI_POOL_KERNELS = (
    DEFORM_ROI_POOL_FORWARD, DEFORM_ROI_POOL_BACKWARD_INPUT, DEFORM_ROI_POOL_BACKWARD_OFFSET,
)

# --- deform_psroi_pool (kernels/deform_psroi_pool.cu) -----------------------------------
PSROI_SHAPE = tuple((name, SIZE) for name in (
    "batch", "channels", "height", "width", "num_rois", "output_dim", "group_size",
    "pooled_size", "part_size", "sample_per_part", "num_classes",
)) + (("spatial_scale", SCALAR), ("trans_std", SCALAR))
DEFORM_PSROI_POOL_FORWARD = Kernel(
    "deform_psroi_pool", "deform_psroi_pool_forward",
    (("input", IN), ("rois", IN), ("offset", IN), ("output", OUT)) + PSROI_SHAPE,
    frozenset({"offset"}),
)
DEFORM_PSROI_POOL_BACKWARD_INPUT = Kernel(
    "deform_psroi_pool", "deform_psroi_pool_backward_input",
    (("grad_output", IN), ("rois", IN), ("offset", IN), ("grad_input", ACC_OUT)) + PSROI_SHAPE,
    frozenset({"offset"}),
)
DEFORM_PSROI_POOL_BACKWARD_OFFSET = Kernel(
    "deform_psroi_pool", "deform_psroi_pool_backward_offset",
    (("grad_output", IN), ("input", IN), ("rois", IN), ("offset", IN), ("grad_offset", OUT))
    + PSROI_SHAPE,
)
DEFORM_PSROI_POOL_KERNELS = (
    DEFORM_PSROI_POOL_FORWARD, DEFORM_PSROI_POOL_BACKWARD_INPUT,
    DEFORM_PSROI_POOL_BACKWARD_OFFSET,
)

# Kernel families: one .cu file each, compiled after the shared headers.
FAMILIES = {
    name: kernels for name, kernels in (
        ("deform_conv", (DEFORM_IM2COL, DEFORM_COL2IM, DEFORM_COL2IM_COORD)),
        ("deform_roi_pool", DEFORM_ROI_POOL_KERNELS),
        ("deform_psroi_pool", DEFORM_PSROI_POOL_KERNELS),
    ) if kernels
}
HEADERS = ("common.cuh", "bilinear.cuh")
