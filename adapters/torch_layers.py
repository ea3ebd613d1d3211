"""The PyTorch layers, also importable from :mod:`cudeform.adapters.torch` (their home).

``DeformConv2d`` is torchvision's layer; the others follow mmcv (the RoI pooling
layers, ``DeformConv2dPack``, ``ModulatedDeformConv2d``, ``ModulatedDeformConv2dPack``)
or MXNet's R-FCN head (``DeformPSRoIPool``, ``DeformPSRoIPoolPack``). mmcv's own
``DeformConv2d`` is :class:`cudeform.adapters.torch.mmcv.DeformConv2d`.
"""

from __future__ import annotations

from cudeform.adapters.torch import (
    DeformConv2d, DeformConv2dPack, DeformPSRoIPool, DeformPSRoIPoolPack, DeformRoIPool,
    DeformRoIPoolPack, ModulatedDeformConv2d, ModulatedDeformConv2dPack,
    ModulatedDeformRoIPoolPack,
)

__all__ = [
    "DeformConv2d", "DeformConv2dPack", "DeformPSRoIPool", "DeformPSRoIPoolPack",
    "DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformConv2d",
    "ModulatedDeformConv2dPack", "ModulatedDeformRoIPoolPack",
]
