"""Havaei et al. 2017 (arXiv:1505.03540) training procedure pieces: patch classification, phases, cascades, regularizers.

- :class:`PatchClassification`: a network whose ``forward`` classifies the centre pixels of patches, so that
  DistributedDataParallel (which only sees ``forward``) averages the gradients of patch training.
- :class:`ValidSlices`: a network whose ``forward`` scores only the pixels whose whole patch lies inside the
  input (no zero padding), for dense training on slice crops cut inside the brain (the Keras variant).
- :func:`is_window_classifier`: whether a network is one of these window classifiers.
- :func:`output_layer`: the layer phase 2 retrains alone ("we retrain only the output layer ... on a more
  representative distribution of the labels"): TwoPathCNN's final 21x21 convolution, or the second CNN's in
  a cascade.
- :func:`load_first_cnn`: a cascade's first CNN from a trained TwoPathCNN's weights (the paper trains it first
  and keeps it fixed while the second one trains).
- :func:`l1_penalty` and :func:`apply_max_norm`: the paper's L1 term and max-norm constraint on the kernels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import InputError
from .models.havaei import TwoPathCNN, _Cascade
from .models.registry import mismatch


class PatchClassification(nn.Module):
    """``forward(patches)`` = ``network.classify_patches(patches)``: scores ``(B, K)`` of ``(B, C, P, P)`` patches."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.network.classify_patches(patches)


class ValidSlices(nn.Module):
    """``forward(x)`` = ``network.valid(x)``: scores of size ``S - patch_size + 1`` for an input of size ``S``.

    ``network.forward`` pads with zeros, which stands for the background outside a cropped volume at inference;
    at the edge of a training crop cut inside the brain it would show the network false context.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.valid(x)


def is_window_classifier(network: nn.Module) -> bool:
    """Whether ``network`` labels each pixel from the ``patch_size`` window around it (TwoPathCNN and the cascades),
    so that dense training needs that much context around every scored pixel."""
    return isinstance(network, (TwoPathCNN, _Cascade))


def output_layer(network: nn.Module) -> nn.Module:
    """The output convolution of a TwoPathCNN, or of a cascade's second CNN."""
    if isinstance(network, _Cascade):
        return network.second.output
    if isinstance(network, TwoPathCNN):
        return network.output
    raise ValueError(f"{type(network).__name__} is not one of Havaei's networks")


def load_first_cnn(network: _Cascade, path: Path) -> str:
    """Load a trained TwoPathCNN's safetensors into ``network.first`` (all keys must match); returns the file's sha256."""
    if not path.is_file():
        raise InputError(path, "first CNN weights not found")
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    try:
        network.first.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(path, f"not the weights of a TwoPathCNN with this cascade's configuration ({mismatch(error)})") from None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trainable_kernels(network: nn.Module) -> list[torch.Tensor]:
    """Convolution kernels that are being trained (biases and normalization parameters excluded)."""
    return [m.weight for m in network.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]


def l1_penalty(network: nn.Module) -> torch.Tensor:
    """Sum of absolute values of the trained convolution kernels (the paper's L1 regularizer)."""
    kernels = trainable_kernels(network)
    return sum((k.abs().sum() for k in kernels), torch.zeros(()))


@torch.no_grad()
def apply_max_norm(network: nn.Module, max_norm: float) -> None:
    """Rescale each trained kernel (one per output map) whose L2 norm exceeds ``max_norm`` back to it (Srebro and
    Shraibman 2005; the max-norm constraint used with Maxout and dropout)."""
    for kernel in trainable_kernels(network):
        kernel.copy_(torch.renorm(kernel, p=2, dim=0, maxnorm=max_norm))
