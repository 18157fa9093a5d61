"""The training command runs end to end on real cases and writes weights plus a complete model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from BrainTumorSeg.cli import main
from BrainTumorSeg.models.card import ModelCard
from BrainTumorSeg.train import SliceSampler, augment, load_training_case

ROOT = Path(__file__).resolve().parents[2]
BRATS = ROOT.parent / "shared" / "data" / "brats"
needs_brats = pytest.mark.skipif(not BRATS.is_dir(), reason="shared BraTS cases not beside the repository")


@needs_brats
def test_train_writes_weights_and_a_complete_card(tmp_path):
    template = json.loads((ROOT / "training" / "unet2d-axial.json").read_text())
    template.update(id="tiny-unet", default=False, config={**template["config"], "features": [4, 8]})
    card_path = tmp_path / "tiny.json"
    card_path.write_text(json.dumps(template))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["Brats18_CBICA_AQR_1"], "validation": ["Brats18_CBICA_ARZ_1"]}))
    out = tmp_path / "run"
    args = ["train", "--card", str(card_path), "--data", str(BRATS), "--split", str(split), "--out", str(out)]
    args += ["--steps", "3", "--batch", "2", "--crop", "64", "64", "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    card = ModelCard.read(out / "tiny-unet.json")
    assert card.weights_path.is_file()
    assert card.training["split"] == {"train": ["Brats18_CBICA_AQR_1"], "validation": ["Brats18_CBICA_ARZ_1"]}
    assert card.training["command"].startswith("brain-tumor-seg train --card")
    assert card.training["minutes"] >= 0 and card.training["machine"]
    assert set(card.validation["dice"]) == {"WT", "TC", "ET"}
    assert set(card.validation["per_case"]) == {"Brats18_CBICA_ARZ_1"}
    card.load()  # the written weights fit the card's architecture


@needs_brats
def test_sampler_and_augmentation_keep_image_and_target_aligned(tmp_path):
    """A flipped/rotated batch still has tumor targets only where the image has brain."""
    case = load_training_case(BRATS / "Brats18_CBICA_AQR_1", tmp_path, "brats2017")
    sampler = SliceSampler([case], "axial", 1, (96, 96), tumor_fraction=1.0, seed=0)
    x, labels = sampler.sample(4)
    assert x.shape == (4, 12, 96, 96) and labels.shape == (4, 96, 96)
    assert all(lab.any() for lab in labels)  # tumor_fraction 1: every slice has tumor
    y = torch.stack([(labels > 0), (labels == 1) | (labels == 3), labels == 3], 1).float()
    xa, ya = augment(x.clone(), y.clone(), torch.Generator().manual_seed(0), 4)
    brain = (xa != 0).any(dim=1)
    assert ya[:, 0].bool().any()
    assert (ya[:, 0].bool() & ~brain).float().mean() < 0.01
