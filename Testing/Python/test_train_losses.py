"""Losses: every name works for both output types, prefers correct predictions, and weights classes as documented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from BrainTumorSeg.havaei_training import apply_max_norm, output_layer
from BrainTumorSeg.losses import LOSSES, Loss, batch_class_weights, per_sample_class_weights
from BrainTumorSeg.models.havaei import InputCascadeCNN, TwoPathCNN


def labels_batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, 16, 16, dtype=torch.int64)
    labels[0, 4:10, 4:10] = 2
    labels[0, 6:8, 6:8] = 3
    labels[1, 2:5, 2:5] = torch.randint(1, 4, (3, 3), generator=generator)
    return labels


@pytest.mark.parametrize("name", LOSSES)
def test_class_losses_prefer_the_truth(name):
    labels = labels_batch()
    good = F.one_hot(labels, 4).movedim(-1, 1).float() * 8
    bad = torch.roll(good, 1, dims=1)
    loss = Loss(name, "classes")
    assert torch.isfinite(loss(good, labels)) and loss(good, labels) < loss(bad, labels)
    patch_labels = labels[:, 5, :]
    patch_logits = F.one_hot(patch_labels.flatten(), 4).float() * 8
    assert loss(patch_logits, patch_labels.flatten()) < loss(-patch_logits, patch_labels.flatten())


@pytest.mark.parametrize("name", LOSSES)
def test_region_losses_prefer_the_truth(name):
    labels = labels_batch()
    target = torch.stack([labels > 0, (labels == 1) | (labels == 3), labels == 3], 1).float()
    loss = Loss(name, "regions")
    assert loss(target * 16 - 8, target) < loss(8 - target * 16, target)


def test_per_slice_weights_give_each_present_label_the_same_share():
    labels = labels_batch()
    weights = per_sample_class_weights(labels, 4)
    for b in range(labels.shape[0]):
        present = labels[b].unique()
        totals = torch.stack([weights[b][labels[b] == k].sum() for k in present])
        assert torch.allclose(totals, totals[0].expand_as(totals))
        assert torch.isclose(weights[b].mean(), torch.tensor(1.0))
    weights = batch_class_weights(torch.tensor([0, 0, 0, 1]), 4)
    assert weights[0] * 3 == pytest.approx(float(weights[1])) and weights[2] == 0


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        Loss("focal", "classes")


def test_max_norm_caps_every_trained_kernel_and_output_layer_is_found():
    network = TwoPathCNN(local_maps=4, global_maps=4)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(100)
    apply_max_norm(network, 2.0)
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            assert module.weight.flatten(1).norm(dim=1).max() <= 2.0 + 1e-4
    cascade = InputCascadeCNN(local_maps=4, global_maps=4, freeze_first=True)
    assert output_layer(cascade) is cascade.second.output and output_layer(network) is network.output
