"""The layer shapes the benchmark times, and their seeded inputs (the RoI pooling
cases are in ``roi_cases``).

Every case is a 3x3 deformable convolution with stride 1 and padding equal to
the dilation, so the output has the input's size. Offsets are about two pixels
(normal, standard deviation 2) and masks lie in (0, 1), as in trained networks.
"""

from __future__ import annotations

import dataclasses

import numpy

KERNEL = 3


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer: ``name`` labels it in the tables, ``about`` says where it comes from."""

    name: str
    about: str
    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    dilation: int = 1
    offset_groups: int = 1
    mask: bool = False
    seed: int = 0
    op = "deform_conv2d"

    @property
    def padding(self):
        return self.dilation

    def arrays(self):
        return inputs(self)

    def geometry(self, mask=None):
        """Shape in words, e.g.
        ``N=2, 64->64, 32x32, 3x3, pad 1, dilation 1, 1 offset group, DCNv2``."""
        mask = self.mask if mask is None else mask
        groups = f"{self.offset_groups} offset group" + ("s" if self.offset_groups > 1 else "")
        return (f"N={self.batch}, {self.in_channels}->{self.out_channels}, "
                f"{self.height}x{self.width}, {KERNEL}x{KERNEL}, pad {self.padding}, "
                f"dilation {self.dilation}, {groups}, {'DCNv2' if mask else 'DCNv1'}")

    def with_batch(self, batch, suffix):
        return dataclasses.replace(self, name=self.name + suffix, batch=batch,
                                   about=f"{self.about}, batch {batch}")


def inputs(case):
    """Seeded float32 NumPy inputs of ``case``: a dict with ``input``, ``offset``,
    ``weight`` and ``mask`` (None for DCNv1)."""
    rng = numpy.random.default_rng(case.seed)
    n, taps = case.batch, KERNEL * KERNEL
    spatial = (case.height, case.width)
    x = rng.standard_normal((n, case.in_channels, *spatial), dtype=numpy.float32)
    # He-like scale keeps outputs of order one for every channel count.
    scale = 1.0 / numpy.sqrt(case.in_channels * taps)
    weight = rng.standard_normal((case.out_channels, case.in_channels, KERNEL, KERNEL),
                                 dtype=numpy.float32) * numpy.float32(scale)
    offset = rng.standard_normal((n, 2 * case.offset_groups * taps, *spatial),
                                 dtype=numpy.float32) * numpy.float32(2.0)
    mask = None
    if case.mask:
        logits = rng.standard_normal((n, case.offset_groups * taps, *spatial),
                                     dtype=numpy.float32)
        mask = (1.0 / (1.0 + numpy.exp(-logits))).astype(numpy.float32)
    return {"input": x, "offset": offset, "weight": weight, "mask": mask}


# Small enough that the whole CPU run takes well under two minutes on two cores.
CPU_CASES = (
    Case("C1", "Chainer's sampler runs it as it is",
         batch=2, in_channels=64, out_channels=64, height=32, width=32, seed=1),
    Case("C2", "the DCNv2 case", batch=2, in_channels=64, out_channels=64, height=32,
         width=32, mask=True, seed=2),
    Case("C3", "S1 scaled down (channels / 4, size / 2)",
         batch=1, in_channels=128, out_channels=128, height=19, width=32, dilation=2,
         offset_groups=4, seed=3),
)

# Layers of ResNet-like widths at full size: where the CPU path meets the C++ engines.
CPU_LAYERS = (
    Case("C4", "64 channels at 56x56 (a ResNet stage-2 width)", batch=4, in_channels=64,
         out_channels=64, height=56, width=56, seed=4),
    Case("C5", "256 channels at 28x28", batch=2, in_channels=256, out_channels=256,
         height=28, width=28, seed=5),
    Case("C6", "512 channels at 14x14", batch=1, in_channels=512, out_channels=512,
         height=14, width=14, seed=6),
)

GPU_CASES = (
    Case("S1", "R-FCN ResNet-101 res5", batch=1,
         in_channels=512, out_channels=512, height=38, width=63, dilation=2,
         offset_groups=4, seed=11),
    Case("S2", "Mask R-CNN ResNet-50 c5, 800x1344 input", batch=2,
         in_channels=512, out_channels=512, height=25, width=42, mask=True, seed=12),
    Case("S3", "Mask R-CNN ResNet-50 c4, 800x1344 input", batch=2,
         in_channels=256, out_channels=256, height=50, width=84, mask=True, seed=13),
    Case("S4", "Mask R-CNN ResNet-50 c3, 800x1344 input", batch=2,
         in_channels=128, out_channels=128, height=100, width=168, mask=True, seed=14),
)

GPU_CASES_BATCH_16 = tuple(case.with_batch(16, "-b16") for case in GPU_CASES)


def cases_for(device, quick):
    """The cases of a run: on the CPU, the full-size layers and RoI cases only in a full
    run (a quick one has small RoI cases); on the GPU, the batch-16 layers only in a
    full run."""
    from cudeform._bench.roi_cases import QUICK_ROI_CASES, ROI_CASES

    if device == "cpu":
        return CPU_CASES + QUICK_ROI_CASES if quick else CPU_CASES + CPU_LAYERS + ROI_CASES
    return GPU_CASES if quick else GPU_CASES + GPU_CASES_BATCH_16
