"""Folding batch normalization into convolutions for inference keeps each shipped network's function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from BrainTumorSeg.geometry import Reorientation
from BrainTumorSeg.models.batch_norm_folding import fold_batch_norms
from BrainTumorSeg.models.card import available_models
from BrainTumorSeg.models.registry import load_weights
from BrainTumorSeg.pipeline import predict_with_card
from BrainTumorSeg.preprocess import prepare

SHIPPED = sorted(model_id for model_id, card in available_models().items() if not card.is_ensemble)  # networks


@pytest.fixture(scope="module")
def sample_slab(sample_case) -> np.ndarray:
    """A 96 x 112 x 4 block of brain from the middle of the prepared real sample case (small, so that the Havaei
    cascades' dense evaluation stays quick)."""
    volume = prepare(Reorientation.of(sample_case.reference).to_canonical(sample_case.data)).data
    x, y, z = (size // 2 for size in volume.shape[1:])
    return np.ascontiguousarray(volume[:, x - 48 : x + 48, y - 56 : y + 56, z - 2 : z + 2])


@pytest.mark.parametrize("model_id", SHIPPED)
def test_folded_network_gives_the_same_probabilities(model_id, sample_slab):
    card = available_models()[model_id]
    plain = load_weights(card.build(), card.weights_path, card.id)
    batch_norms = sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in plain.modules())
    folded = card.load()
    left = sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in folded.modules())
    if card.architecture == "unet2d":  # every batch norm follows a convolution in a Sequential block
        assert batch_norms > 0 and left == 0
    if card.architecture == "pspnet":  # its residual blocks' conv1/bn1 attributes are not a Sequential: kept
        assert 0 < left < batch_norms
    cpu = torch.device("cpu")
    expected = predict_with_card(card, plain, sample_slab, cpu, None)
    np.testing.assert_allclose(predict_with_card(card, folded, sample_slab, cpu, None), expected, atol=1e-4)


def test_folding_needs_eval_mode():
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    with pytest.raises(ValueError, match="only in eval mode"):
        fold_batch_norms(network)


def test_pre_activation_blocks_are_left_alone():
    network = nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3)).eval()
    assert fold_batch_norms(network) == 0 and isinstance(network[0], nn.BatchNorm2d)
