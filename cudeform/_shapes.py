"""Shape validation and output-size arithmetic, shared by every backend (the options'
own rules are in :mod:`cudeform._options`).

The NumPy path, the CUDA path and the framework adapters (including shape-only
"fake" implementations) all call into this module, so each rule of
``OPS_SPEC.md`` is written exactly once.

Sizes are taken as they come and never passed through ``int()``: the PyTorch
adapter's fake kernels hand in symbolic sizes (``torch.SymInt``), which must stay
symbolic for ``torch.export`` and ``torch.compile(dynamic=True)``; a comparison of
two of them becomes a guard, not a constant.
"""

from __future__ import annotations

import dataclasses

from cudeform._options import (
    conv_options, integer, psroi_pool_options, roi_pool_options,
)


def conv_output_size(size, kernel, stride, padding, dilation):
    """Output length of a convolution along one axis (the only copy of this formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def require_ndim(shape, ndim, name):
    """ValueError naming ``name`` unless ``shape`` has ``ndim`` dimensions."""
    if len(shape) != ndim:
        raise ValueError(
            f"{name} is not valid: expected a {ndim}-D array, got shape {tuple(shape)}"
        )


def _require_shape(shape, expected, name):
    if tuple(shape) != tuple(expected):
        raise ValueError(
            f"{name}.shape is not valid: expected {tuple(expected)}, got {tuple(shape)}"
        )


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Every size a deformable convolution needs, validated."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    groups: int
    offset_groups: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    out_h: int
    out_w: int

    @property
    def taps(self):
        """Number of kernel taps, ``kh * kw``."""
        return self.kernel_h * self.kernel_w

    @property
    def output_shape(self):
        return (self.batch, self.out_channels, self.out_h, self.out_w)

    @property
    def offset_shape(self):
        return (self.batch, 2 * self.offset_groups * self.taps, self.out_h, self.out_w)

    @property
    def mask_shape(self):
        return (self.batch, self.offset_groups * self.taps, self.out_h, self.out_w)


def _conv_layout(input_shape, weight_shape, options):
    """The checks of a convolution's input and weight: ``(groups, out_h, out_w)``."""
    require_ndim(input_shape, 4, "input")
    require_ndim(weight_shape, 4, "weight")
    in_channels, height, width = input_shape[1:]
    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    if out_channels < 1 or group_channels < 1 or kernel_h < 1 or kernel_w < 1:
        raise ValueError(
            f"weight.shape is not valid: expected positive sizes, got {tuple(weight_shape)}"
        )
    if in_channels < 1:
        raise ValueError(f"input.shape[1] is not valid: expected a positive number of "
                         f"channels, got {in_channels}")
    if in_channels % group_channels:
        raise ValueError(
            f"weight.shape[1] is not valid: expected a divisor of input.shape[1]="
            f"{in_channels}, got {group_channels}"
        )
    groups = in_channels // group_channels
    if out_channels % groups:
        raise ValueError(
            f"weight.shape[0] is not valid: expected a multiple of groups={groups} "
            f"(input.shape[1] // weight.shape[1]), got {out_channels}"
        )
    (stride_h, stride_w), (pad_h, pad_w) = options["stride"], options["padding"]
    dil_h, dil_w = options["dilation"]
    out_h = conv_output_size(height, kernel_h, stride_h, pad_h, dil_h)
    out_w = conv_output_size(width, kernel_w, stride_w, pad_w, dil_w)
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"input.shape is not valid: with kernel ({kernel_h}, {kernel_w}), stride "
            f"({stride_h}, {stride_w}), padding ({pad_h}, {pad_w}) and dilation "
            f"({dil_h}, {dil_w}) the output would be {out_h}x{out_w}; got input shape "
            f"{tuple(input_shape)}"
        )
    return groups, out_h, out_w


def check_conv_input(input_shape, weight_shape, *, stride=1, padding=0, dilation=1):
    """The checks ``deform_conv2d`` makes of its input, weight and options, for a layer
    that computes the offset from the input before it calls the op.

    Raises:
        TypeError, ValueError: as :func:`deform_conv2d_geometry`.
    """
    _conv_layout(input_shape, weight_shape, conv_options(stride, padding, dilation))


def deform_conv2d_geometry(input_shape, offset_shape, weight_shape, bias_shape=None,
                           mask_shape=None, *, stride=1, padding=0, dilation=1):
    """Validate the shapes of a ``deform_conv2d`` call and return its geometry.

    Raises:
        TypeError: an option of the wrong kind (see :func:`pair`).
        ValueError: naming the argument, what was expected and what was given.
    """
    options = conv_options(stride, padding, dilation)
    groups, out_h, out_w = _conv_layout(input_shape, weight_shape, options)
    require_ndim(offset_shape, 4, "offset")
    batch, in_channels, height, width = input_shape
    out_channels, _, kernel_h, kernel_w = weight_shape

    taps = kernel_h * kernel_w
    offset_channels = offset_shape[1]
    if offset_channels < 2 * taps or offset_channels % (2 * taps):
        raise ValueError(
            f"offset.shape[1] is not valid: expected a positive multiple of "
            f"2*kh*kw={2 * taps}, got {offset_channels}"
        )
    offset_groups = offset_channels // (2 * taps)
    if in_channels % offset_groups:
        raise ValueError(
            f"offset.shape[1] is not valid: its {offset_groups} offset groups must divide "
            f"input.shape[1]={in_channels}, got {offset_channels} channels"
        )

    geometry = ConvGeometry(
        batch, in_channels, height, width, out_channels, groups, offset_groups,
        kernel_h, kernel_w, *options["stride"], *options["padding"], *options["dilation"],
        out_h, out_w,
    )
    _require_shape(offset_shape, geometry.offset_shape, "offset")
    if mask_shape is not None:
        _require_shape(mask_shape, geometry.mask_shape, "mask")
    if bias_shape is not None:
        _require_shape(bias_shape, (out_channels,), "bias")
    return geometry


def check_declared_groups(input_shape, offset_shape, weight_shape, *, groups,
                          deform_groups):
    """For APIs that take the group counts as arguments (mmcv's): they must be the
    counts ``deform_conv2d`` infers from the shapes. Shapes the op rejects by itself
    (not 4-D, channels that do not divide) are left to its own checks.

    Raises:
        TypeError: ``groups`` or ``deform_groups`` is not an int.
        ValueError: naming it, with the count the shapes give.
    """
    groups = integer(groups, "groups", minimum=1)
    deform_groups = integer(deform_groups, "deform_groups", minimum=1)
    if len(input_shape) != 4 or len(offset_shape) != 4 or len(weight_shape) != 4:
        return
    declared = (("groups", groups, "input.shape[1] // weight.shape[1]", input_shape[1],
                 weight_shape[1]),
                ("deform_groups", deform_groups, "offset.shape[1] // (2*kh*kw)",
                 offset_shape[1], 2 * weight_shape[2] * weight_shape[3]))
    for name, value, formula, channels, per_group in declared:
        if per_group >= 1 and channels % per_group == 0 and value * per_group != channels:
            raise ValueError(f"{name} is not valid: expected {formula} = {channels} // "
                             f"{per_group} = {channels // per_group}, got {value}")


def check_grad_output(grad_output_shape, expected_shape):
    """Validate ``grad_output`` against the shape the forward produced."""
    require_ndim(grad_output_shape, len(expected_shape), "grad_output")
    _require_shape(grad_output_shape, expected_shape, "grad_output")


def _check_input_and_rois(input_shape, rois_shape):
    require_ndim(input_shape, 4, "input")
    if input_shape[1] < 1 or input_shape[2] < 1 or input_shape[3] < 1:
        raise ValueError(f"input.shape is not valid: expected positive channels, height and "
                         f"width, got {tuple(input_shape)}")
    require_ndim(rois_shape, 2, "rois")
    if rois_shape[1] != 5:
        raise ValueError(f"rois.shape is not valid: expected (R, 5) rows of (batch_index, x1, "
                         f"y1, x2, y2), got {tuple(rois_shape)}")


@dataclasses.dataclass(frozen=True)
class RoIPoolGeometry:
    """Every size and parameter of a ``deform_roi_pool`` call, validated."""

    batch: int
    channels: int
    height: int
    width: int
    rois: int
    pooled_h: int
    pooled_w: int
    spatial_scale: float
    sampling_ratio: int
    gamma: float

    @property
    def output_shape(self):
        return (self.rois, self.channels, self.pooled_h, self.pooled_w)

    @property
    def offset_shape(self):
        return (self.rois, 2, self.pooled_h, self.pooled_w)


def deform_roi_pool_geometry(input_shape, rois_shape, offset_shape=None, *, output_size,
                             spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    """Validate a ``deform_roi_pool`` call (OPS_SPEC section 2) and return its geometry."""
    _check_input_and_rois(input_shape, rois_shape)
    options = roi_pool_options(output_size, spatial_scale, sampling_ratio, gamma)
    geometry = RoIPoolGeometry(*input_shape, rois_shape[0], *options["output_size"],
                               options["spatial_scale"], options["sampling_ratio"],
                               options["gamma"])
    if offset_shape is not None:
        _require_shape(offset_shape, geometry.offset_shape, "offset")
    return geometry


@dataclasses.dataclass(frozen=True)
class PSRoIPoolGeometry:
    """Every size and parameter of a ``deform_psroi_pool`` call, validated."""

    batch: int
    channels: int
    height: int
    width: int
    rois: int
    output_dim: int
    group_size: int
    pooled_size: int
    part_size: int
    sample_per_part: int
    spatial_scale: float
    trans_std: float
    num_classes: int

    @property
    def channels_each_class(self):
        return self.output_dim // self.num_classes

    @property
    def output_shape(self):
        return (self.rois, self.output_dim, self.pooled_size, self.pooled_size)

    @property
    def offset_shape(self):
        return (self.rois, 2 * self.num_classes, self.part_size, self.part_size)


def deform_psroi_pool_geometry(input_shape, rois_shape, offset_shape=None, *, output_dim,
                               group_size, pooled_size, part_size=None, sample_per_part=4,
                               spatial_scale=1.0, trans_std=0.1):
    """Validate a ``deform_psroi_pool`` call (OPS_SPEC section 3) and return its geometry."""
    _check_input_and_rois(input_shape, rois_shape)
    options = psroi_pool_options(output_dim, group_size, pooled_size, part_size,
                                 sample_per_part, spatial_scale, trans_std)
    output_dim, group_size = options["output_dim"], options["group_size"]
    pooled_size = options["pooled_size"]
    part_size = pooled_size if options["part_size"] is None else options["part_size"]
    channels = input_shape[1]
    if channels != output_dim * group_size * group_size:
        raise ValueError(
            f"input.shape[1] is not valid: expected output_dim*group_size**2="
            f"{output_dim * group_size * group_size}, got {channels}")
    num_classes = 1
    if offset_shape is not None:
        require_ndim(offset_shape, 4, "offset")
        offset_channels = offset_shape[1]
        if offset_channels < 2 or offset_channels % 2:
            raise ValueError(f"offset.shape[1] is not valid: expected a positive even number "
                             f"2*num_classes, got {offset_channels}")
        num_classes = offset_channels // 2
        if output_dim % num_classes:
            raise ValueError(f"offset.shape[1] is not valid: num_classes={num_classes} must "
                             f"divide output_dim={output_dim}, got {offset_channels} channels")
    geometry = PSRoIPoolGeometry(
        *input_shape, rois_shape[0], output_dim, group_size, pooled_size, part_size,
        options["sample_per_part"], options["spatial_scale"], options["trans_std"], num_classes)
    if offset_shape is not None:
        _require_shape(offset_shape, geometry.offset_shape, "offset")
    return geometry
