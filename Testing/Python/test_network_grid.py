"""The networks' grid (network_grid): a case at another spacing runs at the models' training spacing, and every
output lands on the case's own grid."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorSeg.case import Case
from BrainTumorSeg.errors import InputError
from BrainTumorSeg.geometry import physical_bounds, same_grid
from BrainTumorSeg.metrics import region_dice
from BrainTumorSeg.models.card import ModelCard, available_models
from BrainTumorSeg.network_grid import (
    canonical_spacing,
    canonical_to_case,
    needs_resampling,
    network_reference,
    network_spacing,
    resample_case,
)
from BrainTumorSeg.pipeline import Member, RunOptions, segment
from BrainTumorSeg.preprocess import Crop, prepare_case


def thick_slice_sample(case: Case, truth: np.ndarray) -> tuple[Case, np.ndarray]:
    """The real sample case with 3 mm axial slices (its sequences linearly, its truth by nearest neighbour), as a scan
    with thick slices comes; the BraTS sample is stored LPS, so SimpleITK's third axis is the axial one."""
    size = [240, 240, 52]
    spacing = (1.0, 1.0, 3.0)
    reference = case.reference

    def resampled(array: np.ndarray, interpolator: int) -> np.ndarray:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        out = sitk.Resample(image, size, sitk.Transform(), interpolator, reference.GetOrigin(), spacing, reference.GetDirection())
        return sitk.GetArrayFromImage(out)

    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetOrigin(reference.GetOrigin())
    grid.SetDirection(reference.GetDirection())
    data = np.stack([resampled(channel, sitk.sitkLinear) for channel in case.data])
    return Case(grid, data), resampled(truth, sitk.sitkNearestNeighbor)


def test_a_case_with_thick_slices_runs_at_the_training_spacing_and_gets_labels_on_its_own_grid(
    sample_case, sample_truth, unet_card, unet_network
):
    case, truth = thick_slice_sample(sample_case, sample_truth)
    options = RunOptions("cpu", "fp32")
    result = segment(case, [Member(unet_card, unet_network)], replace(options, probabilities=True))
    assert result.labels.shape == truth.shape == (52, 240, 240)
    assert result.network_spacing == [1.0, 1.0, 1.0]
    assert result.probabilities.shape == (4, 52, 240, 240)  # on the case's grid too, a distribution in every voxel
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-4)
    assert (result.probabilities[0][~case.brain] == 1).all()
    at_one_mm = region_dice(result.labels, truth)
    unaware = replace(unet_card, inputs={k: v for k, v in unet_card.inputs.items() if k != "spacing_mm"})
    as_stored = segment(case, [Member(unaware, unet_network)], options)
    assert as_stored.network_spacing == [1.0, 1.0, 3.0]  # (a card without spacing_mm: the network sees the 3 mm slices)
    on_thick_slices = region_dice(as_stored.labels, truth)
    assert at_one_mm["TC"] >= on_thick_slices["TC"] + 0.05, (at_one_mm, on_thick_slices)
    assert at_one_mm["WT"] >= 0.88 and at_one_mm["TC"] >= 0.8, at_one_mm


def test_resampling_to_the_case_s_own_spacing_changes_nothing(sample_case):
    same = resample_case(sample_case, tuple(canonical_spacing(sample_case.reference)))
    assert same_grid(same.reference, sample_case.reference)
    np.testing.assert_array_equal(same.data, sample_case.data)
    crop = prepare_case(sample_case).crop  # canonical, of an LPS-stored case: the flips of x and y map its box
    field = np.random.default_rng(0).random((3, *(b - a for a, b in crop.box)), dtype=np.float32)
    np.testing.assert_allclose(canonical_to_case(field, same, crop, sample_case, crop), field, atol=1e-6)
    inner = Crop(tuple((a + 3, b - 2) for a, b in crop.box), crop.full_shape)  # another crop: the shared part agrees
    shifted = canonical_to_case(field, same, crop, sample_case, inner)
    np.testing.assert_allclose(shifted, field[:, 3:-2, 3:-2, 3:-2], atol=1e-6)


def test_the_network_grid_keeps_direction_and_physical_box_and_maps_spacing_to_anatomical_axes():
    """An oblique image whose index axes run along S, R and A (in that order), flipped, at 3 x 0.5 x 0.8 mm."""
    reference = sitk.Image(40, 300, 200, sitk.sitkUInt8)
    reference.SetSpacing((3.0, 0.5, 0.8))
    angle = np.deg2rad(10)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    axes = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float).T  # columns (LPS): i -> S, j -> R (-x), k -> A (-y)
    reference.SetDirection((turn @ axes).ravel().tolist())
    reference.SetOrigin((12.0, -30.0, 7.5))
    assert canonical_spacing(reference).tolist() == [0.5, 0.8, 3.0]  # x (R), y (A), z (S)
    grid = network_reference(reference, (1.0, 2.0, 1.5))
    assert canonical_spacing(grid).tolist() == [1.0, 2.0, 1.5]
    assert grid.GetSize() == (80, 150, 80)
    np.testing.assert_allclose(grid.GetDirection(), reference.GetDirection())
    for ours, theirs in zip(physical_bounds(grid), physical_bounds(reference), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_spacing_close_to_the_training_spacing_is_left_alone():
    reference = sitk.Image(8, 8, 8, sitk.sitkUInt8)
    reference.SetSpacing((0.9375, 0.9375, 1.0))
    assert not needs_resampling(reference, (1.0, 1.0, 1.0))
    assert not needs_resampling(reference, None)
    reference.SetSpacing((0.5, 0.5, 1.0))
    assert needs_resampling(reference, (1.0, 1.0, 1.0))


def test_models_trained_at_different_spacings_cannot_share_a_grid(unet_card):
    fine = replace(unet_card, id="fine", inputs={**unet_card.inputs, "spacing_mm": [0.5, 0.5, 0.5]})
    anywhere = replace(unet_card, id="anywhere", inputs={k: v for k, v in unet_card.inputs.items() if k != "spacing_mm"})
    close = replace(unet_card, id="close", inputs={**unet_card.inputs, "spacing_mm": [0.9375, 0.9375, 1.0]})
    assert network_spacing([unet_card, anywhere]) == (1.0, 1.0, 1.0)
    assert network_spacing([unet_card, close]) == (1.0, 1.0, 1.0)  # within the tolerance: one grid
    assert network_spacing([anywhere]) is None
    with pytest.raises(InputError) as error:
        network_spacing([unet_card, anywhere, fine])
    assert str(error.value) == (
        f"--model: the models were trained at different spacings ({unet_card.id} [1.0, 1.0, 1.0]; fine [0.5, 0.5, 0.5] mm): "
        "run them separately"
    )


@pytest.mark.parametrize("spacing", [1, [1, 1], [0, 1, 1], [1, "1", 1]])
def test_a_card_with_a_malformed_spacing_is_a_one_line_error(spacing, tmp_path):
    raw = json.loads(available_models()["unet2d-axial"].path.read_text())
    raw["inputs"]["spacing_mm"] = spacing
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError) as error:
        ModelCard.read(path)
    assert str(error.value) == f"{path}: inputs.spacing_mm must be three positive numbers (mm along x, y, z), not {spacing!r}"


def test_every_shipped_network_card_says_its_training_spacing():
    cards = [card for card in available_models().values() if not card.is_ensemble]
    assert cards and all(card.inputs.get("spacing_mm") == [1.0, 1.0, 1.0] for card in cards)  # BraTS 2018: 1 mm
