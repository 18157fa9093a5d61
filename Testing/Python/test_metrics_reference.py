"""Our Dice and HD95 against independent implementations, on real BraTS cases with perturbed labels.

- MONAI (``compute_dice``, ``compute_hausdorff_distance(percentile=95)``): the same definitions;
  Dice to 1e-6 and HD95 to 0.5 mm (they agree to float32 rounding).
- DeepMind ``surface_distance`` (the BraTS 2023 reference code's HD95): area-weighted surface
  elements, so only close (1 mm) and only on smooth perturbations; see ``metrics.hd95``.
- ``brats-evaluation`` (panoptica, BraTS 2024+), when installed: identical Dice, and its HD95 is the
  pooled 95th percentile of our own surface distances. It pins numpy < 2.3, which conflicts with this
  project's environment (numpy 2.4), so it is not a test dependency and the test is skipped without it.

To keep this fast, each case is cropped to the tumor's bounding box plus 12 voxels before it is
perturbed; both implementations see the same cropped arrays. Cropping changes no value: Dice,
sensitivity and HD95 only involve tumor voxels and their face neighbours, all inside the box, and
distances between voxel centres do not depend on where the array ends. (Specificity would change,
since it counts background voxels, and is not compared here.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from BrainTumorSeg.case import read_image
from BrainTumorSeg.labels import from_convention, region_masks, to_convention
from BrainTumorSeg.metrics import bounding_box, dice, hd95, surface_distances

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "brats"
CASES = ("Brats18_2013_2_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA10_628_1")
FACES = ndimage.generate_binary_structure(3, 1)


def perturbations(truth: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Predictions made from the truth (internal labels): grown, shrunk, moved, and with scattered holes."""
    out = {}
    grown = truth.copy()
    grown[(truth == 0) & ndimage.binary_dilation(truth > 0, FACES, iterations=2)] = 2  # edema grows by 2 voxels
    out["dilate"] = grown
    core = np.isin(truth, (1, 3))
    shrunk = truth.copy()
    shrunk[core & ~ndimage.binary_erosion(core, FACES, iterations=2)] = 2  # core shrinks by 2 voxels
    out["erode"] = shrunk
    out["shift"] = np.roll(truth, (2, -3, 1), axis=(0, 1, 2))
    holes = truth.copy()
    holes[(np.random.default_rng(seed).random(truth.shape) < 0.02) & (truth > 0)] = 0
    out["holes"] = holes
    return out


@pytest.fixture(scope="module")
def cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, prediction, truth) in internal labels, several per real case."""
    if not all((DATA / c).is_dir() for c in CASES):
        pytest.skip(f"shared BraTS data not found under {DATA}")
    out = []
    for seed, case in enumerate(CASES):
        image = read_image(DATA / case / f"{case}_seg.nii.bz2")
        assert image.GetSpacing() == (1.0, 1.0, 1.0)
        truth = from_convention(sitk.GetArrayFromImage(image), "brats2017")
        truth = np.ascontiguousarray(truth[bounding_box(truth > 0, margin=12)])
        out += [(f"{case}/{name}", prediction, truth) for name, prediction in perturbations(truth, seed).items()]
    return out


def region_pairs(cases):
    """Every (name, region, prediction mask, truth mask) where both masks are non-empty and differ."""
    for name, prediction, truth in cases:
        pred, true = region_masks(prediction), region_masks(truth)
        for region in pred:
            if pred[region].any() and true[region].any() and not np.array_equal(pred[region], true[region]):
                yield f"{name}/{region}", pred[region], true[region]


def test_dice_and_hd95_match_monai(cases):
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    torch.set_num_threads(1)
    compared = 0
    for name, pred, true in region_pairs(cases):
        y_pred = torch.from_numpy(pred[None, None].astype(np.float32))
        y = torch.from_numpy(true[None, None].astype(np.float32))
        assert dice(pred, true) == pytest.approx(float(compute_dice(y_pred, y, include_background=True)), abs=1e-6), name
        for spacing in ((1.0, 1.0, 1.0), (2.0, 1.2, 0.9)):  # the real one, and an anisotropic one
            theirs = float(compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=list(spacing)))
            assert hd95(pred, true, spacing) == pytest.approx(theirs, abs=1e-3), (name, spacing)  # in fact float32-equal
        compared += 1
    assert compared >= 24


def test_hd95_close_to_the_brats_2023_reference_on_smooth_differences(cases):
    sd = pytest.importorskip("surface_distance")
    compared = 0
    for name, pred, true in region_pairs(cases):
        if name.split("/")[1] == "holes":  # scattered holes: area weighting differs by design (metrics.hd95)
            continue
        reference = sd.compute_robust_hausdorff(sd.compute_surface_distances(true, pred, (1.0, 1.0, 1.0)), 95)
        assert hd95(pred, true) == pytest.approx(reference, abs=1.0), name
        compared += 1
    assert compared >= 15


def test_matches_official_brats_evaluation(cases, tmp_path):
    pytest.importorskip("brats_evaluation")
    from brats_evaluation import config_path
    from panoptica import Panoptica_Evaluator

    evaluator = Panoptica_Evaluator.load_from_config(str(config_path("gli")))
    for name, prediction, truth in cases[:4]:
        files = {}
        for kind, labels in (("pred", prediction), ("truth", truth)):
            files[kind] = tmp_path / f"{name.replace('/', '_')}_{kind}.nii.gz"
            sitk.WriteImage(sitk.GetImageFromArray(to_convention(labels, "brats2023")), str(files[kind]))
        results = evaluator.evaluate(str(files["pred"]), str(files["truth"]))
        pred, true = region_masks(prediction), region_masks(truth)
        for region in ("WT", "TC", "ET"):
            theirs = results[region.lower()].to_dict(True)
            assert dice(pred[region], true[region]) == pytest.approx(theirs["global_bin_dsc"], abs=1e-6), name
            if pred[region].any() and true[region].any() and not np.array_equal(pred[region], true[region]):
                to_truth, to_pred = surface_distances(pred[region], true[region])
                assert np.percentile(np.hstack((to_truth, to_pred)), 95) == pytest.approx(theirs["global_bin_hd95"], abs=1e-6)
                assert hd95(pred[region], true[region]) >= theirs["global_bin_hd95"] - 1e-9
