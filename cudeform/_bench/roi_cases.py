"""The RoI pooling cases the CPU bench times, and their seeded inputs.

RoIs are boxes of 32 to 320 pixels of the input image, centred anywhere on it,
with normalised offsets of about 0.1, as a detector's head sees them.
"""

from __future__ import annotations

import dataclasses

import numpy


@dataclasses.dataclass(frozen=True)
class RoICase:
    """One RoI pooling call: ``op`` is ``deform_roi_pool`` or ``deform_psroi_pool``;
    ``channels`` is the output's channel count (C, or output_dim)."""

    name: str
    about: str
    op: str
    rois: int
    channels: int
    batch: int
    height: int
    width: int
    spatial_scale: float
    pooled: int = 7
    seed: int = 0

    @property
    def group_size(self):
        return self.pooled

    @property
    def input_channels(self):
        if self.op == "deform_psroi_pool":
            return self.channels * self.group_size ** 2
        return self.channels

    def geometry(self):
        """Shape in words, e.g. ``R=512, C=256, 7x7 bins, input 2x256x50x84, scale 1/16``."""
        channel = "C" if self.op == "deform_roi_pool" else "output_dim"
        return (f"{self.op}, R={self.rois}, {channel}={self.channels}, "
                f"{self.pooled}x{self.pooled} bins, input {self.batch}x{self.input_channels}x"
                f"{self.height}x{self.width}, scale 1/{round(1 / self.spatial_scale)}")

    def options(self):
        """The op's keyword arguments."""
        if self.op == "deform_roi_pool":
            return dict(output_size=self.pooled, spatial_scale=self.spatial_scale,
                        sampling_ratio=2, gamma=0.1)
        return dict(output_dim=self.channels, group_size=self.group_size,
                    pooled_size=self.pooled, sample_per_part=2,
                    spatial_scale=self.spatial_scale, trans_std=0.1)

    def arrays(self):
        """Seeded float32 inputs: a dict with ``input``, ``rois`` and ``offset``."""
        rng = numpy.random.default_rng(self.seed)
        x = rng.standard_normal((self.batch, self.input_channels, self.height, self.width),
                                dtype=numpy.float32)
        image_size = numpy.array([self.width, self.height]) / self.spatial_scale
        size = rng.uniform(32, 320, (self.rois, 2))
        centre = rng.uniform(0, image_size, (self.rois, 2))
        rois = numpy.concatenate([rng.integers(0, self.batch, (self.rois, 1)),
                                  centre - size / 2, centre + size / 2], axis=1)
        offset = rng.standard_normal((self.rois, 2, self.pooled, self.pooled)) * 0.1
        return {"input": x, "rois": rois.astype(numpy.float32),
                "offset": offset.astype(numpy.float32)}


ROI_CASES = (
    RoICase("R1", "Mask R-CNN's c4 at 800x1344 with 512 proposals", "deform_roi_pool",
            rois=512, channels=256, batch=2, height=50, width=84, spatial_scale=1 / 16,
            seed=21),
    RoICase("R2", "R-FCN's position-sensitive head on c5, 512 proposals, 256 outputs",
            "deform_psroi_pool", rois=512, channels=256, batch=1, height=25, width=42,
            spatial_scale=1 / 32, seed=22),
)

QUICK_ROI_CASES = (
    RoICase("R1q", "R1 scaled down", "deform_roi_pool", rois=64, channels=64, batch=1,
            height=25, width=42, spatial_scale=1 / 32, seed=23),
    RoICase("R2q", "R2 scaled down", "deform_psroi_pool", rois=64, channels=16, batch=1,
            height=25, width=42, spatial_scale=1 / 32, seed=24),
)
