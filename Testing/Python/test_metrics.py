"""BraTS metrics on hand-made volumes with known answers, label-convention detection, and `evaluate`."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorSeg.cli import main
from BrainTumorSeg.evaluation import CasePair, evaluate_pair, label_case_id, match_cases
from BrainTumorSeg.labels import ED, ET, NCR, detect_convention, to_convention
from BrainTumorSeg.metrics import EMPTY_HD95_MM, dice, hd95, mask_metrics, region_metrics, sensitivity, specificity


def cube(shape: tuple[int, int, int], start: tuple[int, int, int], size: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_empty_regions_follow_the_brats_2023_legacy_convention():
    empty = np.zeros((8, 8, 8), bool)
    some = cube((8, 8, 8), (2, 2, 2), 3)
    assert mask_metrics(empty, empty) == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0}
    missed = mask_metrics(empty, some)  # nothing predicted, tumor present
    assert (missed["dice"], missed["hd95"], missed["sensitivity"], missed["specificity"]) == (0.0, 374.0, 0.0, 1.0)
    invented = mask_metrics(some, empty)  # tumor predicted, none present
    assert (invented["dice"], invented["hd95"], invented["sensitivity"]) == (0.0, EMPTY_HD95_MM, 0.0)
    assert invented["specificity"] == pytest.approx(1 - 27 / 512)


def test_dice_sensitivity_specificity_known_counts():
    truth = np.zeros((10, 10, 10), bool)
    truth.flat[:100] = True
    prediction = np.zeros_like(truth)
    prediction.flat[20:120] = True  # 80 of the truth + 20 outside it
    assert dice(prediction, truth) == pytest.approx(2 * 80 / 200)
    assert sensitivity(prediction, truth) == pytest.approx(0.8)
    assert specificity(prediction, truth) == pytest.approx((900 - 20) / 900)


def test_hd95_between_two_voxels_uses_the_spacing_of_each_axis():
    a, b = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    a[2, 5, 5] = True
    b[6, 5, 8] = True  # 4 voxels along axis 0, 3 along axis 2
    assert hd95(a, b, spacing=(2.5, 1.0, 1.0)) == pytest.approx(math.hypot(10.0, 3.0))
    assert hd95(a, b, spacing=(1.0, 1.0, 2.0)) == pytest.approx(math.hypot(4.0, 6.0))


def test_hd95_is_the_larger_directed_95th_percentile_with_linear_interpolation():
    # One voxel A; twenty isolated voxels B at 2, 4, ..., 40 mm from it along one axis.
    a, b = np.zeros((3, 3, 45), bool), np.zeros((3, 3, 45), bool)
    a[1, 1, 0] = True
    b[1, 1, 2:41:2] = True
    # B -> A: distances 2..40; P95 by linear interpolation = 2 + 0.95 * 19 * 2 = 38.1. A -> B: 2.
    assert hd95(b, a) == pytest.approx(38.1)
    assert hd95(a, b) == pytest.approx(38.1)  # symmetric
    # Pooling both directions (as brats-evaluation does) would give a different value.
    assert np.percentile(np.r_[np.arange(2, 41, 2), 2.0], 95) != pytest.approx(38.1)


def test_hd95_of_a_shifted_cube_counts_faces_that_moved():
    truth = cube((30, 30, 30), (10, 10, 10), 8)
    assert hd95(truth, truth) == 0.0
    shifted = np.roll(truth, 3, axis=1)
    # The leading and trailing faces moved 3 voxels; side faces coincide where the cubes overlap.
    # No surface voxel is farther than 3 voxels from the other surface, so 3 voxels is the bound.
    value = hd95(shifted, truth)
    assert 1.0 <= value <= 3.0
    assert hd95(truth, shifted) == value
    assert hd95(shifted, truth, spacing=(2.0, 2.0, 2.0)) == pytest.approx(2 * value)
    assert 1.0 < hd95(shifted, truth, spacing=(1.0, 3.0, 1.0)) <= 9.0


def test_region_metrics_map_labels_to_wt_tc_et():
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:10, 2:10, 2:10] = 2  # edema
    truth[4:8, 4:8, 4:8] = 1  # core
    truth[5:7, 5:7, 5:7] = 3  # enhancing
    prediction = truth.copy()
    prediction[prediction == 3] = 1  # enhancing called necrosis
    scores = region_metrics(prediction, truth)
    assert scores["WT"]["dice"] == 1.0 and scores["TC"]["dice"] == 1.0
    assert scores["ET"]["dice"] == 0.0 and scores["ET"]["hd95"] == 374.0
    with pytest.raises(ValueError):
        region_metrics(prediction[:-1], truth)


def test_convention_detection():
    assert detect_convention(np.array([0, 1, 2, 4])) == "brats2017"
    assert detect_convention(np.array([0, 2, 3])) == "brats2023"
    assert detect_convention(np.array([0, 1, 2])) == "brats2017"  # ambiguous; both read 1 and 2 alike
    assert detect_convention(np.zeros(3, int)) == "brats2017"
    with pytest.raises(ValueError, match="both 3 and 4"):
        detect_convention(np.array([0, 3, 4]))
    with pytest.raises(ValueError, match=r"\[5\]"):
        detect_convention(np.array([0, 1, 5]))


def test_decathlon_label_maps_are_read_when_named(tmp_path):
    """MSD Task01 values (1 edema, 2 non-enhancing, 3 enhancing) look like brats2023's: named, they read right."""
    internal = np.zeros((16, 12, 10), np.uint8)
    internal[2:6, 2:6, 2:6], internal[3:5, 3:5, 3:5], internal[4, 4, 4] = ED, NCR, ET
    np.testing.assert_array_equal(to_convention(internal, "msd")[internal > 0], [(0, 2, 1, 3)[v] for v in internal[internal > 0]])
    truth = write_labels(tmp_path / "c1_seg.nii.gz", to_convention(internal, "msd"))
    prediction = write_labels(tmp_path / "c1.nii.gz", to_convention(internal, "brats2017"))
    row = evaluate_pair(CasePair("c1", prediction, truth), truth_labels="msd")
    assert row["truth_labels"] == "msd" and all(row[f"dice_{r}"] == 1.0 for r in ("WT", "TC", "ET"))


def test_case_ids_of_label_files():
    assert label_case_id(Path("Brats18_2013_2_1_seg.nii.gz")) == "Brats18_2013_2_1"
    assert label_case_id(Path("BraTS-GLI-00000-000-seg.nii.gz")) == "BraTS-GLI-00000-000"
    assert label_case_id(Path("BraTS-GLI-00000-000.nii.gz")) == "BraTS-GLI-00000-000"
    assert label_case_id(Path("case7_seg.nrrd")) == "case7"


def write_labels(path: Path, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), dtype=np.uint8) -> Path:
    image = sitk.GetImageFromArray(labels.astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 4.0, 2.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def test_evaluate_pair_reads_conventions_and_spacing_from_files(tmp_path):
    truth = np.zeros((16, 12, 10), np.uint8)
    truth[4, 6, 5] = 4  # one ET voxel, BraTS 2017 values
    prediction = np.zeros_like(truth)
    prediction[8, 6, 5] = 3  # 4 slices away along k, BraTS 2023 values
    # SimpleITK spacing is (i, j, k): 2.5 mm between slices.
    t = write_labels(tmp_path / "t" / "c1_seg.nii.gz", truth, spacing=(1.0, 1.0, 2.5))
    p = write_labels(tmp_path / "p" / "c1.nii.gz", prediction, spacing=(1.0, 1.0, 2.5), dtype=np.float32)
    row = evaluate_pair(CasePair("c1", p, t))
    assert (row["prediction_labels"], row["truth_labels"]) == ("brats2023", "brats2017")
    for region in ("WT", "TC", "ET"):
        assert row[f"hd95_mm_{region}"] == pytest.approx(10.0)
        assert row[f"dice_{region}"] == 0.0
    assert row["truth_ET_ml"] == pytest.approx(0.0025, abs=5e-4)  # mL, rounded to 3 decimals as the volumes JSON


def make_pair_folders(tmp_path: Path) -> tuple[Path, Path]:
    base = np.zeros((20, 20, 20), np.uint8)
    base[5:15, 5:15, 5:15] = 2
    base[8:12, 8:12, 8:12] = 4
    for case in ("A1", "B2"):
        write_labels(tmp_path / "truth" / case / f"{case}_seg.nii.gz", base)  # one folder per case, as BraTS
        write_labels(tmp_path / "truth" / case / f"{case}_t1.nii.gz", base * 10)  # a modality image: ignored
    pred = base.copy()
    pred[pred == 4] = 3  # BraTS 2023 values, same regions
    write_labels(tmp_path / "pred" / "A1_seg.nii.gz", pred)
    write_labels(tmp_path / "pred" / "B2_seg.nii.gz", np.where(base == 2, 0, pred).astype(np.uint8))  # edema missed
    return tmp_path / "pred", tmp_path / "truth"


def test_evaluate_command_writes_csv_and_summary(tmp_path, capsys):
    pred, truth = make_pair_folders(tmp_path)
    for kind in ("probabilities", "uncertainty"):  # what `segment --probabilities` writes beside a label map
        write_labels(pred / f"A1_{kind}.nii.gz", np.full((20, 20, 20), 0.5), dtype=np.float32)
    out = tmp_path / "eval.csv"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--csv", str(out)]) == 0
    rows = {row["case_id"]: row for row in csv.DictReader(out.open())}
    assert set(rows) == {"A1", "B2"}
    assert rows["A1"]["prediction_labels"] == "brats2023" and rows["A1"]["truth_labels"] == "brats2017"
    assert float(rows["A1"]["dice_WT"]) == 1.0 and float(rows["A1"]["hd95_mm_ET"]) == 0.0
    assert float(rows["B2"]["dice_TC"]) == 1.0
    assert float(rows["B2"]["dice_WT"]) == pytest.approx(2 * 64 / (64 + 1000))
    assert float(rows["B2"]["sensitivity_WT"]) == pytest.approx(64 / 1000)
    printed = capsys.readouterr().out
    assert "Evaluated 2 cases" in printed and "WT" in printed and "374" in printed


def test_evaluate_single_files_and_bad_inputs(tmp_path, capsys):
    pred, truth = make_pair_folders(tmp_path)
    out = tmp_path / "one.csv"
    assert (
        main(
            ["evaluate", "--pred", str(pred / "A1_seg.nii.gz"), "--truth", str(truth / "B2" / "B2_seg.nii.gz"), "--csv", str(out)]
        )
        == 0
    )
    assert len(list(csv.DictReader(out.open()))) == 1
    capsys.readouterr()

    # A prediction without ground truth.
    write_labels(pred / "C3_seg.nii.gz", np.zeros((20, 20, 20)))
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--csv", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"brain-tumor-seg: error: {truth}: no ground truth for case C3"]
    assert not (tmp_path / "x.csv").exists()
    (pred / "C3_seg.nii.gz").unlink()

    # A prediction on another grid.
    write_labels(pred / "A1_seg.nii.gz", np.zeros((20, 20, 19)))
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--csv", str(tmp_path / "x.csv")]) == 2
    assert "A1_seg.nii.gz: label map is 19x20x20 voxels" in capsys.readouterr().err

    # Values in no convention.
    write_labels(pred / "A1_seg.nii.gz", np.full((20, 20, 20), 7))
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--csv", str(tmp_path / "x.csv")]) == 2
    assert "label values [7]" in capsys.readouterr().err

    # An image given as a label map: the message stays one short line.
    write_labels(pred / "A1_seg.nii.gz", np.arange(8000).reshape(20, 20, 20), dtype=np.int16)
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--csv", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "label values [5, 6, 7, 8, 9, ... (7995 values; is this an image rather than a label map?)]" in err
    assert len(err) < 300 and "\n" not in err


def test_truth_cases_without_prediction_are_reported_not_evaluated(tmp_path):
    pred, truth = make_pair_folders(tmp_path)
    (pred / "B2_seg.nii.gz").unlink()
    pairs, unmatched = match_cases(pred, truth)
    assert [p.case_id for p in pairs] == ["A1"] and unmatched == ["B2"]
