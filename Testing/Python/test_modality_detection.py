"""Modality detection for every naming scheme, on small real sub-volumes of the bundled sample case.

Each sequence of the sample is cropped to the same small box (SimpleITK slicing keeps the
geometry), so the four sub-volumes share one grid and differ in content: every test checks
that each channel of the loaded case is exactly the array of the file that should map to it,
so a swap of two sequences fails.
"""

from __future__ import annotations

import bz2
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorSeg.case import MODALITIES, MSD_CHANNEL_ORDER, Case, find_modalities, image_extension, modality_of, resolve_inputs
from BrainTumorSeg.resources import sample_case_dir

BRATS2017 = {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair"}
BRATS2023 = {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f"}


@pytest.fixture(scope="module")
def sub_volumes() -> dict[str, sitk.Image]:
    """The sample's four sequences and its ground truth, cropped to 60x70x40 voxels."""
    folder = sample_case_dir()
    images = {}
    for key in (*MODALITIES, "seg"):
        path = folder / f"{folder.name}_{key}.nii.gz"
        images[key] = sitk.ReadImage(str(path))[60:120, 60:130, 50:90]
    arrays = [sitk.GetArrayFromImage(images[m]) for m in MODALITIES]
    for a in range(4):
        assert arrays[a].any()
        for b in range(a + 1, 4):
            assert not np.array_equal(arrays[a], arrays[b]), "sub-volumes must differ so that a swap is detected"
    return images


def array_of(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def write(image: sitk.Image, path: Path) -> Path:
    """Write with SimpleITK, choosing the writer from the lower-case extension, then rename to ``path``."""
    ext = image_extension(path)
    assert ext is not None
    if ext == ".nii.bz2":
        plain = path.with_name(path.name[: -len(ext)] + ".nii")
        sitk.WriteImage(image, str(plain))
        path.write_bytes(bz2.compress(plain.read_bytes()))
        plain.unlink()
        return path
    lower = path.with_name(path.name[: -len(ext)] + ext)  # image_extension gives the extension in lower case
    sitk.WriteImage(image, str(lower), useCompression=ext.endswith(".gz"))
    if lower != path:
        shutil.move(lower, path)
    return path


def assert_channels(case: Case, expected: dict[str, np.ndarray]) -> None:
    """Each channel of ``case.data`` (MODALITIES order) equals the array it should come from."""
    assert case.data.shape == (4, *expected["t1"].shape)
    assert case.data.dtype == np.float32
    for c, modality in enumerate(MODALITIES):
        assert np.array_equal(case.data[c], expected[modality]), f"channel {c} is not the {modality} source"


def write_case(folder: Path, sub_volumes, names: dict[str, str]) -> dict[str, Path]:
    """Write each modality's sub-volume under ``names[modality]``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return {m: write(sub_volumes[m], folder / names[m]) for m in MODALITIES}


# --- modality_of on names alone ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Brats18_CBICA_AQP_1_t1.nii.gz", "t1"),
        ("Brats18_CBICA_AQP_1_t1ce.nii.gz", "t1ce"),
        ("Brats18_CBICA_AQP_1_t2.nii.gz", "t2"),
        ("Brats18_CBICA_AQP_1_flair.nii.gz", "flair"),
        ("Brats18_CBICA_AQP_1_seg.nii.gz", None),
        ("BraTS-GLI-00000-000-t1n.nii.gz", "t1"),
        ("BraTS-GLI-00000-000-t1c.nii.gz", "t1ce"),
        ("BraTS-GLI-00000-000-t2w.nii.gz", "t2"),
        ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"),
        ("BraTS-GLI-00000-000-seg.nii.gz", None),
        ("case_t1.nii", "t1"),
        ("case_t1ce.nrrd", "t1ce"),
        ("case_t2.nhdr", "t2"),
        ("case_flair.mha", "flair"),
        ("case_t1.mhd", "t1"),
        ("case_t1ce.nii.bz2", "t1ce"),
        ("CASE_T1.NII.GZ", "t1"),
        ("case_T1CE.NRRD", "t1ce"),
        ("case_t2.MHA", "t2"),
        ("case_Flair.Nii", "flair"),
        ("case-T2F.MHD", "flair"),
        ("case_t1.raw", None),
        ("case_t1.zraw", None),
        ("case_t1.json", None),
        ("case_t1.nii.gz.txt", None),
        ("case_t1n.nii.gz", None),
        ("case.nii.gz", None),
        ("README.md", None),
    ],
)
def test_modality_of_names(name, expected):
    assert modality_of(Path(name)) == expected


# --- folders of real files ------------------------------------------------------------------


def test_brats2017_names_and_seg_ignored(tmp_path, sub_volumes):
    folder = tmp_path / "Brats18_case"
    paths = write_case(folder, sub_volumes, {m: f"Brats18_case{s}.nii.gz" for m, s in BRATS2017.items()})
    write(sub_volumes["seg"], folder / "Brats18_case_seg.nii.gz")
    assert find_modalities(folder) == paths
    case = resolve_inputs(folder)
    assert_channels(case, {m: array_of(sub_volumes[m]) for m in MODALITIES})
    assert case.sources == {m: str(p) for m, p in paths.items()}
    assert case.resampled == []
    assert case.reference.GetSize() == sub_volumes["t1ce"].GetSize()
    np.testing.assert_allclose(case.reference.GetOrigin(), sub_volumes["t1ce"].GetOrigin())


def test_brats2023_names_and_seg_ignored(tmp_path, sub_volumes):
    folder = tmp_path / "BraTS-GLI-00000-000"
    paths = write_case(folder, sub_volumes, {m: f"BraTS-GLI-00000-000{s}.nii.gz" for m, s in BRATS2023.items()})
    write(sub_volumes["seg"], folder / "BraTS-GLI-00000-000-seg.nii.gz")
    assert find_modalities(folder) == paths
    case = resolve_inputs(folder)
    assert_channels(case, {m: array_of(sub_volumes[m]) for m in MODALITIES})
    assert case.sources == {m: str(p) for m, p in paths.items()}


def test_mixed_formats(tmp_path, sub_volumes):
    folder = tmp_path / "mixed"
    names = {"t1": "case_t1.nii", "t1ce": "case_t1ce.nrrd", "t2": "case_t2.mha", "flair": "case_flair.mhd"}
    paths = write_case(folder, sub_volumes, names)
    # The .mhd header's pixel data sits in a .raw beside it, which is not taken for an image.
    assert (folder / "case_flair.raw").is_file()
    write(sub_volumes["seg"], folder / "case_seg.nrrd")
    assert find_modalities(folder) == paths
    case = resolve_inputs(folder)
    assert_channels(case, {m: array_of(sub_volumes[m]) for m in MODALITIES})
    assert case.resampled == []


def test_nhdr_and_bz2_formats(tmp_path, sub_volumes):
    folder = tmp_path / "more"
    names = {"t1": "case_t1.nii.bz2", "t1ce": "case_t1ce.nhdr", "t2": "case_t2.nii.gz", "flair": "case_flair.nrrd"}
    paths = write_case(folder, sub_volumes, names)
    assert find_modalities(folder) == paths
    assert_channels(resolve_inputs(folder), {m: array_of(sub_volumes[m]) for m in MODALITIES})


def test_uppercase_extensions_and_names(tmp_path, sub_volumes):
    folder = tmp_path / "upper"
    names = {"t1": "CASE_T1.NII.GZ", "t1ce": "case_T1CE.NRRD", "t2": "case-T2W.MHA", "flair": "case_FLAIR.MHD"}
    paths = write_case(folder, sub_volumes, names)
    assert sorted(p.name for p in folder.iterdir() if image_extension(p)) == sorted(names.values())
    assert {m: modality_of(p) for m, p in paths.items()} == {m: m for m in MODALITIES}
    assert find_modalities(folder) == paths
    assert_channels(resolve_inputs(folder), {m: array_of(sub_volumes[m]) for m in MODALITIES})


def test_upper_and_mixed_case_nifti_extensions(tmp_path, sub_volumes, capfd):
    """The NIfTI library refuses mixed-case extensions (and says so on stderr); they read all the same, silently."""
    folder = tmp_path / "upper_nii"
    names = {"t1": "case_t1.NII", "t1ce": "case_t1ce.NII.gz", "t2": "case_t2.Nii.Gz", "flair": "case_flair.Nii"}
    write_case(folder, sub_volumes, names)
    capfd.readouterr()
    assert_channels(resolve_inputs(folder), {m: array_of(sub_volumes[m]) for m in MODALITIES})
    assert capfd.readouterr().err == ""


def test_folder_with_unrelated_files(tmp_path, sub_volumes):
    """Notes, a README and the sidecar data files do not disturb detection."""
    folder = tmp_path / "cluttered"
    paths = write_case(folder, sub_volumes, {m: f"p01{s}.nii.gz" for m, s in BRATS2017.items()})
    (folder / "README.md").write_text("notes\n")
    (folder / "p01_t1.json").write_text("{}\n")
    (folder / "sub").mkdir()
    write(sub_volumes["t1"], folder / "sub" / "other_t1.nii.gz")
    assert find_modalities(folder) == paths
    assert_channels(resolve_inputs(folder), {m: array_of(sub_volumes[m]) for m in MODALITIES})


def test_explicit_four_files(tmp_path, sub_volumes):
    # Names that declare nothing (or the wrong thing): explicit keywords decide.
    names = {"t1": "a.nii.gz", "t1ce": "b_flair.nrrd", "t2": "c.mha", "flair": "d_t1.nii"}
    paths = write_case(tmp_path / "explicit", sub_volumes, names)
    case = resolve_inputs(None, t1=paths["t1"], t1ce=paths["t1ce"], t2=paths["t2"], flair=paths["flair"])
    assert_channels(case, {m: array_of(sub_volumes[m]) for m in MODALITIES})
    assert case.sources == {m: str(p) for m, p in paths.items()}
    # Strings work as well as paths.
    case = resolve_inputs(None, **{m: str(p) for m, p in paths.items()})
    assert_channels(case, {m: array_of(sub_volumes[m]) for m in MODALITIES})


# --- Medical Segmentation Decathlon 4D image ------------------------------------------------


def msd_4d_sitk(sub_volumes) -> sitk.Image:
    """4D image with channels FLAIR, T1w, T1gd, T2w (the Decathlon Task01 order)."""
    return sitk.JoinSeries([sitk.Cast(sub_volumes[m], sitk.sitkFloat32) for m in MSD_CHANNEL_ORDER])


def test_msd_channel_order_constant():
    assert MSD_CHANNEL_ORDER == ("flair", "t1", "t1ce", "t2")


def test_msd_4d_file_sitk(tmp_path, sub_volumes):
    path = tmp_path / "BRATS_001.nii.gz"
    sitk.WriteImage(msd_4d_sitk(sub_volumes), str(path), useCompression=True)
    case = resolve_inputs(path)
    assert_channels(case, {m: array_of(sub_volumes[m]) for m in MODALITIES})
    assert case.sources == {m: f"{path}#{MSD_CHANNEL_ORDER.index(m)}" for m in MODALITIES}
    reference = sub_volumes["t1ce"]
    assert case.reference.GetSize() == reference.GetSize()
    np.testing.assert_allclose(case.reference.GetOrigin(), reference.GetOrigin())
    np.testing.assert_allclose(case.reference.GetSpacing(), reference.GetSpacing())
    np.testing.assert_allclose(case.reference.GetDirection(), reference.GetDirection())


def test_msd_4d_file_nibabel_as_only_image_in_folder(tmp_path, sub_volumes):
    """As the Decathlon ships it: one 4D NIfTI (x, y, z, channel) written by nibabel, alone in its folder."""
    folder = tmp_path / "imagesTr"
    folder.mkdir()
    # SimpleITK arrays are (k, j, i); nibabel's are (i, j, k, channel).
    data = np.stack([array_of(sub_volumes[m]).T for m in MSD_CHANNEL_ORDER], axis=-1).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS origin 0 with unit spacing, as RAS affine
    nib.save(nib.Nifti1Image(data, affine), str(folder / "BRATS_001.nii.gz"))
    (folder / "dataset.json").write_text("{}\n")
    case = resolve_inputs(folder)
    assert_channels(case, {m: array_of(sub_volumes[m]) for m in MODALITIES})
    assert case.sources["t1"] == f"{folder / 'BRATS_001.nii.gz'}#1"


def test_msd_4d_sitk_as_only_image_in_folder(tmp_path, sub_volumes):
    folder = tmp_path / "msd"
    folder.mkdir()
    sitk.WriteImage(msd_4d_sitk(sub_volumes), str(folder / "BRATS_002.nii.gz"), useCompression=True)
    case = resolve_inputs(folder)
    assert_channels(case, {m: array_of(sub_volumes[m]) for m in MODALITIES})
