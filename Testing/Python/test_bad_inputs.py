"""Bad input: one line on stderr naming the file and the problem, exit code 2, no output files, inputs untouched.

The real CLI runs in-process (``main([...])``) on small real sub-volumes of the bundled sample
case, with one input spoiled per case. A tiny randomly initialised model in a temporary folder
stands in for the shipped one: these errors come before the network runs (the unwritable
output folder after the weights are loaded), so its weights never matter. The exact texts of
the errors raised by :mod:`BrainTumorSeg.case` and :mod:`BrainTumorSeg.export` are part of the
contract and are checked word for word.
"""

from __future__ import annotations

import bz2
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BrainTumorSeg import cli
from BrainTumorSeg.case import (
    IMAGE_EXTENSIONS,
    MODALITIES,
    check_image,
    find_modalities,
    load_case,
    load_case_4d,
    read_image,
    resolve_inputs,
)
from BrainTumorSeg.cli import main
from BrainTumorSeg.errors import InputError
from BrainTumorSeg.export import check_writable
from BrainTumorSeg.models.card import MODELS_ENV, ModelCard
from BrainTumorSeg.models.registry import save_weights
from BrainTumorSeg.resources import sample_case_dir

REPO = Path(__file__).resolve().parents[2]
PREFIX = "brain-tumor-seg: error: "
TINY_ID = "tiny-input-check"
NAMES = {m: f"case_{m}.nii.gz" for m in MODALITIES}


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sub_volumes() -> dict[str, sitk.Image]:
    """The sample's four sequences cropped to 60x70x40 voxels (same grid, real intensities)."""
    folder = sample_case_dir()
    return {m: sitk.ReadImage(str(folder / f"{folder.name}_{m}.nii.gz"))[60:120, 60:130, 50:90] for m in MODALITIES}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """A folder with a tiny random 2D U-Net card (features [4, 8]): a test fixture for input validation only."""
    folder = tmp_path_factory.mktemp("tiny_models")
    raw = json.loads((REPO / "training" / "unet2d-axial.json").read_text())
    raw.update(id=TINY_ID, name="tiny random U-Net (input-validation test fixture)", default=True)
    raw["config"].update(features=[4, 8], in_channels=12)
    card_path = folder / f"{TINY_ID}.json"
    card_path.write_text(json.dumps(raw, indent=2) + "\n")
    card = ModelCard.read(card_path)
    save_weights(card.build(), card.weights_path)
    return folder


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)


def write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))
    return path


def write_case(folder: Path, sub_volumes, replace: dict[str, sitk.Image] | None = None, skip: tuple[str, ...] = ()) -> Path:
    """A BraTS-named case folder; ``replace`` swaps in a spoiled image for some modalities."""
    images = {**sub_volumes, **(replace or {})}
    for modality in MODALITIES:
        if modality not in skip:
            write(images[modality], folder / NAMES[modality])
    return folder


def float_with(image: sitk.Image, value: float) -> sitk.Image:
    """``image`` as float32 with ``value`` in a few voxels."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array[10, 20:23, 30] = value
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def rgb_of(image: sitk.Image) -> sitk.Image:
    """A 3-component uint8 (RGB) image on the same grid."""
    scaled = sitk.Cast(sitk.RescaleIntensity(image, 0, 255), sitk.sitkUInt8)
    return sitk.Compose(scaled, scaled, scaled)


def zeros_like(image: sitk.Image) -> sitk.Image:
    out = sitk.Image(image.GetSize(), image.GetPixelID())
    out.CopyInformation(image)
    return out


def shifted(image: sitk.Image, mm: float = 1000.0) -> sitk.Image:
    out = sitk.Image(image)
    origin = list(out.GetOrigin())
    origin[0] += mm
    out.SetOrigin(origin)
    return out


def msd_4d(sub_volumes, order: tuple[str, ...]) -> sitk.Image:
    return sitk.JoinSeries([sitk.Cast(sub_volumes[m], sitk.sitkFloat32) for m in order])


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every file (by SHA-256) and folder under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return out


def error_line(captured) -> str:
    """The single stderr line of a failed run (and nothing on stdout)."""
    assert captured.out == ""
    assert captured.err.endswith("\n") and captured.err.count("\n") == 1, f"expected one line on stderr, got {captured.err!r}"
    line = captured.err[:-1]
    assert line.startswith(PREFIX)
    return line


# --- the bad inputs -------------------------------------------------------------------------


@dataclass
class Bad:
    args: list[str]  # input arguments of `segment`
    path: Path  # the file or folder the error must name
    problem: str  # the problem text after "<path>: "
    exact: bool = True  # False: the problem text is a prefix (a library's detail follows)


def _missing_modality(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols, skip=("flair",))
    return Bad(["--input", str(folder)], folder, "no image found for FLAIR (*_flair or *-t2f)")


def _two_files_for_one_modality(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols, skip=("t1",))
    write(vols["t1"], folder / "a_t1.nii.gz")
    write(vols["t1"], folder / "b_t1.nii.gz")
    return Bad(["--input", str(folder)], folder, "more than one T1 image: a_t1.nii.gz, b_t1.nii.gz")


def _missing_file_flag(root: Path, vols) -> Bad:
    folder = write_case(root / "files", vols, skip=("t1",))
    missing = folder / "case_t1.nii.gz"
    args = ["--t1", str(missing)] + [a for m in MODALITIES[1:] for a in (f"--{m}", str(folder / NAMES[m]))]
    return Bad(args, missing, "file not found")


def _missing_input(root: Path, vols) -> Bad:
    root.mkdir(parents=True)
    return Bad(["--input", str(root / "no_such_case")], root / "no_such_case", "file or folder not found")


def _unreadable(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols, skip=("t1",))
    garbage = folder / NAMES["t1"]
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return Bad(["--input", str(folder)], garbage, "cannot read image (", exact=False)


def _truncated(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols)
    path = truncate(folder / NAMES["t1ce"])
    return Bad(["--input", str(folder)], path, "file is truncated (the compressed data ends early)")


def _image_2d(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols, replace={"t2": vols["t2"][:, :, 20]})
    return Bad(["--input", str(folder)], folder / NAMES["t2"], "image is 2D (size 60x70); expected a 3D volume")


def _rgb(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols, replace={"flair": rgb_of(vols["flair"])})
    problem = "image has 3 components per voxel (RGB or vector image); expected a scalar MRI volume"
    return Bad(["--input", str(folder)], folder / NAMES["flair"], problem)


def _all_zeros(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols, replace={"t1": zeros_like(vols["t1"])})
    return Bad(["--input", str(folder)], folder / NAMES["t1"], "image is all zeros")


def _nan(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols, replace={"t1ce": float_with(vols["t1ce"], np.nan)})
    return Bad(["--input", str(folder)], folder / NAMES["t1ce"], "image contains NaN or infinite voxel values")


def _infinite(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols, replace={"t2": float_with(vols["t2"], np.inf)})
    return Bad(["--input", str(folder)], folder / NAMES["t2"], "image contains NaN or infinite voxel values")


def _not_overlapping(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols, replace={"flair": shifted(vols["flair"])})
    return Bad(["--input", str(folder)], folder / NAMES["flair"], "does not overlap the T1ce volume in space")


def _msd_three_channels(root: Path, vols) -> Bad:
    path = write(msd_4d(vols, ("flair", "t1", "t1ce")), root / "BRATS_001.nii.gz")
    return Bad(["--input", str(path)], path, "4D image has 3 channels; expected 4 (FLAIR, T1w, T1gd, T2w)")


def _msd_channel_all_zeros(root: Path, vols) -> Bad:
    path = write(msd_4d({**vols, "t2": zeros_like(vols["t2"])}, ("flair", "t1", "t1ce", "t2")), root / "BRATS_001.nii.gz")
    return Bad(["--input", str(path)], Path(f"{path} (channel 3, T2)"), "image is all zeros")


def _one_file_for_two_sequences(root: Path, vols) -> Bad:
    folder = write_case(root / "files", vols)
    files = {**{m: folder / NAMES[m] for m in MODALITIES}, "t1ce": folder / NAMES["t1"]}  # T1 given twice
    args = [a for m in MODALITIES for a in (f"--{m}", str(files[m]))]
    return Bad(args, files["t1ce"], "is given as both T1 and T1ce")


def _a_sequence_copied_under_another_name(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols, replace={"flair": vols["t2"]})
    problem = f"has the same voxel values as the T2 image ({folder / NAMES['t2']}); "
    problem += "T1, T1ce, T2 and FLAIR must be four different images"
    return Bad(["--input", str(folder)], folder / NAMES["flair"], problem)


def _msd_two_equal_channels(root: Path, vols) -> Bad:
    path = write(msd_4d({**vols, "t2": vols["t1"]}, ("flair", "t1", "t1ce", "t2")), root / "BRATS_001.nii.gz")
    problem = f"has the same voxel values as the T1 image ({path} (channel 1, T1)); "
    problem += "T1, T1ce, T2 and FLAIR must be four different images"
    return Bad(["--input", str(path)], Path(f"{path} (channel 3, T2)"), problem)


def _folder_and_files(root: Path, vols) -> Bad:
    folder = write_case(root / "case", vols)
    problem = "give either an input folder/4D file or the four --t1/--t1ce/--t2/--flair files, not both"
    return Bad(["--input", str(folder), "--t1", str(folder / NAMES["t1"])], folder, problem)


BAD_INPUTS: dict[str, Callable[[Path, dict], Bad]] = {
    "missing modality in folder": _missing_modality,
    "two files for one modality": _two_files_for_one_modality,
    "missing file given with --t1": _missing_file_flag,
    "missing --input": _missing_input,
    "unreadable file": _unreadable,
    "truncated .nii.gz": _truncated,
    "2D image": _image_2d,
    "RGB image": _rgb,
    "all zeros": _all_zeros,
    "NaN voxels": _nan,
    "infinite voxels": _infinite,
    "not overlapping in space": _not_overlapping,
    "4D image with 3 channels": _msd_three_channels,
    "4D image with an empty channel": _msd_channel_all_zeros,
    "folder and files together": _folder_and_files,
    "one file for two sequences": _one_file_for_two_sequences,
    "a sequence copied under another name": _a_sequence_copied_under_another_name,
    "4D image with two equal channels": _msd_two_equal_channels,
}


def segment(tiny_models: Path, *args: str) -> int:
    options = ["--models-dir", str(tiny_models), "--model", TINY_ID, "--device", "cpu", "--precision", "fp32"]
    return main(["segment", *args, *options])


@pytest.mark.parametrize("out_exists", [False, True], ids=["new-out", "existing-out"])
@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_cli_bad_input(kind, out_exists, tmp_path, sub_volumes, tiny_models, capfd):
    bad = BAD_INPUTS[kind](tmp_path / "inputs", sub_volumes)
    out = tmp_path / "out"
    if out_exists:
        out.mkdir()
    before = snapshot(tmp_path)
    capfd.readouterr()
    code = segment(tiny_models, *bad.args, "--out", str(out))
    line = error_line(capfd.readouterr())
    assert code == 2
    assert str(bad.path) in line
    if bad.exact:
        assert line == f"{PREFIX}{bad.path}: {bad.problem}"
    else:
        assert line.startswith(f"{PREFIX}{bad.path}: {bad.problem}") and line.endswith(")")
    if out_exists:
        assert list(out.iterdir()) == []
    else:
        assert not out.exists()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("option", [["--overlap", "0.5"], ["--window", "64", "64"]])
def test_cli_window_options_without_window_mode(option, tmp_path, sub_volumes, tiny_models, capfd):
    """--overlap and --window would change nothing for a slice-wise model: an error, not a silent no-op."""
    folder = write_case(tmp_path / "inputs" / "case", sub_volumes)
    out = tmp_path / "out"
    capfd.readouterr()
    assert segment(tiny_models, "--input", str(folder), *option, "--out", str(out)) == 2
    expected = f"{PREFIX}{option[0]}: applies to window mode only, and no model here runs in it (add --mode window)"
    assert error_line(capfd.readouterr()) == expected
    assert not out.exists()
    assert segment(tiny_models, "--input", str(folder), *option, "--mode", "window", "--out", str(out)) == 0


def test_cli_unwritable_output_folder(tmp_path, sub_volumes, tiny_models, capfd):
    """Valid inputs, an --out below a regular file: the error names the output folder (chmod is no use as root)."""
    folder = write_case(tmp_path / "inputs" / "case", sub_volumes)
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder\n")
    out = blocker / "out"
    before = snapshot(tmp_path)
    capfd.readouterr()
    code = segment(tiny_models, "--input", str(folder), "--out", str(out))
    line = error_line(capfd.readouterr())
    assert code == 2
    assert line == f"{PREFIX}{out}: output folder cannot be written (Not a directory)"
    assert not out.exists()
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("command", ["segment", "batch"])
def test_cli_device_that_is_not_there(command, tmp_path, sub_volumes, tiny_models, capfd, monkeypatch):
    """--device cuda without a GPU (Slicer's GPU choice on a CPU-only machine): one line naming --device, exit 2,
    before any case is read or any output written."""
    folder = write_case(tmp_path / "inputs" / "case", sub_volumes)
    read: list[object] = []
    monkeypatch.setattr(cli, "resolve_inputs", lambda *args, **kwargs: read.append(args))
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    capfd.readouterr()
    source = str(folder if command == "segment" else folder.parent)
    options = ["--models-dir", str(tiny_models), "--model", TINY_ID, "--device", "cuda"]
    code = main([command, "--input", source, "--out", str(out), *options])
    line = error_line(capfd.readouterr())
    assert code == 2
    why = "no CUDA GPU found" if torch.backends.cuda.is_built() else f"PyTorch {torch.__version__} is built without CUDA"
    assert line == f"{PREFIX}--device: cuda is not available: {why}; use --device auto or cpu"
    assert read == []
    assert not out.exists()
    assert snapshot(tmp_path) == before


def test_cli_the_same_valid_case_succeeds(tmp_path, sub_volumes, tiny_models, capfd):
    """Control: the unspoiled sub-volumes and the tiny model do segment, so the errors above come from the spoiled input."""
    folder = write_case(tmp_path / "inputs" / "case", sub_volumes)
    before = snapshot(folder)
    out = tmp_path / "out"
    assert segment(tiny_models, "--input", str(folder), "--out", str(out)) == 0
    captured = capfd.readouterr()
    assert "error" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["case.seg.nrrd", "case_seg.nii.gz", "case_volumes.json"]
    assert snapshot(folder) == before


# --- exact messages of the library functions ------------------------------------------------


def raises_input_error(function: Callable, *args) -> InputError:
    with pytest.raises(InputError) as info:
        function(*args)
    error = info.value
    assert "\n" not in str(error)
    assert str(error) == f"{error.path}: {error.problem}"
    return error


def test_read_image_missing_file(tmp_path):
    path = tmp_path / "case_t1.nii.gz"
    error = raises_input_error(read_image, path)
    assert str(error) == f"{path}: file not found"
    assert error.path == str(path) and error.problem == "file not found"


def test_read_image_folder(tmp_path):
    folder = tmp_path / "case_t1.nii.gz"
    folder.mkdir()
    assert str(raises_input_error(read_image, folder)) == f"{folder}: not a file"


def test_read_image_unsupported_type(tmp_path):
    path = tmp_path / "case_t1.png"
    path.write_bytes(b"\x89PNG\r\n")
    expected = f"{path}: unsupported file type; expected one of .nii.gz, .nii.bz2, .nii, .nrrd, .nhdr, .mha, .mhd"
    assert IMAGE_EXTENSIONS == (".nii.gz", ".nii.bz2", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
    assert str(raises_input_error(read_image, path)) == expected


@pytest.mark.parametrize("name", ["garbage.nii.gz", "garbage.nii", "garbage.nrrd", "garbage.mha"])
def test_read_image_garbage(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    message = str(raises_input_error(read_image, path))
    assert message.startswith(f"{path}: cannot read image (") and message.endswith(")")


def test_read_image_truncated_nii_gz(tmp_path, sub_volumes):
    """ITK alone reads a cut .nii.gz without complaint, zeros where the data ends."""
    path = truncate(write(sub_volumes["t1"], tmp_path / "case_t1.nii.gz"))
    assert str(raises_input_error(read_image, path)) == f"{path}: file is truncated (the compressed data ends early)"


def test_read_image_truncated_bundled_sample(tmp_path):
    """The same with a full-size real file: the bundled sample's T1ce cut to half its bytes."""
    source = next(sample_case_dir().glob("*_t1ce.nii.gz"))
    path = tmp_path / source.name
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    assert str(raises_input_error(read_image, path)) == f"{path}: file is truncated (the compressed data ends early)"


def test_read_image_truncated_plain_nii(tmp_path, sub_volumes):
    path = write(sub_volumes["t1"], tmp_path / "case_t1.nii")
    full = path.stat().st_size
    truncate(path)
    assert str(raises_input_error(read_image, path)) == f"{path}: file is truncated ({full // 2} of {full} bytes)"


def test_read_image_truncated_nii_bz2(tmp_path, sub_volumes):
    plain = write(sub_volumes["t1"], tmp_path / "plain.nii")
    path = tmp_path / "case_t1.nii.bz2"
    path.write_bytes(bz2.compress(plain.read_bytes()))
    assert read_image(path).GetSize() == (60, 70, 40)
    truncate(path)
    expected = f"{path}: cannot read image (Compressed file ended before the end-of-stream marker was reached)"
    assert str(raises_input_error(read_image, path)) == expected


@pytest.mark.parametrize("name", ["case_t1.nrrd", "case_t1.mha"])
def test_read_image_truncated_other_formats(tmp_path, sub_volumes, name):
    path = truncate(write(sub_volumes["t1"], tmp_path / name))
    message = str(raises_input_error(read_image, path))
    assert message.startswith(f"{path}: cannot read image (") and message.endswith(")")


def test_check_image_2d(tmp_path, sub_volumes):
    path = write(sub_volumes["t2"][:, :, 20], tmp_path / "case_t2.nii.gz")
    image = read_image(path)
    assert str(raises_input_error(check_image, image, path)) == f"{path}: image is 2D (size 60x70); expected a 3D volume"


def test_check_image_single_slice_is_2d(tmp_path, sub_volumes):
    path = write(sub_volumes["t2"][:, :, 20:21], tmp_path / "case_t2.nii.gz")
    image = read_image(path)
    assert image.GetDimension() == 3
    assert str(raises_input_error(check_image, image, path)) == f"{path}: image is 2D (size 60x70x1); expected a 3D volume"


def test_check_image_rgb(tmp_path, sub_volumes):
    path = write(rgb_of(sub_volumes["flair"]), tmp_path / "case_flair.nii.gz")
    image = read_image(path)
    assert image.GetNumberOfComponentsPerPixel() == 3
    expected = f"{path}: image has 3 components per voxel (RGB or vector image); expected a scalar MRI volume"
    assert str(raises_input_error(check_image, image, path)) == expected


def test_check_image_all_zeros(tmp_path, sub_volumes):
    path = write(zeros_like(sub_volumes["t1"]), tmp_path / "case_t1.nii.gz")
    assert str(raises_input_error(check_image, read_image(path), path)) == f"{path}: image is all zeros"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_check_image_non_finite(tmp_path, sub_volumes, value, ext):
    path = write(float_with(sub_volumes["t1ce"], value), tmp_path / f"case_t1ce{ext}")
    image = read_image(path)
    assert image.GetPixelID() == sitk.sitkFloat32
    expected = f"{path}: image contains NaN or infinite voxel values"
    assert str(raises_input_error(check_image, image, path)) == expected


def beyond_float32(image: sitk.Image) -> sitk.Image:
    """``image`` as float64 with one finite value that float32, the type the networks read, cannot hold."""
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    array[10, 20, 30] = -1e39
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def test_check_image_beyond_float32(tmp_path, sub_volumes):
    path = write(beyond_float32(sub_volumes["t2"]), tmp_path / "case_t2.nrrd")
    expected = f"{path}: image has voxel values beyond the float32 range"
    assert str(raises_input_error(check_image, read_image(path), path)) == expected


def test_a_case_with_a_volume_beyond_float32_is_refused(tmp_path, sub_volumes):
    folder = write_case(tmp_path / "case", sub_volumes, replace={"flair": beyond_float32(sub_volumes["flair"])})
    expected = f"{folder / NAMES['flair']}: image has voxel values beyond the float32 range"
    assert str(raises_input_error(resolve_inputs, folder)) == expected


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nii.bz2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_image_non_finite_nifti(tmp_path, sub_volumes, value, ext, dtype):
    """ITK 5 reads NaN and infinite NIfTI voxels as 0; read_image looks at the stored values itself."""
    image = float_with(sub_volumes["t1ce"], value)
    if dtype is np.float64:
        image = sitk.Cast(image, sitk.sitkFloat64)
    path = tmp_path / f"case_t1ce{ext}"
    if ext == ".nii.bz2":
        plain = write(image, tmp_path / "plain.nii")
        path.write_bytes(bz2.compress(plain.read_bytes()))
    else:
        write(image, path)
    assert str(raises_input_error(read_image, path)) == f"{path}: image contains NaN or infinite voxel values"


def test_read_image_finite_float_nifti(tmp_path, sub_volumes):
    path = write(float_with(sub_volumes["t1ce"], 1.5), tmp_path / "case_t1ce.nii.gz")
    array = sitk.GetArrayFromImage(read_image(path))
    assert array[10, 20, 30] == 1.5


def test_check_image_accepts_the_real_sub_volumes(sub_volumes):
    for modality, image in sub_volumes.items():
        check_image(image, modality)  # no error; their values reaching the case: test_geometry_roundtrip


def test_load_case_not_overlapping(tmp_path, sub_volumes):
    folder = write_case(tmp_path / "case", sub_volumes, replace={"flair": shifted(sub_volumes["flair"])})
    paths = {m: folder / NAMES[m] for m in MODALITIES}
    expected = f"{paths['flair']}: does not overlap the T1ce volume in space"
    assert str(raises_input_error(load_case, paths)) == expected


def test_load_case_missing_modality_key(tmp_path, sub_volumes):
    folder = write_case(tmp_path / "case", sub_volumes)
    paths = {m: folder / NAMES[m] for m in ("t1", "t1ce")}
    assert str(raises_input_error(load_case, paths)) == "inputs: missing T2, FLAIR image"


def test_find_modalities_messages(tmp_path, sub_volumes):
    folder = write_case(tmp_path / "case", sub_volumes, skip=("t2", "flair"))
    expected = f"{folder}: no image found for T2 (*_t2 or *-t2w), FLAIR (*_flair or *-t2f)"
    assert str(raises_input_error(find_modalities, folder)) == expected
    write(sub_volumes["t2"], folder / "case_t2.nii.gz")
    write(sub_volumes["flair"], folder / "case_flair.nii.gz")
    write(sub_volumes["t1ce"], folder / "other-t1c.nrrd")
    expected = f"{folder}: more than one T1ce image: case_t1ce.nii.gz, other-t1c.nrrd"
    assert str(raises_input_error(find_modalities, folder)) == expected
    missing = tmp_path / "nowhere"
    assert str(raises_input_error(find_modalities, missing)) == f"{missing}: folder not found"


def test_load_case_4d_messages(tmp_path, sub_volumes):
    three = write(msd_4d(sub_volumes, ("flair", "t1", "t1ce")), tmp_path / "three.nii.gz")
    expected = f"{three}: 4D image has 3 channels; expected 4 (FLAIR, T1w, T1gd, T2w)"
    assert str(raises_input_error(load_case_4d, three)) == expected
    plain = write(sub_volumes["t1"], tmp_path / "plain.nii.gz")
    expected = f"{plain}: expected a 4D image with 4 channels (FLAIR, T1w, T1gd, T2w)"
    assert str(raises_input_error(load_case_4d, plain)) == expected


def test_resolve_inputs_messages(tmp_path):
    assert str(raises_input_error(resolve_inputs, None)) == (
        "inputs: no input given; use --input FOLDER, --t1/--t1ce/--t2/--flair FILES, or --sample"
    )
    missing = tmp_path / "missing"
    assert str(raises_input_error(resolve_inputs, missing)) == f"{missing}: file or folder not found"


def test_check_writable_below_a_file(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x\n")
    out = blocker / "out"
    assert str(raises_input_error(check_writable, out)) == f"{out}: output folder cannot be written (Not a directory)"
    assert str(raises_input_error(check_writable, blocker)) == f"{blocker}: output folder is a file, not a folder"
    assert blocker.read_text() == "x\n"
