"""The three outputs of `segment`: NIfTI labels, Slicer .seg.nrrd, volumes JSON; and the shipped model's Dice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from train_support import copy_cropped

from BrainTumorSeg.case import read_image, resolve_inputs
from BrainTumorSeg.cli import main
from BrainTumorSeg.export import STAGING_PREFIX, volumes_ml, write_outputs
from BrainTumorSeg.labels import SEGMENTS, from_convention
from BrainTumorSeg.metrics import region_dice
from BrainTumorSeg.models.ensemble import member_cards
from BrainTumorSeg.pipeline import segment_case


@pytest.fixture(scope="module")
def written(tmp_path_factory, sample_case, sample_labels):
    folder = tmp_path_factory.mktemp("outputs")
    paths = write_outputs(folder, "sample", sample_labels, sample_case.reference, "test-model", sample_case.sources, "brats2017")
    return folder, paths


def test_seg_nrrd_reads_back_with_names_colors_terminology_and_labels(written, sample_case, sample_labels):
    _, paths = written
    data, header = nrrd.read(str(paths["segmentation"]), index_order="C")
    np.testing.assert_array_equal(data, sample_labels)
    assert header["space"] == "left-posterior-superior"
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    expected = {
        "Necrotic and non-enhancing tumor core": (1, "0.847059 0.749020 0.847059", "SCT^6574001^Necrosis"),
        "Edema": (2, "0.549020 0.878431 0.894118", "SCT^79654002^Edema"),
        "Enhancing tumor": (3, "1.000000 0.690196 0.000000", "SCT^86049000^Neoplasm, Primary"),
    }
    found = {}
    for n in range(len(SEGMENTS)):
        tags = header[f"Segment{n}_Tags"]
        assert "SCT^49755003^Morphologically Altered Structure" in tags and "SCT^12738006^Brain" in tags
        code = tags.split("~")[2]
        found[header[f"Segment{n}_Name"]] = (int(header[f"Segment{n}_LabelValue"]), header[f"Segment{n}_Color"], code)
        extent = [int(v) for v in header[f"Segment{n}_Extent"].split()]
        mask = sample_labels == int(header[f"Segment{n}_LabelValue"])
        if mask.any():
            k, j, i = np.nonzero(mask)
            assert extent == [i.min(), i.max(), j.min(), j.max(), k.min(), k.max()]
    assert found == expected
    # SimpleITK (as Slicer, through ITK) sees the reference grid.
    image = sitk.ReadImage(str(paths["segmentation"]))
    reference = sample_case.reference
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def test_volumes_json_matches_voxel_counts(written, sample_case, sample_labels):
    _, paths = written
    info = json.loads(paths["volumes"].read_text())
    voxel_ml = float(np.prod(sample_case.reference.GetSpacing())) / 1000
    counts = np.bincount(sample_labels.ravel(), minlength=4)
    assert info["model"] == "test-model"
    assert info["inputs"] == sample_case.sources
    assert info["volumes_ml"]["edema"] == pytest.approx(counts[2] * voxel_ml, abs=1e-3)
    assert info["volumes_ml"]["WT"] == pytest.approx(counts[1:].sum() * voxel_ml, abs=1e-3)
    assert info["volumes_ml"]["TC"] == pytest.approx((counts[1] + counts[3]) * voxel_ml, abs=1e-3)
    assert info["volumes_ml"]["ET"] == pytest.approx(counts[3] * voxel_ml, abs=1e-3)
    assert info["labels"]["enhancing"]["value"] == 4
    assert volumes_ml(np.zeros((2, 2, 2), np.uint8), 1.0)["WT"] == 0.0


def test_brats2023_labels_on_request(tmp_path, cropped_sample, cropped_labels, capsys):
    out = tmp_path / "out2023"
    assert (
        main(["segment", "--input", str(cropped_sample), "--out", str(out), "--labels", "brats2023", "--precision", "fp32"]) == 0
    )
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{cropped_sample.name}_seg.nii.gz")))
    np.testing.assert_array_equal(from_convention(labels, "brats2023"), cropped_labels)
    assert 4 not in np.unique(labels) and 3 in np.unique(labels)
    assert json.loads((out / f"{cropped_sample.name}_volumes.json").read_text())["labels"]["enhancing"]["value"] == 3


def test_shipped_default_model_reaches_wt_dice_080_on_the_sample(sample_labels, sample_truth, default_card):
    dice = region_dice(sample_labels, sample_truth)
    assert dice["WT"] >= 0.80, dice
    networks = member_cards(default_card)  # 2D U-Nets on whole slices, the axial one among them
    assert {card.architecture for card in networks} == {"unet2d"}
    assert all(card.inference["mode"] == "slices" for card in networks)
    assert "axial" in [card.inference["axis"] for card in networks]


def test_sample_is_a_validation_case_of_the_default_model(sample_dir, default_card):
    for card in member_cards(default_card):
        split = card.training["split"]
        assert sample_dir.name in split["validation"]
        assert sample_dir.name not in split["train"]


def test_bf16_changes_fewer_than_1_percent_of_the_tumor(tumor_block, default_card, tmp_path):
    """bf16 autocast (used on CPUs with native bf16) against fp32: the default model on the middle 40 axial slices of
    the sample cut around its tumor (a CPU without native bf16 emulates it, nine times slower than fp32).
    Measured: 110 of 55 818 voxels change."""
    middle = read_image(next(tumor_block.glob("*_t1ce.nii.gz"))).GetSize()[2] // 2
    slab = copy_cropped(tumor_block, tmp_path / tumor_block.name, (slice(None), slice(None), slice(middle - 20, middle + 20)))
    case = resolve_inputs(slab)
    fp32 = segment_case(case, default_card, device="cpu", precision="fp32")
    bf16 = segment_case(case, default_card, device="cpu", precision="bf16")
    changed = np.count_nonzero(bf16 != fp32) / np.count_nonzero((bf16 > 0) | (fp32 > 0))
    assert changed < 0.01, changed


def test_cli_sample_run_prints_outputs_volumes_and_dice(sample_run):
    folder, printed = sample_run
    assert "brain-tumor-seg-output" in printed and "WT" in printed and "Dice against" in printed
    files = sorted(p.name for p in (folder / "brain-tumor-seg-output").iterdir())
    assert files == ["Brats18_CBICA_AQP_1.seg.nrrd", "Brats18_CBICA_AQP_1_seg.nii.gz", "Brats18_CBICA_AQP_1_volumes.json"]
    info = json.loads((folder / "brain-tumor-seg-output" / files[2]).read_text())
    # the default --out is relative; the JSON's paths still name the files from anywhere
    assert info["outputs"]["labels"] == str(folder / "brain-tumor-seg-output" / files[1])


def test_the_volumes_json_records_absolute_input_paths(tmp_path, monkeypatch, sample_case, sample_labels):
    monkeypatch.chdir(tmp_path)
    inputs = {"t1": "case/x_t1.nii.gz", "flair": "4d.nii.gz#0"}
    (tmp_path / "out").mkdir()
    write_outputs(Path("out"), "x", sample_labels, sample_case.reference, "test-model", inputs, "brats2017")
    info = json.loads((tmp_path / "out" / "x_volumes.json").read_text())
    assert info["inputs"] == {"t1": str(tmp_path / "case" / "x_t1.nii.gz"), "flair": str(tmp_path / "4d.nii.gz#0")}


def test_truth_file_finds_the_one_seg_file_and_names_the_folder_otherwise(sample_dir, tmp_path):
    from BrainTumorSeg.case import truth_file
    from BrainTumorSeg.errors import InputError

    assert truth_file(sample_dir).name == "Brats18_CBICA_AQP_1_seg.nii.gz"
    with pytest.raises(InputError) as error:
        truth_file(tmp_path)
    assert str(error.value) == f"{tmp_path}: expected one ground-truth file (*_seg or *-seg), found 0"


STAGE_AND_WAIT = """
import sys, time
from pathlib import Path
from BrainTumorSeg.export import staged_outputs
with staged_outputs(Path(sys.argv[1])) as staging:
    (staging / "sample_labels.nii.gz").write_bytes(b"half a file")
    print(staging.name, flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_staging_of_a_killed_run_is_removed_by_the_next_run_and_others_are_kept(tmp_path, sample_case, sample_labels):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))  # the package, wherever pytest runs

    def stage() -> tuple[subprocess.Popen, str]:
        command = [sys.executable, "-c", STAGE_AND_WAIT, str(tmp_path)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        return process, process.stdout.readline().strip()

    live, live_staging = stage()  # first: a run starting later would already remove the killed one's
    killed, killed_staging = stage()
    killed.send_signal(signal.SIGKILL)  # no cleanup of any kind
    killed.wait()
    foreign = tmp_path / f"{STAGING_PREFIX}otherhost-{killed.pid}-abc"  # another machine's, on a shared file system
    foreign.mkdir()
    unlocked = tmp_path / f"{killed_staging.rsplit('-', 1)[0]}-new"  # this machine's, its lock not made yet
    unlocked.mkdir()
    try:
        assert {p.name for p in tmp_path.iterdir()} == {killed_staging, live_staging, foreign.name, unlocked.name}
        write_outputs(tmp_path, "sample", sample_labels, sample_case.reference, "test-model", sample_case.sources, "brats2017")
        hidden = {p.name for p in tmp_path.iterdir() if p.name.startswith(".")}
        assert hidden == {live_staging, foreign.name, unlocked.name}  # only the killed run's is gone
    finally:
        live.kill()
        live.wait()
