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
ACC_IN = "const A*"
ACC_OUT = "A*"
UINT32_IN = "const unsigned int*"
UINT32_OUT = "unsigned int*"
UINT64_IN = "const unsigned long long*"
UINT64_OUT = "unsigned long long*"
SIZE = "I"
SCALAR = "A"  # a real number, passed in the accumulation type
# The NumPy dtype name of the pointer kinds whose element type does not depend on T.
FIXED_DTYPES = {UINT32_IN: "uint32", UINT32_OUT: "uint32", UINT64_IN: "uint64",
                UINT64_OUT: "uint64"}

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
    # Most blocks a launch may use (None: launch.MAX_BLOCKS). The bound kernels take
    # fewer, so that few threads end in an atomicMax on their one word.
    max_blocks: int | None = None

    def name_expression(self, element_type, index_type):
        return f"cudeform::{self.name}<{element_type}, {index_type}>"


# --- where scatter kernels add (kernels/fixed_point.cuh, cudeform/_gpu/scatter.py) -----
# Either grad_input (float atomicAdd), or grad_fixed, grad_flags and bound (64-bit
# fixed point, integer atomics) with scale_shift = 62 - ceil(log2(contribution bound)).
SCATTER = (("grad_input", ACC_OUT), ("grad_fixed", UINT64_OUT), ("grad_flags", UINT32_OUT),
           ("bound", UINT32_IN), ("scale_shift", SIZE))
SCATTER_NULLABLE = frozenset({"grad_input", "grad_fixed", "grad_flags", "bound"})
# The images first_image .. first_image + images - 1 that a RoI pool's input-gradient
# scatter covers (the scatter's buffers hold those images only, under the workspace limit).
IMAGE_RANGE = (("first_image", SIZE), ("images", SIZE))
BOUND_BLOCKS = 1024

# --- deform_conv2d (kernels/deform_conv.cu) ---------------------------------------------
CONV_SHAPE = tuple((name, SIZE) for name in (
    "batch", "channels", "height", "width", "kernel_h", "kernel_w", "pad_h", "pad_w",
    "stride_h", "stride_w", "dilation_h", "dilation_w", "out_h", "out_w", "offset_groups",
    "slice_channels",
))

DEFORM_IM2COL = Kernel(
    "deform_conv", "deform_im2col",
    (("input", IN), ("offset", IN), ("mask", IN), ("columns", OUT)) + CONV_SHAPE,
    frozenset({"mask"}),
)
DEFORM_COL2IM = Kernel(
    "deform_conv", "deform_col2im",
    (("grad_columns", IN), ("offset", IN), ("mask", IN)) + SCATTER + CONV_SHAPE,
    frozenset({"mask"}) | SCATTER_NULLABLE,
)
DEFORM_COL2IM_BOUND = Kernel(
    "deform_conv", "deform_col2im_bound",
    (("grad_columns", IN), ("mask", IN), ("bound", UINT32_OUT)) + CONV_SHAPE,
    frozenset({"mask"}), max_blocks=BOUND_BLOCKS,
)
DEFORM_COL2IM_COORD = Kernel(
    "deform_conv", "deform_col2im_coord",
    (("grad_columns", IN), ("input", IN), ("offset", IN), ("mask", IN),
     ("partials", ACC_OUT)) + CONV_SHAPE,
    frozenset({"mask"}),
)
DEFORM_COL2IM_COORD_REDUCE = Kernel(
    "deform_conv", "deform_col2im_coord_reduce",
    (("partials", ACC_IN), ("mask", IN), ("grad_offset", OUT), ("grad_mask", OUT))
    + CONV_SHAPE,
    frozenset({"mask", "grad_mask"}),
)
DEFORM_CONV_KERNELS = (DEFORM_IM2COL, DEFORM_COL2IM, DEFORM_COL2IM_BOUND, DEFORM_COL2IM_COORD,
                       DEFORM_COL2IM_COORD_REDUCE)

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
    (("grad_output", IN), ("rois", IN), ("offset", IN)) + SCATTER + IMAGE_RANGE
    + ROI_POOL_SHAPE,
    frozenset({"offset"}) | SCATTER_NULLABLE,
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
    (("grad_output", IN), ("rois", IN), ("offset", IN)) + SCATTER + IMAGE_RANGE
    + PSROI_SHAPE,
    frozenset({"offset"}) | SCATTER_NULLABLE,
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

# --- shared by the deterministic scatters (kernels/fixed_point.cu) ----------------------
MAX_ABS_EXPONENT = Kernel(
    "fixed_point", "max_abs_exponent",
    (("values", IN), ("bound", UINT32_OUT), ("size", SIZE)), max_blocks=BOUND_BLOCKS,
)
FIXED_POINT_TO_FLOAT = Kernel(
    "fixed_point", "fixed_point_to_float",
    (("fixed", UINT64_IN), ("flags", UINT32_IN), ("bound", UINT32_IN), ("output", OUT),
     ("size", SIZE), ("scale_shift", SIZE)),
)
FIXED_POINT_KERNELS = (MAX_ABS_EXPONENT, FIXED_POINT_TO_FLOAT)

# Kernel families: one .cu file each, compiled after the shared headers.
FAMILIES = {
    "deform_conv": DEFORM_CONV_KERNELS,
    "deform_roi_pool": DEFORM_ROI_POOL_KERNELS,
    "deform_psroi_pool": DEFORM_PSROI_POOL_KERNELS,
    "fixed_point": FIXED_POINT_KERNELS,
}
HEADERS = ("common.cuh", "fixed_point.cuh", "bilinear.cuh")
