"""Visual reports: slice choice, display orientation, the case PNG and the cohort HTML page."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from matplotlib.image import imread

from BrainTumorSeg.case import Case
from BrainTumorSeg.cli import main
from BrainTumorSeg.labels import SEGMENTS
from BrainTumorSeg.report import _plane_image, cohort_html, dice_boxplot_png, largest_tumor_slices, write_case_report


def test_slice_with_largest_tumor_area_in_each_plane():
    labels = np.zeros((20, 30, 40), np.uint8)
    labels[5:9, 10:14, 30] = 2  # 16 voxels in axial slice z=30
    labels[2:12, 20, 5:9] = 1  # 40 voxels in coronal slice y=20, 10 in each axial slice z=5..8
    # Sagittal slices x=5..8 hold 4 + 4 voxels, the other x only 4: the first of the largest wins.
    assert largest_tumor_slices(labels, labels > 0) == {"axial": 30, "coronal": 20, "sagittal": 5}
    brain = np.zeros_like(labels, bool)
    brain[4:10, 6:20, 10:31] = True
    assert largest_tumor_slices(np.zeros_like(labels), brain) == {"axial": 20, "coronal": 12, "sagittal": 6}


def test_display_is_radiological_with_superior_and_anterior_up():
    volume = np.zeros((10, 12, 14))  # canonical RAS: x toward Right, y Anterior, z Superior
    volume[9, 0, 0] = 1  # far right
    axial = _plane_image(volume, "axial", 0)
    assert axial.shape == (12, 10)  # rows = y, columns = x
    assert axial[0, 0] == 1  # patient's right on the viewer's left; posterior row 0 (drawn at the bottom)
    volume[:] = 0
    volume[0, 11, 13] = 1  # anterior, superior
    sagittal = _plane_image(volume, "sagittal", 0)
    assert sagittal.shape == (14, 12) and sagittal[13, 0] == 1  # anterior on the left, superior at the top row
    coronal = _plane_image(volume, "coronal", 11)
    assert coronal.shape == (14, 10) and coronal[13, 9] == 1  # the patient's left on the viewer's right


def synthetic_case(flip: bool) -> tuple[Case, np.ndarray]:
    """A 3D phantom with a 'tumor'; with ``flip`` the same anatomy stored with reversed i and k axes."""
    k, j, i = np.mgrid[0:24, 0:28, 0:32]
    head = ((i - 16) / 13.0) ** 2 + ((j - 14) / 11.0) ** 2 + ((k - 12) / 10.0) ** 2 < 1
    data = np.stack([head * (1.0 + 0.5 * m + 0.02 * i) for m in range(4)]).astype(np.float32)
    labels = np.zeros(head.shape, np.uint8)
    distance = np.sqrt((i - 21) ** 2 + (j - 11) ** 2 + (k - 12) ** 2)
    labels[distance < 6] = 2  # edema around an enhancing rim around necrosis
    labels[distance < 4] = 3
    labels[distance < 2.5] = 1
    reference = sitk.Image(32, 28, 24, sitk.sitkUInt8)
    reference.SetSpacing((1.0, 1.2, 2.0))
    if flip:
        data, labels = data[:, ::-1, :, ::-1].copy(), labels[::-1, :, ::-1].copy()
        reference.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
        reference.SetOrigin((31 * 1.0, 0.0, 23 * 2.0))
    return Case(reference, data), labels


def test_case_png_shows_the_segments_and_does_not_depend_on_storage_order(tmp_path):
    pictures = []
    for flip in (False, True):
        case, labels = synthetic_case(flip)
        path = write_case_report(tmp_path / f"r{flip}.png", case, labels, "phantom", "test-model")
        pictures.append(imread(str(path)))
    assert pictures[0].shape == (800, 1100, 4)
    np.testing.assert_array_equal(pictures[0], pictures[1])
    panels = (pictures[0][:740, :, :3] * 255).round()  # above the legend
    for segment in SEGMENTS:
        hits = (np.abs(panels - np.array(segment.color)).max(axis=-1) < 8).sum()
        assert hits > 100, segment.name  # its outline is drawn, also the necrosis' inside the enhancing rim


def test_segment_report_flag_writes_a_png_with_the_outputs(tmp_path, cropped_sample, tiny_models_dir, capsys):
    out = tmp_path / "out"
    args = ["segment", "--input", str(cropped_sample), "--out", str(out), "--models-dir", str(tiny_models_dir)]
    assert main([*args, "--model", "tiny-test", "--report"]) == 0
    name = cropped_sample.name
    assert imread(str(out / f"{name}_report.png")).shape == (800, 1100, 4)
    assert f"report        {out / f'{name}_report.png'}" in capsys.readouterr().out
    info = json.loads((out / f"{name}_volumes.json").read_text())
    assert info["outputs"]["report"] == str(out / f"{name}_report.png")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}_seg.nii.gz", f"{name}.seg.nrrd", f"{name}_volumes.json", f"{name}_report.png"]
    )


def rows(with_metrics: bool) -> list[dict]:
    out = []
    for n, (wt, tc, et) in enumerate([(0.9, 0.8, 0.7), (0.85, 0.6, 0.0), (0.95, 0.9, 1.0)]):
        row = {"case_id": f"case{n}", "status": "segmented", "WT_ml": 50.0 + n, "ET_ml": 5.0, "edema_ml": 20.0}
        if with_metrics:
            row.update(dice_WT=wt, dice_TC=tc, dice_ET=et, hd95_mm_WT=3.0, hd95_mm_TC=4.0, hd95_mm_ET=374.0)
        out.append(row)
    out.append({"case_id": "bad<case>", "status": "failed", "error": "x.nii.gz: file is truncated"})
    return out


def test_cohort_page_with_and_without_ground_truth(tmp_path):
    (tmp_path / "case0").mkdir()
    png = tmp_path / "case0" / "case0_report.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    table = rows(True)
    table[0]["report"] = str(png)
    page = cohort_html(table, tmp_path, "Cohort <A>")
    assert "<title>Cohort &lt;A&gt;</title>" in page and "bad&lt;case&gt;" in page
    assert "x.nii.gz: file is truncated" in page
    assert "src='case0/case0_report.png'" in page and page.count("class='thumb'") == 1
    assert "data:image/png;base64," in page  # the box plot
    assert "0.900 ± 0.050 (0.900)" in page  # Dice WT mean ± sd (median) in the summary
    assert "4 cases: 3 with results, 1 failed" in page
    plain = cohort_html(rows(False), tmp_path, "Cohort")
    assert "data:image/png" not in plain and "Dice" not in plain
    assert dice_boxplot_png(rows(False)) is None
    assert dice_boxplot_png(rows(True))[:4] == b"\x89PNG"
