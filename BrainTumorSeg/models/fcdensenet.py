"""FC-DenseNet ("Tiramisu"), 2D.

Jégou, Drozdzal, Vazquez, Romero, Bengio, "The One Hundred Layers Tiramisu: Fully Convolutional DenseNets
for Semantic Segmentation", CVPR Workshops 2017 (arXiv:1611.09326).

A first 3x3 convolution, then dense blocks (each layer: batch norm, ReLU, 3x3 convolution to ``growth_rate``
maps, dropout; its output is concatenated to the block's running stack) separated by transitions down (batch
norm, ReLU, 1x1 convolution keeping the number of maps, dropout, 2x2 max-pooling). The bottleneck block and the
up-path blocks pass on only the maps they create; a transition up (3x3 transposed convolution, stride 2, to as
many maps) joins them to the skip connection of the same resolution. A 1x1 convolution gives the class scores.
Inputs of any size are padded with zeros to a multiple of ``2**len(down_blocks)`` and the scores cropped back.

Presets (:data:`PRESETS`): the paper's FC-DenseNet56 (4 layers per block, k = 12), FC-DenseNet67 (5 per block,
k = 16) and FC-DenseNet103 (4, 5, 7, 10, 12 / 15, k = 16). With the paper's CamVid setting (3 input channels,
11 classes) they have 1,376,795 / 3,463,243 / 9,322,091 trainable parameters; counting the batch-norm running
mean and variance as well (as Lasagne's ``count_params``, used by the authors' code, does): 1,397,963 / 3,502,923 /
9,425,163, against the paper's 1.5 M / 3.5 M / 9.4 M (Table 1). 67 and 103 agree; FC-DenseNet56 as the paper
describes it (and as the authors' code would build it from those numbers) has 1.4 M, not 1.5 M.

``brats`` is the BraTS variant of the seed material: k = 8, blocks 4, 5, 7, 10, 12 down, 15 bottleneck, mirrored
up, first convolution 3x3 to 48 maps. With 4 input sequences and 4 classes it has 2,564,956 trainable parameters
(2.6 M), not the 9.3 M the seed states. The same blocks with k = 16 (FC-DenseNet103) have 9,320,724 with 4 inputs
and 4 classes: the seed's 9.3 M is the count of k = 16, not of k = 8.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

PRESETS: dict[str, dict[str, Any]] = {
    "brats": {"growth_rate": 8, "down_blocks": (4, 5, 7, 10, 12), "bottleneck": 15, "first_conv": 48},
    "fcdensenet56": {"growth_rate": 12, "down_blocks": (4, 4, 4, 4, 4), "bottleneck": 4, "first_conv": 48},
    "fcdensenet67": {"growth_rate": 16, "down_blocks": (5, 5, 5, 5, 5), "bottleneck": 5, "first_conv": 48},
    "fcdensenet103": {"growth_rate": 16, "down_blocks": (4, 5, 7, 10, 12), "bottleneck": 15, "first_conv": 48},
}


class _Layer(nn.Sequential):
    """Batch norm, ReLU, convolution (same padding), dropout."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        )


class _DenseBlock(nn.Module):
    """``layers`` layers, each seeing the block input and all earlier layers' maps; returns only the new maps."""

    def __init__(self, in_channels: int, layers: int, growth_rate: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(in_channels + i * growth_rate, growth_rate, 3, dropout) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = []
        for layer in self.layers:
            new.append(layer(x))
            x = torch.cat([x, new[-1]], dim=1)
        return torch.cat(new, dim=1)


class FCDenseNet(nn.Module):
    """FC-DenseNet of Jégou et al., CVPR Workshops 2017 (arXiv:1611.09326); presets 56, 67, 103 and the seeds' BraTS variant.

    Args:
        in_channels: input channels.
        out_channels: class score maps.
        preset: a key of :data:`PRESETS` (default ``"brats"``); explicit arguments below override it.
        growth_rate: maps each dense layer adds (k).
        down_blocks: layers of each down-path dense block.
        bottleneck: layers of the bottleneck dense block.
        up_blocks: layers of each up-path block, deepest first (default: ``down_blocks`` mirrored).
        first_conv: maps of the first 3x3 convolution.
        dropout: dropout rate after every convolution (the paper: 0.2).
    """

    citation: ClassVar[str] = "Jégou et al., The One Hundred Layers Tiramisu, CVPR Workshops 2017 (arXiv:1611.09326)"

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        preset: str | None = None,
        growth_rate: int | None = None,
        down_blocks: Sequence[int] | None = None,
        bottleneck: int | None = None,
        up_blocks: Sequence[int] | None = None,
        first_conv: int | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        name = preset or "brats"
        if name not in PRESETS:
            raise ValueError(f"unknown FC-DenseNet preset {name!r}; known: {', '.join(PRESETS)}")
        base = PRESETS[name]
        k = growth_rate or base["growth_rate"]
        down = list(down_blocks or base["down_blocks"])
        middle = bottleneck or base["bottleneck"]
        up = list(up_blocks or reversed(down))
        if len(up) != len(down):
            raise ValueError(f"up_blocks needs {len(down)} entries (one per down block), got {len(up)}")
        self.levels = len(down)

        channels = first_conv or base["first_conv"]
        self.first = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        skips = []
        for layers in down:
            self.down.append(_DenseBlock(channels, layers, k, dropout))
            channels += layers * k
            skips.append(channels)
            self.transitions_down.append(_Layer(channels, channels, 1, dropout))
        self.bottleneck = _DenseBlock(channels, middle, k, dropout)
        upsampled = middle * k  # the maps the previous block created: only these go up
        self.transitions_up = nn.ModuleList()
        self.up = nn.ModuleList()
        for layers, skip in zip(up, reversed(skips), strict=True):
            self.transitions_up.append(nn.ConvTranspose2d(upsampled, upsampled, 3, stride=2))
            channels = skip + upsampled
            self.up.append(_DenseBlock(channels, layers, k, dropout))
            upsampled = layers * k
        self.head = nn.Conv2d(channels + upsampled, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        multiple = 2**self.levels
        x = F.pad(x, (0, -width % multiple, 0, -height % multiple))
        x = self.first(x)
        skips = []
        for block, transition in zip(self.down, self.transitions_down, strict=True):
            x = torch.cat([x, block(x)], dim=1)
            skips.append(x)
            x = F.max_pool2d(transition(x), 2)
        new = self.bottleneck(x)
        for upsample, block, skip in zip(self.transitions_up, self.up, reversed(skips), strict=True):
            # the 3x3 stride-2 transposed convolution gives 2n + 1 pixels; keep the first 2n (the paper's crop)
            x = torch.cat([upsample(new)[..., : skip.shape[-2], : skip.shape[-1]], skip], dim=1)
            new = block(x)
        return self.head(torch.cat([x, new], dim=1))[..., :height, :width]
