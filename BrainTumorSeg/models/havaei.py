"""Havaei et al. 2017: TwoPathCNN and the InputCascade, LocalCascade and MFCascade CNNs.

Havaei, Davy, Warde-Farley, Biard, Courville, Bengio, Pal, Jodoin, Larochelle, "Brain Tumor
Segmentation with Deep Neural Networks", Medical Image Analysis 35:18-31, 2017 (arXiv:1505.03540).

The networks are patch classifiers: a 4x33x33 patch (65x65, 56x56 or 53x53 for the cascades)
gives the class scores of its centre pixel. All convolutions are valid and every pooling has
stride 1, so the same weights applied to a larger image give the scores of every pixel whose
patch fits in it. ``forward`` uses that: it pads its input with zeros (z-scored background) by the
network's margin and returns per-pixel scores of the input's size in one pass ("dense" evaluation);
:meth:`classify_patches` takes explicit patches ``(B, C, P, P)`` and returns ``(B, K)``.

Patch geometry: the patch of pixel ``p`` spans ``[p - P // 2, p - P // 2 + P)``, so for the even
56x56 patch of the LocalCascadeCNN the centre pixel is at index 28 (28 pixels before it, 27 after);
:func:`extract_patches` cuts patches with that convention.

TwoPathCNN (the paper's Figure 2): local path conv 7x7 -> Maxout -> max-pool 4x4 (stride 1) ->
64x24x24 -> conv 3x3 -> Maxout -> max-pool 2x2 (stride 1) -> 64x21x21; global path conv 13x13 ->
Maxout -> 160x21x21; concatenation 224x21x21 -> conv 21x21 -> 5 class scores (softmax outside).
A Maxout layer with K pieces is a convolution to K x maps channels and a maximum over each group
of K. Cascades (Figure 3) feed the softmax output of a first TwoPathCNN into a second one: at its
input (InputCascadeCNN, 65x65 -> 5x33x33, 9 input maps), after its first local layer
(LocalCascadeCNN, 56x56 -> 5x24x24, 69 maps) or just before its output layer (MFCascadeCNN,
53x53 -> 5x21x21, 229 maps). The paper trains the first CNN first and keeps it fixed.

Not stated in the paper, chosen here: dropout acts on the hidden maps (the input of the second local
layer and of the output layer), default rate 0.2; ``batch_norm`` puts a batch normalization after
every hidden convolution (before the Maxout), as in a Keras reimplementation that replaced dropout.

:func:`paper_weight_count` counts weights as the paper does (convolution kernels only, one kernel
per output map whatever K, no biases or normalization parameters, the fixed first CNN of a cascade
excluded): 651,488 (TwoPathCNN), 802,368 (InputCascadeCNN), 654,368 (LocalCascadeCNN) and
662,513 (MFCascadeCNN) for the published configuration, exactly the numbers of the paper's Table 1.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

CITATION = "Havaei et al., Brain Tumor Segmentation with Deep Neural Networks, Medical Image Analysis 2017 (arXiv:1505.03540)"


class MaxoutConv2d(nn.Module):
    """Valid convolution to ``maps * k`` channels (optionally batch-normalised), then the maximum over each group of ``k``."""

    def __init__(self, in_channels: int, maps: int, kernel_size: int, k: int, batch_norm: bool) -> None:
        super().__init__()
        self.maps, self.k, self.kernel_size = maps, k, kernel_size
        self.conv = nn.Conv2d(in_channels, maps * k, kernel_size)
        self.norm = nn.BatchNorm2d(maps * k) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return x.unflatten(1, (self.maps, self.k)).amax(dim=2) if self.k > 1 else x

    def paper_weights(self) -> int:
        """Kernel weights counted once per output map (not per Maxout piece), no biases."""
        return self.maps * self.conv.in_channels * self.kernel_size**2


def extract_patches(image: torch.Tensor, centres: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patches ``(N, C, P, P)`` of ``image`` ``(C, H, W)`` around ``centres`` ``(N, 2)`` (row, column), zero outside.

    The patch of pixel ``p`` spans ``[p - P // 2, p - P // 2 + P)`` on each axis, the convention of the networks'
    dense evaluation.
    """
    before = patch_size // 2
    after = patch_size - 1 - before
    padded = F.pad(image, (before, after, before, after))
    offsets = torch.arange(patch_size)
    rows = (centres[:, 0, None] + offsets)[:, :, None]  # (N, P, 1), in padded coordinates
    cols = (centres[:, 1, None] + offsets)[:, None, :]  # (N, 1, P)
    return padded[:, rows, cols].movedim(0, 1)  # (C, N, P, P) -> (N, C, P, P)


class _PatchClassifier(nn.Module):
    """Shared dense / patch plumbing: ``valid`` maps an image of size ``S`` to scores of size ``S - patch_size + 1``."""

    citation: ClassVar[str] = CITATION
    patch_size: int
    # Each output pixel sees only its patch and forward pads with zeros: on a box that drops only zeros (the brain box of
    # inference.predict_slices) every brain pixel gets the whole slice's result, so the box's margin cannot change labels.
    brain_box_exact: ClassVar[bool] = True

    @property
    def margin(self) -> int:
        """Zero padding before each spatial axis for dense evaluation (after it: ``patch_size - 1 - margin``)."""
        return self.patch_size // 2

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense evaluation: scores ``(B, K, H, W)`` of every pixel of ``x`` ``(B, C, H, W)``, zeros outside the image."""
        before = self.margin
        after = self.patch_size - 1 - before
        return self.valid(F.pad(x, (before, after, before, after)))

    def classify_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, K)`` of the centre pixels of patches ``(B, C, P, P)``, ``P`` = ``patch_size``."""
        if tuple(patches.shape[-2:]) != (self.patch_size, self.patch_size):
            raise ValueError(f"expected {self.patch_size}x{self.patch_size} patches, got {tuple(patches.shape[-2:])}")
        return self.valid(patches).flatten(1)


class TwoPathCNN(_PatchClassifier):
    """TwoPathCNN of Havaei et al., Medical Image Analysis 2017 (arXiv:1505.03540): 33x33 patch, local and global paths.

    Args:
        in_channels: input sequences (the paper: T1, T1C, T2, FLAIR).
        num_classes: output classes (the paper: 5, BRATS 2013 labels).
        maxout_k: Maxout pieces per map (the paper's figure: 2).
        dropout: dropout rate on the hidden maps (the paper uses dropout; its rate is not stated).
        batch_norm: batch normalization after each hidden convolution.
        local_maps: maps of each local-path layer (64).
        global_maps: maps of the global-path layer (160).
        extra_local_inputs: maps concatenated after the first local layer (LocalCascadeCNN's second CNN).
        extra_output_inputs: maps concatenated before the output layer (MFCascadeCNN's second CNN).
    """

    patch_size = 33

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 5,
        maxout_k: int = 2,
        dropout: float = 0.2,
        batch_norm: bool = False,
        local_maps: int = 64,
        global_maps: int = 160,
        extra_local_inputs: int = 0,
        extra_output_inputs: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.local1 = MaxoutConv2d(in_channels, local_maps, 7, maxout_k, batch_norm)
        self.local2 = MaxoutConv2d(local_maps + extra_local_inputs, local_maps, 3, maxout_k, batch_norm)
        self.global_path = MaxoutConv2d(in_channels, global_maps, 13, maxout_k, batch_norm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Conv2d(local_maps + global_maps + extra_output_inputs, num_classes, 21)

    def valid(
        self, x: torch.Tensor, local_extra: torch.Tensor | None = None, output_extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores of size ``S - 32`` for an input of size ``S``; ``*_extra`` maps must have the size of the layer they join."""
        local = F.max_pool2d(self.local1(x), 4, stride=1)
        if local_extra is not None:
            local = torch.cat([local, local_extra], dim=1)
        local = F.max_pool2d(self.local2(self.dropout(local)), 2, stride=1)
        features = [local, self.global_path(x)]
        if output_extra is not None:
            features.append(output_extra)
        return self.output(self.dropout(torch.cat(features, dim=1)))

    def paper_weights(self) -> int:
        """Weights as the paper counts them: kernels only, one per output map, no biases."""
        hidden = (self.local1, self.local2, self.global_path)
        return sum(layer.paper_weights() for layer in hidden) + self.output.weight.numel()


class _Cascade(_PatchClassifier):
    """Two TwoPathCNNs; the first one's softmax output joins the second one (where depends on the subclass)."""

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 5,
        maxout_k: int = 2,
        dropout: float = 0.2,
        batch_norm: bool = False,
        local_maps: int = 64,
        global_maps: int = 160,
        freeze_first: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        common = dict(num_classes=num_classes, maxout_k=maxout_k, dropout=dropout, batch_norm=batch_norm)
        common |= dict(local_maps=local_maps, global_maps=global_maps)
        self.first = TwoPathCNN(in_channels, **common)
        self.second = TwoPathCNN(**self._second_inputs(in_channels, num_classes), **common)
        self.freeze_first = freeze_first
        if freeze_first:
            self.first.requires_grad_(False)

    @staticmethod
    def _second_inputs(in_channels: int, num_classes: int) -> dict[str, int]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> _Cascade:
        """Like ``nn.Module.train``, but a frozen first CNN stays in eval mode (fixed dropout and batch statistics)."""
        super().train(mode)
        if self.freeze_first:
            self.first.eval()
        return self

    def first_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.first.valid(x), dim=1)

    def paper_weights(self) -> int:
        """Weights as the paper counts them: those of the second CNN (the first one is trained before and kept fixed)."""
        return self.second.paper_weights()


class InputCascadeCNN(_Cascade):
    """InputCascadeCNN of Havaei et al., Medical Image Analysis 2017 (arXiv:1505.03540): 65x65 patch, joins at the input.

    The first TwoPathCNN maps the 65x65 patch to 5x33x33 probabilities, concatenated with the central 4x33x33 patch
    into the second CNN's 9 input maps (both of its paths see them). Arguments as for :class:`TwoPathCNN`, plus
    ``freeze_first`` (fix the first CNN, as the paper does once it is trained).
    """

    patch_size = 65

    @staticmethod
    def _second_inputs(in_channels: int, num_classes: int) -> dict[str, int]:
        return {"in_channels": in_channels + num_classes}

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        inner = x[..., 16:-16, 16:-16]
        return self.second.valid(torch.cat([inner, self.first_probabilities(x)], dim=1))


class LocalCascadeCNN(_Cascade):
    """LocalCascadeCNN of Havaei et al., Medical Image Analysis 2017 (arXiv:1505.03540): 56x56 patch, joins after local layer 1.

    The first TwoPathCNN maps the 56x56 patch to 5x24x24 probabilities, concatenated with the 64x24x24 maps of the
    second CNN's first local layer (after its pooling) into 69 maps. The second CNN sees the 33x33 patch at offset 12
    of the 56x56 one, so first-CNN output ``j`` (centre ``j + 16``) sits half a pixel before the centre ``j + 16.5``
    of the second CNN's 10x10 local receptive field ``j`` (an even field has no central pixel).
    """

    patch_size = 56

    @staticmethod
    def _second_inputs(in_channels: int, num_classes: int) -> dict[str, int]:
        return {"in_channels": in_channels, "extra_local_inputs": num_classes}

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        inner = x[..., 12:-11, 12:-11]
        return self.second.valid(inner, local_extra=self.first_probabilities(x))


class MFCascadeCNN(_Cascade):
    """MFCascadeCNN of Havaei et al., Medical Image Analysis 2017 (arXiv:1505.03540): 53x53 patch, joins before the output layer.

    The first TwoPathCNN maps the 53x53 patch to 5x21x21 probabilities, concatenated with the second CNN's
    224x21x21 maps (local + global paths, each pixel centred on a 13x13 field) into 229 maps before its 21x21
    output convolution.
    """

    patch_size = 53

    @staticmethod
    def _second_inputs(in_channels: int, num_classes: int) -> dict[str, int]:
        return {"in_channels": in_channels, "extra_output_inputs": num_classes}

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        inner = x[..., 10:-10, 10:-10]
        return self.second.valid(inner, output_extra=self.first_probabilities(x))


def paper_weight_count(network: TwoPathCNN | _Cascade) -> int:
    """The paper's weight count of a Havaei network: convolution kernels only, one per output map, no biases,
    no Maxout multiplicity, the (fixed) first CNN of a cascade excluded."""
    return network.paper_weights()
