"""PSPNet, 2D, with a small dilated residual backbone trained from scratch.

Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017 (arXiv:1612.01105).

Backbone: a dilated ResNet as in the paper (three 3x3 convolutions as stem, max-pooling, four residual stages;
the third and fourth keep the resolution and dilate their convolutions by 2 and 4, so the feature map has 1/8
of the input size), but with basic residual blocks, ``width`` channels in the first stage (doubling per stage)
and ``blocks`` blocks per stage, so it is small enough to train on a CPU. No ImageNet weights: every weight is
trained from scratch. Pyramid pooling module: average pooling to ``bins`` x ``bins`` (1, 2, 3, 6), a 1x1
convolution to ``1 / len(bins)`` of the feature channels, bilinear upsampling to the feature size,
concatenation with the features; then a 3x3 convolution, dropout, a 1x1 convolution to the class scores and
bilinear upsampling by 8. The paper's auxiliary training loss on the third stage is not part of the network.
Inputs of any size are padded with zeros to a multiple of 8 and the scores cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_STRIDE = 8


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _BasicBlock(nn.Module):
    """Residual block: two 3x3 convolutions (the first may stride, both may dilate), identity or 1x1 projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


class _PyramidPooling(nn.Module):
    """Pyramid pooling module: pooled context at several grid sizes, upsampled and concatenated to the features."""

    def __init__(self, channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        reduced = channels // len(bins)
        self.bins = list(bins)
        self.branches = nn.ModuleList(_conv_bn_relu(channels, reduced, 1) for _ in self.bins)
        self.out_channels = channels + reduced * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=False)
            for b, branch in zip(self.bins, self.branches, strict=True)
        ]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(nn.Module):
    """PSPNet of Zhao et al., CVPR 2017 (arXiv:1612.01105): dilated residual backbone + pyramid pooling module.

    Args:
        in_channels: input channels.
        out_channels: class score maps.
        width: channels of the first residual stage (stages: width, 2 width, 4 width, 8 width).
        blocks: residual blocks in each of the four stages (depth).
        bins: pyramid pooling grid sizes.
        head_channels: channels of the 3x3 convolution after pyramid pooling (default 4 x width).
        dropout: dropout before the classifier (the paper: 0.1).
    """

    citation: ClassVar[str] = "Zhao et al., Pyramid Scene Parsing Network, CVPR 2017 (arXiv:1612.01105)"
    # The pyramid pools over the whole input, so a smaller box changes every pixel's context: by default slice-wise
    # inference gives it the whole brain crop (inference.box_margin null), as it was trained and validated.
    default_box_margin: ClassVar[int | None] = None

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        width: int = 32,
        blocks: Sequence[int] = (2, 2, 2, 2),
        bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"PSPNet needs blocks for 4 stages, got {list(blocks)}")
        self.stem = nn.Sequential(
            _conv_bn_relu(in_channels, width, stride=2),
            _conv_bn_relu(width, width),
            _conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        previous = 2 * width
        # (stride, dilation) of the four stages: output stride 4 -> 4 -> 8 -> 8 (dilated 2) -> 8 (dilated 4)
        for stage, (count, (stride, dilation)) in enumerate(zip(blocks, ((1, 1), (2, 1), (1, 2), (1, 4)), strict=True)):
            channels = width * 2**stage
            layers = [_BasicBlock(previous, channels, stride, dilation)]
            layers += [_BasicBlock(channels, channels, 1, dilation) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            previous = channels
        self.stages = nn.Sequential(*stages)
        self.pyramid = _PyramidPooling(previous, bins)
        head = head_channels or 4 * width
        self.head = nn.Sequential(
            _conv_bn_relu(self.pyramid.out_channels, head),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(head, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % OUTPUT_STRIDE, 0, -height % OUTPUT_STRIDE))
        size = x.shape[-2:]
        scores = self.head(self.pyramid(self.stages(self.stem(x))))
        return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)[..., :height, :width]
