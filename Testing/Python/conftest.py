"""Shared fixtures: the bundled real sample case and the shipped default model, loaded once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from train_support import copy_cropped

from BrainTumorSeg.case import Case, resolve_inputs
from BrainTumorSeg.labels import from_convention
from BrainTumorSeg.models.card import ModelCard, get_model
from BrainTumorSeg.models.ensemble import member_cards
from BrainTumorSeg.pipeline import segment_case
from BrainTumorSeg.resources import sample_case_dir


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return sample_case_dir()


@pytest.fixture(scope="session")
def sample_case(sample_dir: Path) -> Case:
    return resolve_inputs(sample_dir)


@pytest.fixture(scope="session")
def sample_truth(sample_dir: Path) -> np.ndarray:
    """Ground truth of the sample in internal labels, indexed like the T1ce array."""
    path = next(sample_dir.glob("*_seg.nii.gz"))
    return from_convention(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), "brats2017")


@pytest.fixture(scope="session")
def default_card() -> ModelCard:
    """The default model's card (its networks: :func:`member_cards`, itself unless it is an ensemble card)."""
    return get_model()


@pytest.fixture(scope="session")
def unet_card(default_card: ModelCard) -> ModelCard:
    """One real trained network for the engine's mechanics: the default model's (first), a 2D U-Net on axial slices."""
    return member_cards(default_card)[0]


@pytest.fixture(scope="session")
def unet_network(unet_card: ModelCard):
    return unet_card.load()


@pytest.fixture(scope="session")
def sample_labels(sample_case: Case, default_card: ModelCard) -> np.ndarray:
    """Default model's fp32 labels of the sample as stored (LPS), cleaned up as its card says (as the CLI does)."""
    return segment_case(sample_case, default_card, device="cpu", precision="fp32")


TINY_MODEL_ID = "tiny-test"
# A crop of a BraTS volume that keeps the tumor of the sample case and of the shared cases the tests use
# (SimpleITK (i, j, k) order; slicing a SimpleITK image keeps its geometry).
CROP = (slice(56, 184), slice(40, 200), slice(30, 130))


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A folder with a tiny untrained 2D U-Net (features 4, 8), marked default: for testing mechanics, not quality."""
    import json

    import torch

    from BrainTumorSeg.models.registry import save_weights

    folder = tmp_path_factory.mktemp("tiny-models")
    card = json.loads((Path(__file__).resolve().parents[2] / "training" / "unet2d-axial.json").read_text())
    card.update(id=TINY_MODEL_ID, default=True)
    card["config"]["features"] = [4, 8]
    (folder / f"{TINY_MODEL_ID}.json").write_text(json.dumps(card))
    torch.manual_seed(0)
    save_weights(ModelCard.read(folder / f"{TINY_MODEL_ID}.json").build(), folder / f"{TINY_MODEL_ID}.safetensors")
    return folder


def _crop_case(source: Path, target: Path) -> Path:
    return copy_cropped(source, target, CROP)


@pytest.fixture(scope="session")
def crop_case():
    """``crop_case(source, target)``: copy a BraTS case folder's images (and ground truth), cropped to
    :data:`CROP`, as ``.nii.gz`` into ``target``; returns ``target``."""
    return _crop_case


@pytest.fixture(scope="session")
def cropped_sample(tmp_path_factory, sample_dir: Path) -> Path:
    """The sample case cropped to :data:`CROP` (its folder keeps the case's name)."""
    return _crop_case(sample_dir, tmp_path_factory.mktemp("cropped") / sample_dir.name)


@pytest.fixture(scope="session")
def cropped_labels(cropped_sample: Path, default_card: ModelCard) -> np.ndarray:
    """Default model's fp32 labels of :func:`cropped_sample` as stored, cleaned up as its card says."""
    return segment_case(resolve_inputs(cropped_sample), default_card, device="cpu", precision="fp32")
