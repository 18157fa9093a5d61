"""Training losses, chosen by name for either output type of a model card.

- ``ce``: cross-entropy; binary cross-entropy per channel for ``regions`` outputs (WT, TC, ET as
  overlapping sigmoids), softmax cross-entropy for ``classes`` outputs.
- ``weighted-ce``: the same, class-weighted. For classes each sample (a slice, or a block) gets
  weights that give every label present in it the same share of its loss: the per-slice
  class-weighted loss of a Keras reimplementation of Havaei et al. 2017 (arXiv:1505.03540). For
  patch classification (one label per sample) the weights are inverse label frequencies over the
  batch. For regions, each channel's positives are weighted by its negative/positive ratio in the
  batch (capped at 100).
- ``dice-ce``: soft Dice + cross-entropy (Milletari et al. 2016, arXiv:1606.04797; the
  combination of Isensee et al. 2018, arXiv:1809.10483). Dice over the batch per output channel
  (regions) or per tumor class 1..K-1 (classes; the background class is left to the cross-entropy).

Targets: ``regions`` float masks ``(B, 3, ...)``; ``classes`` int64 labels ``(B, ...)`` (``(B,)``
for patch classifiers, whose logits are ``(B, K)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "weighted-ce", "dice-ce")


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per channel of ``(B, K, ...)`` over the whole batch, averaged over channels."""
    dims = (0, *range(2, probabilities.dim()))
    inter = (probabilities * target).sum(dims)
    return (1 - (2 * inter + eps) / (probabilities.sum(dims) + target.sum(dims) + eps)).mean()


def per_sample_class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Pixel weights ``labels.shape``: in each sample every present label weighs the same in total, mean weight 1."""
    flat = labels.flatten(1)
    counts = F.one_hot(flat, classes).sum(dim=1).float()  # (B, K)
    present = (counts > 0).sum(dim=1, keepdim=True).float()
    per_class = torch.where(counts > 0, flat.shape[1] / (present * counts.clamp(min=1)), 0.0)  # (B, K)
    return torch.gather(per_class, 1, flat).view_as(labels)


def batch_class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Class weights ``(K,)``: inverse frequency in ``labels``, each present class summing to the same total."""
    counts = torch.bincount(labels.flatten(), minlength=classes).float()
    present = (counts > 0).sum().float()
    return torch.where(counts > 0, labels.numel() / (present * counts.clamp(min=1)), 0.0)


class Loss:
    """``Loss(name, output_type)(logits, target)`` -> scalar; see the module docstring for the names."""

    def __init__(self, name: str, output_type: str) -> None:
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose {', '.join(LOSSES)}")
        if output_type not in ("regions", "classes"):
            raise ValueError(f"unknown output type {output_type!r}")
        self.name, self.output_type = name, output_type

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.output_type == "regions":
            return self._regions(logits, target.float())
        return self._classes(logits, target.long())

    def _regions(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.name == "weighted-ce":
            dims = (0, *range(2, target.dim()))
            positives = target.sum(dims)
            ratio = ((target.numel() / target.shape[1] - positives) / positives.clamp(min=1)).clamp(1, 100)
            shape = (1, -1) + (1,) * (target.dim() - 2)
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=ratio.view(shape))
        loss = F.binary_cross_entropy_with_logits(logits, target)
        if self.name == "dice-ce":
            loss = loss + soft_dice_loss(torch.sigmoid(logits), target)
        return loss

    def _classes(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classes = logits.shape[1]
        if self.name == "weighted-ce":
            if target.dim() == 1:
                return F.cross_entropy(logits, target, weight=batch_class_weights(target, classes))
            weights = per_sample_class_weights(target, classes)
            return (F.cross_entropy(logits, target, reduction="none") * weights).sum() / weights.sum()
        loss = F.cross_entropy(logits, target)
        if self.name == "dice-ce":
            probabilities = torch.softmax(logits, dim=1)
            one_hot = F.one_hot(target, classes).movedim(-1, 1).float()
            loss = loss + soft_dice_loss(probabilities[:, 1:], one_hot[:, 1:])
        return loss
