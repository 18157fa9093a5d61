"""Output label maps land on the input's exact grid, whatever the input's orientation.

Three versions of the real sample case (cropped around its tumor): as stored (LPS), the same voxels re-stored
in RAS order, and the stored voxels under an oblique direction matrix. The network
sees the same canonical array in all three, so the label maps must map back onto
each other voxel for voxel.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorSeg.case import MODALITIES, resolve_inputs
from BrainTumorSeg.cli import main
from BrainTumorSeg.geometry import Reorientation
from BrainTumorSeg.preprocess import prepare, prepare_oriented


def assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


def ras_copy(image: sitk.Image) -> sitk.Image:
    """The same voxels stored with i running toward Right and j toward Anterior (the image is LPS-stored)."""
    array = sitk.GetArrayFromImage(image)[:, ::-1, ::-1]
    size = image.GetSize()
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(image.GetSpacing())
    out.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    out.SetOrigin(image.TransformIndexToPhysicalPoint((size[0] - 1, size[1] - 1, 0)))
    return out


def oblique_copy(image: sitk.Image, degrees: float = 12.0) -> sitk.Image:
    """The same voxel array under a direction matrix rotated about two axes."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    direction = rot_z @ rot_x @ np.asarray(image.GetDirection()).reshape(3, 3)
    out = sitk.Image(image)
    out.SetDirection(direction.ravel().tolist())
    return out


def write_case(folder: Path, sample_dir: Path, transform, extension: str = ".nii.gz", only: str | None = None) -> Path:
    """The sample's four sequences written to ``folder`` after ``transform`` (to all, or to the ``only`` one)."""
    folder.mkdir()
    for modality in MODALITIES:
        image = sitk.ReadImage(str(next(sample_dir.glob(f"*_{modality}.nii.gz"))))
        sitk.WriteImage(transform(image) if only in (None, modality) else image, str(folder / f"copy_{modality}{extension}"))
    return folder


def test_stored_lps_output_has_the_reference_grid(tmp_path, cropped_sample, cropped_labels, capsys):
    """The sample cropped around its tumor: a real volume whose origin is not the scanner's corner."""
    out = tmp_path / "out"
    assert main(["segment", "--input", str(cropped_sample), "--out", str(out), "--precision", "fp32"]) == 0
    reference = sitk.ReadImage(str(next(cropped_sample.glob("*_t1ce.nii.gz"))))
    written = sitk.ReadImage(str(out / f"{cropped_sample.name}_seg.nii.gz"))
    assert_same_grid(written, reference)
    labels = sitk.GetArrayFromImage(written)
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    np.testing.assert_array_equal(labels, np.array([0, 1, 2, 4], np.uint8)[cropped_labels])


@pytest.mark.parametrize("kind, extension", [("ras", ".nii.gz"), ("oblique", ".nrrd")])
def test_reoriented_copies_map_back_voxel_for_voxel(tmp_path, cropped_sample, cropped_labels, kind, extension):
    """Through the command: both written label files are on the copy's grid and hold the stored case's labels."""
    transform = ras_copy if kind == "ras" else oblique_copy
    folder = write_case(tmp_path / kind, cropped_sample, transform, extension)
    case = resolve_inputs(folder)
    assert case.resampled == []  # one grid for all four: nothing is resampled
    stored = sitk.ReadImage(str(folder / f"copy_t1ce{extension}"))
    assert_same_grid(case.reference, stored)
    out = tmp_path / "out"
    assert main(["segment", "--input", str(folder), "--out", str(out), "--precision", "fp32", "--device", "cpu"]) == 0
    for name in (f"{kind}_seg.nii.gz", f"{kind}.seg.nrrd"):
        written = sitk.ReadImage(str(out / name))
        assert_same_grid(written, stored)
        values = sitk.GetArrayFromImage(written)
        labels = np.searchsorted([0, 1, 2, 4], values) if name.endswith(".nii.gz") else values  # .seg.nrrd: internal
        back = labels[:, ::-1, ::-1] if kind == "ras" else labels
        np.testing.assert_array_equal(back, cropped_labels)
    assert cropped_labels.any()


def test_reorientation_is_a_permutation_even_at_45_degrees(sample_dir):
    image = sitk.ReadImage(str(next(sample_dir.glob("*_t1ce.nii.gz"))))
    tilted = oblique_copy(image, degrees=45.0)
    orientation = Reorientation.of(tilted)
    assert sorted(orientation.source_axis) == [0, 1, 2]
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(orientation.from_canonical(orientation.to_canonical(array)), array)


def test_lps_stored_brats_is_flipped_in_x_and_y_to_reach_ras(sample_case):
    orientation = Reorientation.of(sample_case.reference)
    assert orientation.source_axis == (2, 1, 0)
    assert orientation.flip == (True, True, False)


def test_volumes_on_another_grid_are_resampled_in_physical_space(tmp_path, sample_dir, sample_case):
    """A T2 stored at 2 mm spacing over the same field of view is resampled back onto the T1ce grid."""

    def coarse(image: sitk.Image) -> sitk.Image:
        spacing = [s * 2 for s in image.GetSpacing()]
        size = [s // 2 for s in image.GetSize()]
        origin = image.TransformContinuousIndexToPhysicalPoint((0.5, 0.5, 0.5))
        return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, image.GetDirection(), 0.0)

    folder = write_case(tmp_path / "mixed", sample_dir, coarse, only="t2")
    case = resolve_inputs(folder)
    assert case.resampled == ["t2"] and case.coverage["t2"] > 0.99  # the whole brain, no warning
    assert_same_grid(case.reference, sample_case.reference)
    t2 = MODALITIES.index("t2")
    original, resampled = sample_case.data[t2], case.data[t2]
    brain = original > 0
    # Down- then up-sampling blurs, but voxels must stay where they were: strong correlation inside the brain.
    assert np.corrcoef(original[brain], resampled[brain])[0, 1] > 0.9


def test_a_sequence_covering_part_of_the_brain_is_used_with_a_warning(tmp_path, sample_dir, caplog):
    """A T1 cut to the upper half of the head is zero-filled below; the user is told how much of the brain it covers."""

    def upper_half(image: sitk.Image) -> sitk.Image:  # a smaller field of view
        return image[:, :, image.GetSize()[2] // 2 :]

    folder = write_case(tmp_path / "partial", sample_dir, upper_half, only="t1")
    with caplog.at_level("WARNING"):
        case = resolve_inputs(folder)
    assert case.resampled == ["t1"] and 0.2 < case.coverage["t1"] < 0.8
    expected = f"covers only {100 * case.coverage['t1']:.0f}% of the T1ce volume's non-zero voxels; the rest is read as empty"
    assert f"{folder / 'copy_t1.nii.gz'}: {expected}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert resolve_inputs(sample_dir).coverage == {}  # one grid: nothing resampled, nothing to say
    assert caplog.text == ""


def noisy_background(image: sitk.Image) -> sitk.Image:
    """Scanner noise instead of zeros around the head."""
    noise = np.random.default_rng(0).integers(1, 20, sitk.GetArrayViewFromImage(image).shape, dtype=np.int16)
    out = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) + noise)
    out.CopyInformation(image)
    return out


def skull_around_the_brain(image: sitk.Image) -> sitk.Image:
    """A bright 12 mm shell around the brain with the air kept at zero, as some clinical exports store a whole head."""
    brain = sitk.GetArrayFromImage(image) != 0
    head = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(brain.astype(np.uint8)), [12, 12, 12]))
    array = sitk.GetArrayFromImage(image)
    array[(head > 0) & ~brain] = 600
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


@pytest.mark.parametrize("head", [noisy_background, skull_around_the_brain], ids=["noise", "skull"])
def test_a_t1ce_that_is_not_skull_stripped_gets_a_warning_that_is_kept(head, tmp_path, sample_dir, caplog):
    """Named on stderr and kept in the case for the outputs; the real sample gets none (the test above)."""
    folder = write_case(tmp_path / "head", sample_dir, head, only="t1ce")
    with caplog.at_level("WARNING"):
        case = resolve_inputs(folder)
    pattern = (
        rf"{re.escape(str(folder / 'copy_t1ce.nii.gz'))}: its non-zero voxels fill \d+\.\d L \(\d+% of the volume\), "
        r"more than a skull-stripped brain \(BraTS: 1\.1-1\.8 L\); the models expect skull-stripped, co-registered "
        r"sequences with a zero background, as BraTS provides them"
    )
    assert len(case.warnings) == 1 and re.fullmatch(pattern, case.warnings[0]), case.warnings
    assert caplog.messages == [f"brain-tumor-seg: warning: {case.warnings[0]}"]


def test_every_stored_voxel_type_reads_as_its_float32_values(tmp_path, sample_dir, sample_case):
    """Volumes stored as uint8, float64, int16 (the sample's) and uint16 come into the case as exactly their values in
    float32, each on its channel; the uint16 T2 is also on another grid (resampled, as above)."""
    folder = tmp_path / "types"
    folder.mkdir()
    stored = {"t1": sitk.sitkUInt8, "t1ce": sitk.sitkInt16, "t2": sitk.sitkUInt16, "flair": sitk.sitkFloat64}
    expected = {}
    for modality in MODALITIES:
        image = sitk.ReadImage(str(next(sample_dir.glob(f"*_{modality}.nii.gz"))))
        if modality == "t1":
            image = sitk.RescaleIntensity(image, 0, 255)
        image = sitk.Cast(image, stored[modality])
        if modality == "t2":  # shifted by half a voxel: resampled onto the T1ce grid
            image.SetOrigin(image.TransformContinuousIndexToPhysicalPoint((0.5, 0.5, 0.5)))
        sitk.WriteImage(image, str(folder / f"types_{modality}.nii.gz"))
        expected[modality] = sitk.GetArrayFromImage(image).astype(np.float32)
    case = resolve_inputs(folder)
    assert case.resampled == ["t2"]
    assert case.data.dtype == np.float32 and case.data.shape == (4, *sample_case.data.shape[1:])
    for channel, modality in enumerate(MODALITIES):
        if modality != "t2":
            assert np.array_equal(case.data[channel], expected[modality]), modality
    t1ce = MODALITIES.index("t1ce")
    assert np.array_equal(case.data[t1ce], sample_case.data[t1ce])
    t2 = MODALITIES.index("t2")
    brain = sample_case.data[t2] > 0
    assert np.corrcoef(sample_case.data[t2][brain], case.data[t2][brain])[0, 1] > 0.9


ORIENTATIONS = [
    Reorientation((2, 1, 0), (True, True, False)),  # the sample's own (LPS-stored)
    Reorientation((2, 1, 0), (False, False, False)),
    Reorientation((0, 2, 1), (True, False, True)),
    Reorientation((1, 0, 2), (False, True, True)),
]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_writing_into_the_canonical_view_puts_values_where_from_canonical_does(orientation):
    """How the probabilities reach the case's grid without a full-size copy (pipeline.segment)."""
    array = np.zeros((2, 3, 4, 5), np.float32)  # a channel axis, then SimpleITK's (k, j, i)
    view = orientation.canonical_view(array)
    assert np.shares_memory(view, array)
    assert view.shape == (2, *(array.shape[1 + a] for a in orientation.source_axis))
    canonical = np.arange(view.size, dtype=np.float32).reshape(view.shape)
    view[...] = canonical
    np.testing.assert_array_equal(array, orientation.from_canonical(canonical))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_cropping_before_reorienting_prepares_the_same_network_input(sample_case, orientation):
    whole_volume_first = prepare(orientation.to_canonical(sample_case.data))
    box_first = prepare_oriented(sample_case.data, orientation)
    assert box_first.crop == whole_volume_first.crop
    assert box_first.crop.box != tuple((0, n) for n in box_first.crop.full_shape)  # the crop really cuts
    np.testing.assert_array_equal(box_first.mask, whole_volume_first.mask)
    np.testing.assert_array_equal(box_first.data, whole_volume_first.data)
