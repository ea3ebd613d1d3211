"""The C signature of every kernel, the one table that launches are checked against.

The CUDA launch helper casts arguments with it, and the host-run test loader
builds its ``extern "C"`` wrappers and ``ctypes`` argument types from it.
"""

from __future__ import annotations

import dataclasses

import numpy

from cudeform._gpu import fused_tiles

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
    """A templated kernel ``template <typename T, typename I, ...> __global__ name(params)``."""

    family: str
    name: str
    params: tuple  # ((name, kind), ...)
    nullable: frozenset = frozenset()  # pointer parameters that may be null
    # Most blocks a launch may use (None: launch.MAX_BLOCKS). The bound kernels take
    # fewer, so that few threads end in an atomicMax on their one word.
    max_blocks: int | None = None
    # Template arguments after T and I, and the suffix that names this instantiation.
    template_args: tuple = ()
    variant: str = ""
    # The storage dtype names it is instantiated for (None: all of ELEMENT_TYPES).
    dtypes: tuple | None = None
    # Threads a block of a tiled kernel, launched on a grid of blocks (None: a
    # grid-stride kernel, launched by its iteration count).
    threads: int | None = None

    @property
    def label(self):
        """The name of this instantiation: ``name`` and the variant, if any."""
        return f"{self.name}_{self.variant}" if self.variant else self.name

    def supports(self, dtype_name):
        return self.dtypes is None or dtype_name in self.dtypes

    def name_expression(self, element_type, index_type):
        arguments = ", ".join((element_type, index_type, *self.template_args))
        return f"cudeform::{self.name}<{arguments}>"


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

# --- the fused forward of deform_conv2d (kernels/deform_conv_fused.cu) ------------------
# One instantiation per tile configuration and multiply (cudeform/_gpu/fused_tiles.py),
# for the dtypes whose tiles fit; a block has tile.threads threads.
FUSED_SHAPE = tuple((name, SIZE) for name in (
    "batch", "channels", "height", "width", "kernel_h", "kernel_w", "pad_h", "pad_w",
    "stride_h", "stride_w", "dilation_h", "dilation_w", "out_h", "out_w", "offset_groups",
    "out_channels", "groups",
))


def _fused(tile, math):
    return Kernel(
        "deform_conv_fused", "deform_conv_fused",
        (("input", IN), ("offset", IN), ("mask", IN), ("weight", IN), ("bias", IN),
         ("output", OUT)) + FUSED_SHAPE,
        frozenset({"mask", "bias"}),
        template_args=(str(tile.block_m), str(tile.block_n), str(tile.block_k),
                       str(tile.threads), "true" if math == "tensor" else "false"),
        variant=f"{math}_{tile.name.replace('/', '_')}",
        dtypes=fused_tiles.built_dtypes(tile, math), threads=tile.threads,
    )


DEFORM_CONV_FUSED = {(tile, math): _fused(tile, math)
                     for tile in fused_tiles.TILES for math in fused_tiles.MATH_DTYPES}
# Families that include CUDA's <mma.h>: built for compute capability fused_tiles.MIN_ARCH
# and up, with CUDA's headers (crt/mma.h) in every build.
WMMA_FAMILIES = frozenset({"deform_conv_fused"})

# Kernel families: one .cu file each, compiled after the shared headers.
FAMILIES = {
    "deform_conv": DEFORM_CONV_KERNELS,
    "deform_conv_fused": tuple(DEFORM_CONV_FUSED.values()),
    "deform_roi_pool": DEFORM_ROI_POOL_KERNELS,
    "deform_psroi_pool": DEFORM_PSROI_POOL_KERNELS,
    "fixed_point": FIXED_POINT_KERNELS,
}
HEADERS = ("common.cuh", "fixed_point.cuh", "bilinear.cuh", "conv_sampling.cuh")


def family_kernels(family, element_type):
    """The kernels of ``family`` instantiated for ``element_type`` (a C type name)."""
    dtype_name = next(name for name, c_type in ELEMENT_TYPES.items() if c_type == element_type)
    return tuple(kernel for kernel in FAMILIES[family] if kernel.supports(dtype_name))
