"""2D U-Net.

Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015 (arXiv:1505.04597). Same-padded 3x3 convolutions with
batch normalization, max-pooling down, transposed convolutions up, skip
connections by concatenation. Depth and width come from the model card; inputs
of any size are padded to a multiple of ``2**(levels-1)`` and the output is
cropped back, so class scores always have the input's spatial size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class UNet2D(nn.Module):
    """U-Net with ``len(features)`` resolution levels.

    Args:
        in_channels: input channels (modalities x slices of context).
        out_channels: output score maps (classes, or regions).
        features: channels at each level, shallowest first (the paper: 64, 128, 256, 512, 1024).
        dropout: channel dropout after the deepest block (the paper's "drop-out layers at the end of the contracting path").
    """

    citation: ClassVar[str] = (
        "Ronneberger et al., U-Net: Convolutional Networks for Biomedical Image Segmentation, MICCAI 2015 (arXiv:1505.04597)"
    )

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        features = list(features)
        self.levels = len(features)
        self.down = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(features):
            self.down.append(_double_conv(previous, width, dropout if level == self.levels - 1 else 0.0))
            previous = width
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for width in reversed(features[:-1]):
            self.upsample.append(nn.ConvTranspose2d(previous, width, 2, stride=2))
            self.up.append(_double_conv(2 * width, width, 0.0))
            previous = width
        self.head = nn.Conv2d(previous, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        multiple = 2 ** (self.levels - 1)
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)[..., :height, :width]
