"""The demo's two networks: one small CNN, with its last two convolutions plain or deformable.

Layout (32x32 input): conv 1->16, conv 16->32 stride 2, then two 3x3 convolutions
32->32 at 16x16 (``conv3``, ``conv4``), each followed by batch norm and ReLU;
global average pooling and a linear classifier. The plain network sees 13x13
pixels per unit; the deformable one (``DeformConv2dPack`` for ``conv3`` and
``conv4``) learns where its units look.
"""

from __future__ import annotations

from torch import nn

from cudeform.adapters.torch_layers import DeformConv2dPack

WIDTH = 32
DEFORMABLE_LAYERS = ("conv3", "conv4")
FEATURE_STRIDE = 2  # image pixels per step of conv3's and conv4's maps


class SmallCNN(nn.Module):
    def __init__(self, classes, deformable):
        super().__init__()
        late_conv = DeformConv2dPack if deformable else nn.Conv2d
        self.deformable = deformable
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, WIDTH, 3, stride=FEATURE_STRIDE, padding=1)
        # bias=True: DeformConv2dPack has none by default (mmcv's), nn.Conv2d has one
        self.conv3 = late_conv(WIDTH, WIDTH, 3, padding=1, bias=True)
        self.conv4 = late_conv(WIDTH, WIDTH, 3, padding=1, bias=True)
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in (16, WIDTH, WIDTH, WIDTH))
        self.classifier = nn.Linear(WIDTH, classes)

    def forward(self, images):
        x = images
        for conv, norm in zip((self.conv1, self.conv2, self.conv3, self.conv4), self.norms):
            x = nn.functional.relu(norm(conv(x)))
        return self.classifier(x.mean(dim=(2, 3)))


def plain_and_deformable(classes):
    """The two networks, starting from the same weights.

    ``DeformConv2dPack`` starts with zero offsets, so at step 0 both networks compute
    the same function; they differ only in what training does to the offsets.
    """
    plain = SmallCNN(classes, deformable=False)
    deformable = SmallCNN(classes, deformable=True)
    missing, unexpected = deformable.load_state_dict(plain.state_dict(), strict=False)
    if unexpected or not all(".conv_offset." in key for key in missing):
        raise RuntimeError(f"the networks differ beyond conv_offset: {missing + unexpected}")
    return plain, deformable
