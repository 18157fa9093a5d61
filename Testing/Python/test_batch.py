"""`batch`: shard arithmetic, per-case isolation, the cohort CSV, metrics, and resuming a killed run.

The cohort is made of real cases cropped to 128 x 160 x 100 voxels (SimpleITK slicing keeps their
geometry), and the model is a tiny untrained U-Net: these tests check the batch mechanics, not
segmentation quality.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorSeg.batch import DONE, FAILED, SEGMENTED, Shard, discover_cases, parse_shard
from BrainTumorSeg.cli import main
from BrainTumorSeg.errors import InputError
from BrainTumorSeg.evaluation import metric_columns
from BrainTumorSeg.export import write_outputs

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "brats"
MODEL_ID = "tiny-test"


@pytest.fixture(scope="module")
def models_dir(tiny_models_dir) -> Path:
    return tiny_models_dir


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, crop_case, cropped_sample) -> Path:
    """Three real cases, cropped, each in its folder with its ground truth, plus one broken case."""
    sources = [SHARED / "Brats18_2013_2_1", SHARED / "Brats18_CBICA_ABM_1"]
    if not all(s.is_dir() for s in sources):
        pytest.skip(f"shared BraTS data not found under {SHARED}")
    root = tmp_path_factory.mktemp("cohort")
    shutil.copytree(cropped_sample, root / cropped_sample.name)
    for source in sources:
        crop_case(source, root / source.name)
    broken = root / "Broken_case"  # a T1ce that is not an image, other sequences missing
    broken.mkdir()
    (broken / "Broken_case_t1ce.nii.gz").write_bytes(b"not an image")
    return root


def batch_args(cohort: Path, out: Path, models_dir: Path, *extra: str) -> list[str]:
    return ["batch", "--input", str(cohort), "--out", str(out), "--models-dir", str(models_dir), "--model", MODEL_ID, *extra]


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as stream:
        return {row["case_id"]: row for row in csv.DictReader(stream)}


def test_every_case_is_in_exactly_one_shard():
    for total in range(0, 13):
        ids = [f"case{n:02d}" for n in range(total)][::-1]  # order of discovery does not matter
        for count in range(1, 7):
            shards = [Shard(index, count).select(ids) for index in range(1, count + 1)]
            flat = [case for shard in shards for case in shard]
            assert sorted(flat) == sorted(ids)  # every case, none twice
            sizes = [len(shard) for shard in shards]
            assert max(sizes) - min(sizes) <= 1
    assert Shard(2, 3).select(["a", "b", "c", "d", "e"]) == ["b", "e"]
    assert parse_shard("2/3") == Shard(2, 3) and str(parse_shard("1/1")) == "1/1"
    for bad in ("0/3", "4/3", "1/0", "a/b", "3", "1/2/3"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_cohort_discovery_skips_hidden_folders_and_the_output(tmp_path):
    for name in ("b", "a", ".hidden", "out"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert list(discover_cases(tmp_path, exclude=tmp_path / "out")) == ["a", "b"]
    with pytest.raises(InputError, match="no case folders"):
        discover_cases(tmp_path / "a")


def test_bad_batch_arguments_are_one_line_errors(tmp_path, models_dir, capsys):
    assert main(batch_args(tmp_path / "missing", tmp_path / "out", models_dir)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"brain-tumor-seg: error: {tmp_path / 'missing'}: cohort folder not found"
    ]
    (tmp_path / "c" / "case1").mkdir(parents=True)
    assert main(batch_args(tmp_path / "c", tmp_path / "out", models_dir, "--shard", "3/2")) == 2
    assert capsys.readouterr().err.startswith("brain-tumor-seg: error: --shard: expected i/n with 1 <= i <= n")
    assert not (tmp_path / "out").exists()


def test_a_truth_folder_matching_no_case_is_an_error_and_one_matching_some_a_warning(cohort, models_dir, tmp_path, capsys):
    other = tmp_path / "truth"
    other.mkdir()
    shutil.copy(next((cohort / "Brats18_2013_2_1").glob("*_seg.nii.gz")), other / "Another_case_seg.nii.gz")
    out = tmp_path / "out"
    assert main(batch_args(cohort, out, models_dir, "--truth", str(other))) == 2
    expected = f"brain-tumor-seg: error: {other}: no ground truth for any case of the cohort (label maps are matched by case id)"
    assert capsys.readouterr().err.strip() == expected
    assert not out.exists()
    shutil.copy(next((cohort / "Brats18_2013_2_1").glob("*_seg.nii.gz")), other)
    assert main(batch_args(cohort, out, models_dir, "--truth", str(other), "--shard", "1/2")) == 0
    warning = f"brain-tumor-seg: warning: no ground truth in {other} for Brats18_CBICA_AQP_1"
    assert warning in capsys.readouterr().err.splitlines()
    assert main(batch_args(cohort, out, models_dir, "--truth", str(other), "--shard", "2/2")) == 1  # Broken_case fails
    warning = f"brain-tumor-seg: warning: no ground truth in {other} for Brats18_CBICA_ABM_1, Broken_case"
    assert warning in capsys.readouterr().err.splitlines()  # none in this shard, some in the cohort: a warning


def test_the_volumes_json_marking_a_finished_case_is_moved_into_place_last(tmp_path, monkeypatch):
    moved = []
    replace = os.replace

    def recording_replace(source, target):
        moved.append(Path(target).name)
        replace(source, target)

    monkeypatch.setattr("BrainTumorSeg.export.os.replace", recording_replace)
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 2:4, 2:5] = 3
    reference = sitk.Image(6, 5, 4, sitk.sitkUInt8)
    extras = {"report": ("z_report.png", lambda path: path.write_bytes(b"png"))}  # sorts after the JSON by name
    paths = write_outputs(tmp_path, "z", labels, reference, "model", {}, "brats2017", extras)
    assert moved[-1] == "z_volumes.json" and len(moved) == 4
    assert paths["report"].read_bytes() == b"png"
    assert json.loads(paths["volumes"].read_text())["outputs"]["report"] == str(tmp_path / "z_report.png")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def visible_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def assert_all_complete(out: Path) -> None:
    """Every visible file under ``out`` reads completely."""
    for path in visible_files(out):
        if path.name.endswith(".nii.gz"):
            assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).size > 0, path
        elif path.name.endswith(".seg.nrrd"):
            nrrd.read(str(path))
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            rows = list(csv.DictReader(path.open()))
            assert all(row["status"] in (SEGMENTED, DONE, FAILED) for row in rows)
        elif path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_isolates_a_failing_case_and_writes_volumes_and_metrics(cohort, models_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(batch_args(cohort, out, models_dir, "--truth", str(cohort))) == 1  # one case failed
    captured = capsys.readouterr()
    assert "brain-tumor-seg: Broken_case:" in captured.err
    assert "3 segmented, 0 already done, 1 failed" in captured.out
    rows = read_csv(out / "cohort.csv")
    assert rows["Broken_case"]["status"] == FAILED and "Broken_case" in rows["Broken_case"]["error"]
    assert not (out / "Broken_case").exists()
    good = [case for case in rows if case != "Broken_case"]
    assert len(good) == 3
    for case in good:
        row = rows[case]
        assert row["status"] == SEGMENTED and row["error"] == ""
        info = json.loads((out / case / f"{case}_volumes.json").read_text())
        for key, value in info["volumes_ml"].items():
            assert float(row[f"{key}_ml"]) == pytest.approx(value)
        assert row["truth"] == str(cohort / case / f"{case}_seg.nii.gz")
        assert float(row["truth_WT_ml"]) > 5  # the crop kept the tumor
    assert_all_complete(out)

    # The metrics are those `evaluate` computes from the written label maps (found by case id in the
    # per-case output folders) and the ground truth.
    csv_path = tmp_path / "evaluation.csv"
    assert main(["evaluate", "--pred", str(out), "--truth", str(cohort), "--csv", str(csv_path)]) == 0
    evaluated = read_csv(csv_path)
    assert set(evaluated) == set(good)
    for case in good:
        for column in [*metric_columns(), "truth_WT_ml", "truth_ET_ml"]:
            assert float(rows[case][column]) == pytest.approx(float(evaluated[case][column])), column


def test_batch_segments_each_case_exactly_as_segment_does(cohort, models_dir, tmp_path):
    """Each case's label map from `batch` (one process, the model loaded once) equals `segment`'s of that case."""
    out = tmp_path / "batch"
    assert main(batch_args(cohort, out, models_dir)) == 1  # Broken_case fails
    cases = [c for c in sorted(p.name for p in cohort.iterdir()) if c != "Broken_case"]
    maps = []
    for case in cases:
        single = tmp_path / case
        arguments = ["segment", "--input", str(cohort / case), "--out", str(single), "--models-dir", str(models_dir)]
        assert main([*arguments, "--model", MODEL_ID]) == 0
        batch_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / case / f"{case}_seg.nii.gz")))
        single_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(single / f"{case}_seg.nii.gz")))
        assert np.array_equal(batch_labels, single_labels), case
        assert np.count_nonzero(batch_labels) > 0, case
        maps.append(batch_labels.tobytes())
    assert len(set(maps)) == len(cases)  # three different label maps: no case got another's result


def test_a_finished_case_is_segmented_again_when_the_settings_or_wanted_outputs_changed(
    cohort, cropped_sample, models_dir, tmp_path, capsys
):
    """Resume counts a case as done only when its volumes JSON records this run's clean-up and inference settings
    and holds the outputs asked for; otherwise it says why and segments the case again."""
    one = tmp_path / "one"
    one.mkdir()
    (one / cropped_sample.name).symlink_to(cohort / cropped_sample.name)
    out = tmp_path / "out"
    case = cropped_sample.name

    def status(*extra: str) -> tuple[str, str]:
        capsys.readouterr()
        assert main(batch_args(one, out, models_dir, *extra)) == 0
        return read_csv(out / "cohort.csv")[case]["status"], capsys.readouterr().err

    assert status()[0] == SEGMENTED
    assert status()[0] == DONE
    again, said = status("--closing", "3")
    assert again == SEGMENTED and f"{case}: segmented earlier with another clean-up; segmenting again" in said
    again, said = status("--closing", "3", "--probabilities")
    assert again == SEGMENTED and "segmented earlier with no probabilities or uncertainty; segmenting again" in said
    assert status("--closing", "3")[0] == DONE  # probabilities not asked for: the ones there do no harm
    again, said = status("--closing", "3", "--tta", "x")
    assert again == SEGMENTED and "segmented earlier with other inference settings; segmenting again" in said
    info = json.loads((out / case / f"{case}_volumes.json").read_text())
    assert info["postprocess"]["closing"] == 3 and info["inference"][0]["flips"] == "x"
    assert info["device"] == "cpu" and info["precision"] in ("bfloat16", "fp32") and info["version"]
    assert info["resampled"] == {}  # the four sequences share the T1ce grid

    # A volumes JSON of an older version, without inference settings: done, unless this run overrides them.
    marker = out / case / f"{case}_volumes.json"
    marker.write_text(json.dumps({k: v for k, v in info.items() if k != "inference"}))
    assert status("--closing", "3")[0] == DONE
    again, said = status("--closing", "3", "--tta", "x")
    assert again == SEGMENTED and "segmented earlier with other inference settings (not recorded)" in said

    # The output folder moved elsewhere: finished cases are still found, and scored from their label maps.
    moved = tmp_path / "moved"
    out.rename(moved)
    capsys.readouterr()
    assert main(batch_args(one, moved, models_dir, "--closing", "3", "--tta", "x", "--truth", str(one))) == 0
    row = read_csv(moved / "cohort.csv")[case]
    assert row["status"] == DONE and row["error"] == "" and 0 <= float(row["dice_WT"]) <= 1


def test_killed_run_resumes_without_redoing_finished_cases(cohort, models_dir, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "BrainTumorSeg.cli", *batch_args(cohort, out, models_dir)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = "Brats18_2013_2_1"  # the first case id in sorted order
    marker = out / first / f"{first}_volumes.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()  # SIGKILL: no cleanup of any kind
    process.wait()
    assert marker.exists(), "the first case never finished"
    assert process.returncode == -9, "the run ended before it could be killed"
    assert_all_complete(out)
    unfinished = [c for c in ("Brats18_CBICA_ABM_1", "Brats18_CBICA_AQP_1") if not (out / c / f"{c}_volumes.json").exists()]
    assert unfinished, "the kill came too late to interrupt the run"
    for case in unfinished:  # nothing visible that would pass for a result
        assert not (out / case / f"{case}_volumes.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (out / first).iterdir()}

    assert main(batch_args(cohort, out, models_dir)) == 1  # Broken_case still fails
    rows = read_csv(out / "cohort.csv")
    assert rows[first]["status"] == DONE
    assert all(rows[case]["status"] == SEGMENTED for case in unfinished)
    assert {p: p.stat().st_mtime_ns for p in (out / first).iterdir()} == stamps  # untouched
    assert [p for p in out.rglob(".*")] == []  # staging folders and temporary files of the killed run are gone
    assert_all_complete(out)

    # A third run has nothing left to segment; asking for reports draws them from the saved label maps.
    assert main(batch_args(cohort, out, models_dir, "--report", "--truth", str(cohort))) == 1
    rows = read_csv(out / "cohort.csv")
    good = [c for c in rows if c != "Broken_case"]
    assert {rows[c]["status"] for c in good} == {DONE}
    assert (out / first / f"{first}_seg.nii.gz").stat().st_mtime_ns == stamps[out / first / f"{first}_seg.nii.gz"]
    page = (out / "report.html").read_text()
    assert page.count("class='thumb'") == 3 and "data:image/png;base64," in page and "Broken_case" in page
    for case in good:
        assert (out / case / f"{case}_report.png").read_bytes()[:4] == b"\x89PNG"
        assert f"src='{case}/{case}_report.png'" in page

    # Shards of the finished cohort: each CSV holds exactly its own cases. Shard 1 asks for other
    # output labels, so its finished cases no longer count as finished and are segmented again.
    main(batch_args(cohort, out, models_dir, "--shard", "1/2", "--labels", "brats2023"))
    main(batch_args(cohort, out, models_dir, "--shard", "2/2"))
    shard1, shard2 = read_csv(out / "cohort-shard-1-of-2.csv"), read_csv(out / "cohort-shard-2-of-2.csv")
    assert list(shard1) == ["Brats18_2013_2_1", "Brats18_CBICA_AQP_1"]
    assert list(shard2) == ["Brats18_CBICA_ABM_1", "Broken_case"]
    assert shard1[first]["status"] == SEGMENTED and shard2["Brats18_CBICA_ABM_1"]["status"] == DONE
    assert json.loads(marker.read_text())["label_convention"] == "brats2023"


def test_a_warning_about_a_case_s_inputs_is_kept_in_its_row_json_and_page(cropped_sample, models_dir, tmp_path, caplog):
    """A cohort is reviewed from its files, not its stderr: a case that does not look skull-stripped (the cropped sample
    stored at 3 mm voxels fills about 4.5 L) says so in cohort.csv, its volumes JSON and the HTML page."""
    case = tmp_path / "cohort" / "Wide_case"
    case.mkdir(parents=True)
    for path in cropped_sample.glob("*.nii.gz"):
        image = sitk.ReadImage(str(path))
        image.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(image, str(case / path.name.replace(cropped_sample.name, "Wide_case")))
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert main(batch_args(case.parent, out, models_dir, "--report")) == 0
    warning = json.loads((out / "Wide_case" / "Wide_case_volumes.json").read_text())["warnings"]
    assert len(warning) == 1 and "more than a skull-stripped brain" in warning[0]
    assert caplog.messages == [f"brain-tumor-seg: warning: {warning[0]}"]  # on stderr in a shell
    assert read_csv(out / "cohort.csv")["Wide_case"]["warnings"] == warning[0]
    assert "<div class='warning'>" in (out / "report.html").read_text()
