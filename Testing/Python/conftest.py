"""Shared fixtures: the bundled real sample case and the shipped default model, loaded once."""

from __future__ import annotations

import contextlib
import io
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
def sample_run(tmp_path_factory) -> tuple[Path, str]:
    """``segment --sample`` (CPU, fp32) run once in a new working folder, which its default, relative ``--out`` is in:
    that folder and what the run printed."""
    from BrainTumorSeg.cli import main

    folder = tmp_path_factory.mktemp("sample-run")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(folder)
        assert main(["segment", "--sample", "--device", "cpu", "--precision", "fp32"]) == 0
    return folder, printed.getvalue()


@pytest.fixture(scope="session")
def sample_labels(sample_run: tuple[Path, str], sample_dir: Path) -> np.ndarray:
    """Default model's fp32 labels of the sample (internal labels, indexed like the T1ce array), cleaned up as its card
    says: the label map :func:`sample_run` stored."""
    path = sample_run[0] / "brain-tumor-seg-output" / f"{sample_dir.name}_seg.nii.gz"
    return from_convention(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), "brats2017")


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


@pytest.fixture(scope="session")
def tumor_block(tmp_path_factory, sample_dir: Path) -> Path:
    """The sample case cut to its tumor's bounding box plus 8 voxels on each side (66 x 97 x 83 voxels)."""
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(next(sample_dir.glob("*_seg.nii.gz"))))).transpose()  # (i, j, k)
    box = []
    for axis in range(3):
        extent = np.flatnonzero(truth.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(extent[0]) - 8, 0), int(extent[-1]) + 9))
    return copy_cropped(sample_dir, tmp_path_factory.mktemp("tumor-block") / sample_dir.name, tuple(box))
