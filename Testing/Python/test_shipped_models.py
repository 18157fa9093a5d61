"""Every model shipped in Resources/Models: a complete training record on the fixed split, strict weights, and a
real segmentation of the sample case's tumor that agrees with its ground truth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorSeg import pipeline
from BrainTumorSeg.case import read_image, resolve_inputs
from BrainTumorSeg.labels import from_convention
from BrainTumorSeg.metrics import region_dice
from BrainTumorSeg.models.card import ModelCard
from BrainTumorSeg.models.ensemble import member_cards
from BrainTumorSeg.pipeline import segment_case
from BrainTumorSeg.resources import resources_dir

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((resources_dir() / "Models").glob("*.json"))
SPLIT = json.loads((ROOT / "training" / "split.json").read_text())
SLAB = 12  # axial slices through the sample's tumor: enough for every 2D model's context
DENSE_SLAB = 2  # for Havaei's patch classifiers (each axial slice on its own; 3-8 s a slice here in fp32)
THICK_SLAB = 48  # for networks that see the slab's thickness: on coronal or sagittal slices (their height), or 3D


@pytest.fixture(scope="module")
def tumor_slab(tmp_path_factory, sample_dir: Path):
    """``tumor_slab(n)``: the sample case cut to ``n`` axial slices centred on its tumor (full in-plane field), and
    that slab's truth."""
    truth_path = next(sample_dir.glob("*_seg.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path)))  # (k, j, i); k is axial in BraTS volumes
    k = np.flatnonzero(truth.any(axis=(1, 2)))
    slabs: dict[int, tuple[Path, np.ndarray]] = {}

    def cut(slices: int) -> tuple[Path, np.ndarray]:
        if slices not in slabs:
            start = int((k[0] + k[-1]) // 2 - slices // 2)
            folder = tmp_path_factory.mktemp(f"slab{slices}") / sample_dir.name
            folder.mkdir()
            for path in sample_dir.glob("*.nii.gz"):
                sitk.WriteImage(read_image(path)[:, :, start : start + slices], str(folder / path.name))
            slabs[slices] = folder, from_convention(truth[start : start + slices], "brats2017")
        return slabs[slices]

    return cut


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_card_records_a_real_training_run_on_the_fixed_split(path: Path):
    """A network's card records its training on the split; an ensemble card ships its members (which do)."""
    card = ModelCard.read(path)
    validation = card.validation
    for network in member_cards(card):
        training = network.training
        assert network.path is not None and network.path.parent == path.parent  # an ensemble ships its members
        assert training["command"].split(" train ")[0].endswith("brain-tumor-seg"), training["command"]
        assert training["split"] == {"train": SPLIT["train"], "validation": SPLIT["validation"]}
        assert training["minutes"] > 0 and training["machine"]
        assert training["label_convention"] == "brats2017"  # BraTS 2018 files: 1 NCR/NET, 2 ED, 4 ET
        assert (path.parent / network.weights).is_file()
    assert card.training["split"] == {"train": SPLIT["train"], "validation": SPLIT["validation"]}
    assert validation["cases"] == len(SPLIT["validation"]) == len(validation["per_case"])
    assert set(validation["dice"]) == {"WT", "TC", "ET"} and validation["seconds_per_case"] > 0
    # the Dice were measured with the mirroring `segment` applies by default, so they describe what users get
    assert validation["flips"] == card.inference.get("flips", "none")


def slab_slices(card: ModelCard) -> int:
    """How many axial slices through the tumor the card's networks need to show what they do."""
    inferences = [network.inference for network in member_cards(card)]
    if any(sees_slab_thickness(inference) for inference in inferences):
        return THICK_SLAB
    return DENSE_SLAB if all(inference["mode"] == "dense" for inference in inferences) else SLAB


def sees_slab_thickness(inference: dict) -> bool:
    """A 3D network (its blocks span the slab) or a 2D one on coronal or sagittal slices."""
    if inference.get("spatial_dims") == 3:
        return True
    return inference["mode"] == "slices" and inference.get("axis", "axial") != "axial"


@pytest.fixture(scope="module")
def each_network_once():
    """Each network's probabilities computed once per input and settings in this module: the ensembles share members
    (the 3D SegResNet is in three cards, its own among them; the coronal U-Net in five), and a member's result does not
    depend on the card that names it. Each card still loads its networks' weights strictly, but an ensemble whose members
    all ran before only averages their results."""
    computed: dict[tuple, tuple[np.ndarray, object]] = {}
    predict_member = pipeline.predict_member

    def once(member, settings, volume, device, precision, progress):
        digest = hashlib.sha1(volume.tobytes()).hexdigest()
        key = (member.card.id, repr(sorted(settings.items())), str(device), precision, volume.shape, digest)
        if key not in computed:
            computed[key] = predict_member(member, settings, volume, device, precision, progress)
        probabilities, used = computed[key]
        return probabilities.copy(), used

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "predict_member", once)
        yield


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_model_segments_the_sample_tumor(path: Path, tumor_slab, each_network_once):
    card = ModelCard.read(path)
    folder, truth = tumor_slab(slab_slices(card))
    assert folder.name in SPLIT["validation"]  # the sample was never trained on
    labels = segment_case(resolve_inputs(folder), card, device="cpu", precision="fp32")  # strict weight loading
    dice = region_dice(labels, truth)
    assert dice["WT"] >= 0.75, dice
