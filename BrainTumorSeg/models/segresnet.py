"""3D SegResNet (MONAI) for patch-wise 3D inference.

Myronenko, "3D MRI brain tumor segmentation using autoencoder regularization", BrainLes 2018 (arXiv:1810.11654),
without the variational autoencoder branch; the network behind MONAI Auto3DSeg's BraTS models. A thin wrapper:
``net`` is MONAI's ``monai.networks.nets.SegResNet`` built from the model card's configuration (so a MONAI
state dict loads after prefixing its keys with ``net.``), and ``forward`` pads inputs of any size with zeros to
a multiple of ``2**(len(blocks_down) - 1)`` and crops the scores back to the input's size. MONAI is imported
when the network is built, not when the registry is, because importing it takes seconds. Default: MONAI's
BraTS tutorial configuration (16 initial filters, blocks 1, 2, 2, 4 down and 1, 1, 1 up, dropout 0.2), 4 input
sequences, 3 score maps (the BraTS regions, in the order the model card declares).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class SegResNet(nn.Module):
    """SegResNet of Myronenko, BrainLes 2018 (arXiv:1810.11654), MONAI's implementation, 3D, any input size.

    Args:
        in_channels: input channels.
        out_channels: score maps.
        init_filters: channels of the first level (doubling per level; multiple of 8 for the group norm).
        blocks_down: residual blocks per encoder level (depth = its length).
        blocks_up: residual blocks per decoder level (one fewer entry than ``blocks_down``).
        dropout_prob: dropout after the first convolution (MONAI's convention), or None.
        **kwargs: any other ``monai.networks.nets.SegResNet`` argument (``norm``, ``upsample_mode``, ...).
    """

    citation: ClassVar[str] = (
        "Myronenko, 3D MRI brain tumor segmentation using autoencoder regularization, BrainLes 2018 (arXiv:1810.11654)"
    )

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        init_filters: int = 16,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        dropout_prob: float | None = 0.2,
        **kwargs: Any,
    ) -> None:
        from monai.networks.nets import SegResNet as MonaiSegResNet

        super().__init__()
        self.net = MonaiSegResNet(
            spatial_dims=kwargs.pop("spatial_dims", 3),
            init_filters=init_filters,
            in_channels=in_channels,
            out_channels=out_channels,
            dropout_prob=dropout_prob,
            blocks_down=tuple(blocks_down),
            blocks_up=tuple(blocks_up),
            **kwargs,
        )
        self.multiple = 2 ** (len(blocks_down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        padding: list[int] = []
        for extent in reversed(size):
            padding += [0, -extent % self.multiple]
        scores = self.net(F.pad(x, padding))
        return scores[(..., *(slice(0, extent) for extent in size))]
