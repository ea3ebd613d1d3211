"""PyTorch adapter: cudeform's three operators as ``torch.library`` custom ops, their
functional wrappers, and layers with torchvision's and mmcv's names.

Each op is a ``torch.library.custom_op`` in the ``cudeform`` namespace (CPU and CUDA)
with a shape-only fake kernel on :mod:`cudeform._shapes` (symbolic sizes included),
and a backward op that returns every gradient, wired with ``register_autograd``; so
``opcheck``, ``torch.compile(dynamic=True, fullgraph=True)`` and ``torch.export`` with
dynamic dims see ordinary operators. The adapter holds no math: it converts,
registers and wraps.

- ``_conv_ops.py``, ``_pool_ops.py``: the ops, their schemas, fakes and autograd.
- ``_to_core.py``: tensors to arrays and back (DLPack, no copies for float32 and
  float64); the one place that calls the core.
- ``_autocast.py``: under CPU or CUDA autocast the ops run in the autocast dtype.
- ``_onnx.py``: inside ``torch.onnx.export`` ``deform_conv2d`` records ONNX
  ``DeformConv``; the RoI poolings refuse, as ONNX has no such operator.
- ``functional.py``: :func:`deform_conv2d` (torchvision's signature),
  :func:`deform_roi_pool` and :func:`deform_psroi_pool` (the core's).
- ``layers.py``: :class:`DeformConv2d`, torchvision's layer.
- ``pool_layers.py``: the RoI pooling layers (mmcv's and the R-FCN head).
- ``mmcv.py``: mmcv's functionals and convolution layers; :class:`DeformConv2dPack`,
  :class:`ModulatedDeformConv2d` and :class:`ModulatedDeformConv2dPack` are
  re-exported here. mmcv's own ``DeformConv2d`` is ``cudeform.adapters.torch.mmcv.DeformConv2d``.

Outputs and gradients are C-contiguous whatever the inputs' memory format (a
channels_last input gives a contiguous output), on the real and the fake kernels.
float16 and bfloat16 CPU tensors compute in float32 on the NumPy path and return
their own dtype; on CUDA they accumulate in float32. The backward is first order:
differentiating a backward op raises RuntimeError. ``rois`` gets no gradient.
"""

from __future__ import annotations

from cudeform.adapters.torch import _autocast, _conv_ops, _pool_ops
from cudeform.adapters.torch.functional import deform_conv2d, deform_psroi_pool, deform_roi_pool
from cudeform.adapters.torch.layers import DeformConv2d
from cudeform.adapters.torch.mmcv import (
    DeformConv2dPack, ModulatedDeformConv2d, ModulatedDeformConv2dPack,
)
from cudeform.adapters.torch.pool_layers import (
    DeformPSRoIPool, DeformPSRoIPoolPack, DeformRoIPool, DeformRoIPoolPack,
    ModulatedDeformRoIPoolPack,
)

__all__ = [
    "DeformConv2d", "DeformConv2dPack", "DeformPSRoIPool", "DeformPSRoIPoolPack",
    "DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformConv2d",
    "ModulatedDeformConv2dPack", "ModulatedDeformRoIPoolPack", "deform_conv2d",
    "deform_psroi_pool", "deform_roi_pool",
]

_autocast.register_autocast((
    _conv_ops.deform_conv2d_op, _conv_ops.deform_conv2d_backward_op,
    _pool_ops.deform_roi_pool_op, _pool_ops.deform_roi_pool_backward_op,
    _pool_ops.deform_psroi_pool_op, _pool_ops.deform_psroi_pool_backward_op))
