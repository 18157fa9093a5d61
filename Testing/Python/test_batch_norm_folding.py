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
def sample_block(sample_case):
    """``sample_block(width, height, slices)``: a block of brain from the middle of the prepared real sample case."""
    volume = prepare(Reorientation.of(sample_case.reference).to_canonical(sample_case.data)).data
    x, y, z = (size // 2 for size in volume.shape[1:])

    def cut(width: int, height: int, slices: int) -> np.ndarray:
        block = volume[:, x - width // 2 : x + width // 2, y - height // 2 : y + height // 2, z - slices // 2 :]
        return np.ascontiguousarray(block[..., :slices])

    return cut


@pytest.mark.parametrize("model_id", SHIPPED)
def test_folded_network_gives_the_same_probabilities(model_id, sample_block):
    card = available_models()[model_id]
    # 96 x 112 x 4 for the networks on whole slices; one window in-plane for sliding-window networks (a 3D one pads
    # the block to its window, which costs the same at any thickness); 48 x 48 x 2 for Havaei's patch classifiers
    # (each pixel is a patch's output: about 1 s per 10 000 pixels here)
    if card.inference["mode"] == "dense":
        block = sample_block(48, 48, 2)
    elif card.inference["mode"] == "window":
        block = sample_block(*card.inference["window"][:2], 4)
    else:
        block = sample_block(96, 112, 4)
    plain = load_weights(card.build(), card.weights_path, card.id)
    batch_norms = sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in plain.modules())
    folded = card.load()
    left = sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in folded.modules())
    if card.architecture == "unet2d":  # every batch norm follows a convolution in a Sequential block
        assert batch_norms > 0 and left == 0
    if card.architecture == "pspnet":  # its residual blocks' conv1/bn1 attributes are not a Sequential: kept
        assert 0 < left < batch_norms
    cpu = torch.device("cpu")
    expected = predict_with_card(card, plain, block, cpu, None)
    np.testing.assert_allclose(predict_with_card(card, folded, block, cpu, None), expected, atol=1e-4)


def test_folding_needs_eval_mode():
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    with pytest.raises(ValueError, match="only in eval mode"):
        fold_batch_norms(network)


def test_pre_activation_blocks_are_left_alone():
    network = nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3)).eval()
    assert fold_batch_norms(network) == 0 and isinstance(network[0], nn.BatchNorm2d)
