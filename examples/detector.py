"""A small two-stage detector head on synthetic images, with cudeform's mmcv layers.

The backbone is a plain strided convolution followed by two DCNv2 layers
(``ModulatedDeformConv2dPack``); the head pools each RoI with ``DeformRoIPoolPack``
(deformable RoI pooling whose offsets come from a first, offset-free pooling) and
classifies it: background, a filled square or a hollow square. The script

1. trains it for a few steps on freshly drawn images and checks that the loss falls;
2. compiles it with ``torch.compile`` and checks the compiled model against eager;
3. exports it with ``torch.export`` with a dynamic batch (and RoI count) and checks the
   exported program at another batch size against eager;
4. exports the backbone to ONNX (``DeformConv``, opset 19) with a dynamic batch, runs
   it in onnxruntime and checks it against eager. The RoI pooling stays in PyTorch:
   ONNX has no deformable RoI pooling operator.

Run it with ``python examples/detector.py``. It needs torch; step 4 needs onnxruntime
and onnxscript and is skipped without them. It runs on the CPU in well under a minute.
"""

from __future__ import annotations

import importlib.util
import pathlib
import tempfile

import torch
from torch import nn
from torch.export import Dim

from cudeform.adapters.torch.mmcv import DeformRoIPoolPack, ModulatedDeformConv2dPack

IMAGE_SIZE = 32
STRIDE = 4  # of the backbone's feature map
CHANNELS = 16
CLASSES = 3  # background, filled square, hollow square
ROIS_PER_IMAGE = 4  # two around the object, two on the background


class Backbone(nn.Module):
    """(N, 1, 32, 32) images to (N, CHANNELS, 8, 8) features."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, CHANNELS, 3, stride=2, padding=1)
        self.dcn1 = ModulatedDeformConv2dPack(CHANNELS, CHANNELS, 3, padding=1)
        self.dcn2 = ModulatedDeformConv2dPack(CHANNELS, CHANNELS, 3, stride=2, padding=1)

    def forward(self, images):
        x = torch.relu(self.stem(images))
        x = torch.relu(self.dcn1(x))
        return torch.relu(self.dcn2(x))


class Detector(nn.Module):
    """Class logits ``(R, CLASSES)`` of the RoIs ``(R, 5)`` (rows ``(batch_index, x1,
    y1, x2, y2)`` in image pixels) of a batch of images."""

    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.roi_pool = DeformRoIPoolPack(output_size=4, output_channels=CHANNELS,
                                          deform_fc_channels=64, spatial_scale=1 / STRIDE,
                                          sampling_ratio=2)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(CHANNELS * 4 * 4, 64),
                                        nn.ReLU(), nn.Linear(64, CLASSES))

    def forward(self, images, rois):
        return self.classifier(self.roi_pool(self.backbone(images), rois))


def draw_batch(count, generator):
    """``count`` noisy images, each with one square (filled or hollow) in its left half,
    their RoIs and the RoIs' labels."""
    images = 0.1 * torch.randn(count, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    rois, labels = [], []
    for index in range(count):
        size = int(torch.randint(8, 13, (), generator=generator))
        x1 = int(torch.randint(1, IMAGE_SIZE // 2 - size, (), generator=generator))
        y1 = int(torch.randint(1, IMAGE_SIZE - size - 1, (), generator=generator))
        label = int(torch.randint(1, CLASSES, (), generator=generator))
        images[index, 0, y1:y1 + size, x1:x1 + size] += 1.0
        if label == 2:  # hollow: clear the inside again
            images[index, 0, y1 + 2:y1 + size - 2, x1 + 2:x1 + size - 2] -= 1.0
        for _ in range(2):  # proposals around the object, a pixel or two off
            jitter = torch.randint(-2, 3, (4,), generator=generator).tolist()
            rois.append([index, x1 + jitter[0], y1 + jitter[1],
                         x1 + size + jitter[2], y1 + size + jitter[3]])
            labels.append(label)
        for _ in range(ROIS_PER_IMAGE - 2):  # proposals on the empty right half
            bx = int(torch.randint(IMAGE_SIZE // 2 + 1, IMAGE_SIZE - 9, (), generator=generator))
            by = int(torch.randint(0, IMAGE_SIZE - 9, (), generator=generator))
            rois.append([index, bx, by, bx + 8, by + 8])
            labels.append(0)
    return images, torch.tensor(rois, dtype=torch.float32), torch.tensor(labels)


def check(condition, message):
    if not condition:
        raise RuntimeError(message)
    print(message)


def train(model, steps=30, batch=8, seed=0):
    """Adam on fresh batches; returns the losses of every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        images, rois, labels = draw_batch(batch, generator)
        loss = nn.functional.cross_entropy(model(images, rois), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def close(actual, expected):
    return torch.allclose(actual, expected, rtol=1e-4, atol=1e-5)


def check_compile(model, images, rois):
    compiled = torch.compile(model)
    with torch.no_grad():
        check(close(compiled(images, rois), model(images, rois)),
              "torch.compile: the compiled detector matches eager")


def check_export(model, images, rois):
    dims = {"images": {0: Dim("batch")}, "rois": {0: Dim("rois")}}
    program = torch.export.export(model, (images, rois), dynamic_shapes=dims)
    other_images, other_rois, _ = draw_batch(5, torch.Generator().manual_seed(7))
    with torch.no_grad():
        check(close(program.module()(other_images, other_rois), model(other_images, other_rois)),
              f"torch.export: exported at batch {len(images)}, run at batch 5 "
              f"({len(other_rois)} RoIs), matches eager")


def check_onnx(backbone, images):
    missing = [name for name in ("onnxruntime", "onnxscript")
               if importlib.util.find_spec(name) is None]
    if missing:
        print(f"ONNX: skipped ({', '.join(missing)} not installed)")
        return
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "backbone.onnx"
        torch.onnx.export(backbone, (images,), str(path), dynamo=True, opset_version=19,
                          dynamic_shapes={"images": {0: Dim("batch")}}, verbose=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        other = draw_batch(3, torch.Generator().manual_seed(8))[0]
        features = session.run(None, {"images": other.numpy()})[0]
    with torch.no_grad():
        check(close(torch.from_numpy(features), backbone(other)),
              "ONNX: the backbone in onnxruntime (DeformConv, opset 19) at batch 3 "
              "matches eager")


def main():
    torch.manual_seed(0)
    model = Detector()
    losses = train(model)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    check(last < 0.5 * first,
          f"training: the mean loss fell from {first:.3f} (first 10 steps) "
          f"to {last:.3f} (last 10 steps)")
    model.eval()
    images, rois, labels = draw_batch(4, torch.Generator().manual_seed(6))
    with torch.no_grad():
        accuracy = (model(images, rois).argmax(1) == labels).float().mean().item()
    print(f"accuracy on {len(rois)} new RoIs: {accuracy:.0%}")
    check_compile(model, images, rois)
    check_export(model, images, rois)
    check_onnx(model.backbone, images)


if __name__ == "__main__":
    main()
