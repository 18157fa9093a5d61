"""Find, read and validate the four MRI sequences of one case and put them on the T1ce grid.

Inputs are four files, a folder with BraTS 2017-2021 (``*_t1``, ``*_t1ce``,
``*_t2``, ``*_flair``) or BraTS 2023+ (``*-t1n``, ``*-t1c``, ``*-t2w``, ``*-t2f``)
names, or one 4D image in the Medical Segmentation Decathlon Task01 channel order
(FLAIR, T1w, T1gd, T2w). NIfTI, NRRD and MetaImage are read with SimpleITK
(``.nii.bz2``, as the shared BraTS copies are stored, is decompressed first).
Every problem is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import shutil
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import overlap_fraction, resample_to, same_grid
from .labels import from_convention

log = logging.getLogger("brain_tumor_seg")

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
REFERENCE_MODALITY = "t1ce"
DISPLAY_NAMES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}

# File-name endings (before the extension) of each modality, BraTS 2017-2021 then 2023+.
NAME_SUFFIXES: dict[str, tuple[str, ...]] = {
    "t1": ("_t1", "-t1n"),
    "t1ce": ("_t1ce", "-t1c"),
    "t2": ("_t2", "-t2w"),
    "flair": ("_flair", "-t2f"),
}
TRUTH_SUFFIXES: tuple[str, ...] = ("_seg", "-seg")
MSD_CHANNEL_ORDER: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii.bz2", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Case:
    """Four co-registered sequences on the reference (T1ce) grid.

    ``data`` is float32, shape ``(4, k, j, i)`` in :data:`MODALITIES` order, indexed
    like ``sitk.GetArrayFromImage(reference)``; ``reference`` carries the grid.
    """

    reference: sitk.Image
    data: np.ndarray
    sources: dict[str, str] = field(default_factory=dict)
    resampled: list[str] = field(default_factory=list)
    coverage: dict[str, float] = field(default_factory=dict)  # of each resampled sequence: see brain_coverage
    warnings: list[str] = field(default_factory=list)  # about the inputs (logged when read; recorded with the outputs)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.reference.GetSpacing())) / 1000.0

    @property
    def brain(self) -> np.ndarray:
        """Brain mask on the reference grid: any sequence non-zero (as :func:`preprocess.brain_mask`)."""
        return np.any(self.data != 0, axis=0)  # the rule of preprocess.brain_mask


def image_extension(path: Path) -> str | None:
    """The recognised image extension of ``path`` (lower case), or None."""
    name = path.name.lower()
    return next((ext for ext in IMAGE_EXTENSIONS if name.endswith(ext)), None)


def modality_of(path: Path) -> str | None:
    """The modality a BraTS-style file name declares, or None (ground truth ``_seg`` files are None)."""
    ext = image_extension(path)
    if ext is None:
        return None
    stem = path.name[: -len(ext)].lower()
    for modality, suffixes in NAME_SUFFIXES.items():
        if stem.endswith(suffixes):
            return modality
    return None


def truth_file(folder: Path) -> Path:
    """The ground-truth label file of a BraTS-named case folder (``*_seg`` or ``*-seg``); InputError if not exactly one."""
    hits = []
    for path in sorted(folder.iterdir()):
        ext = image_extension(path)
        if ext and path.name[: -len(ext)].lower().endswith(TRUTH_SUFFIXES):
            hits.append(path)
    if len(hits) != 1:
        raise InputError(folder, f"expected one ground-truth file (*_seg or *-seg), found {len(hits)}")
    return hits[0]


def read_truth(path: str | Path, reference: sitk.Image | None = None, convention: str = "brats2017") -> np.ndarray:
    """A ground-truth label map as internal labels (indexed like its SimpleITK array).

    With ``reference``, the map must have the reference's size. InputError naming the file otherwise,
    or when it holds values outside ``convention``.
    """
    image = read_image(path)
    if reference is not None and image.GetSize() != reference.GetSize():
        raise InputError(path, "ground truth is not on the T1ce grid")
    try:
        return from_convention(sitk.GetArrayFromImage(image).astype(np.int16), convention)
    except ValueError as error:
        raise InputError(path, str(error)) from None


def find_modalities(folder: Path) -> dict[str, Path]:
    """The four modality files in a BraTS-named folder; InputError when one is missing or doubled."""
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    found: dict[str, list[Path]] = {m: [] for m in MODALITIES}
    for path in sorted(folder.iterdir()):
        modality = modality_of(path)
        if modality is not None and path.is_file():
            found[modality].append(path)
    for modality, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise InputError(folder, f"more than one {DISPLAY_NAMES[modality]} image: {names}")
    missing = [m for m in MODALITIES if not found[m]]
    if missing:
        wanted = ", ".join(f"{DISPLAY_NAMES[m]} (*{NAME_SUFFIXES[m][0]} or *{NAME_SUFFIXES[m][1]})" for m in missing)
        raise InputError(folder, f"no image found for {wanted}")
    return {m: paths[0] for m, paths in found.items()}


def read_image(path: str | Path) -> sitk.Image:
    """Read one image with SimpleITK; InputError if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a file")
    ext = image_extension(path)
    if ext is None:
        raise InputError(path, f"unsupported file type; expected one of {', '.join(IMAGE_EXTENSIONS)}")
    try:
        if ext == ".nii.bz2" or (ext in (".nii", ".nii.gz") and path.name[-len(ext) :] not in (ext, ext.upper())):
            return _read_nifti_copy(path, ext)
        # ITK picks its reader by (lower-case) extension; name it so ``.MHA``/``.MHD`` read too.
        image = sitk.ReadImage(str(path), imageIO=_IMAGE_IO.get(ext, ""))
        if ext in (".nii", ".nii.gz"):
            _check_nifti_data(path, path)
        return image
    except (RuntimeError, OSError, EOFError, zlib.error) as error:
        raise InputError(path, f"cannot read image ({_first_line(error)})") from None


_IMAGE_IO = {".mha": "MetaImageIO", ".mhd": "MetaImageIO"}


def _read_nifti_copy(path: Path, ext: str) -> sitk.Image:
    """Read a NIfTI through a temporary copy: ``.nii.bz2`` decompressed, and mixed-case extensions
    (``.Nii.Gz``), which the NIfTI library refuses with messages on stderr, under a lower-case name."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / ("image.nii" if ext == ".nii.bz2" else f"image{ext}")
        with (bz2.open if ext == ".nii.bz2" else open)(path, "rb") as source, open(plain, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 22)
        image = sitk.ReadImage(str(plain))
        _check_nifti_data(plain, path)
        return image


def _check_nifti_data(file: Path, path: Path) -> None:
    """InputError naming ``path`` for what ITK 5 hides when it reads the NIfTI ``file``.

    ITK reads a short NIfTI (plain or gzipped) without complaint, zeros where the data end, and
    replaces NaN and infinite voxels with 0 (ITK pull request 6683, fixed in ITK 6).
    """
    compressed = file.name.lower().endswith(".gz")
    with (gzip.open if compressed else open)(file, "rb") as stream:
        head = stream.read(540)
        kind = nib.Nifti2Header if head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Header
        try:  # the header only, not its extensions
            header = kind.from_fileobj(io.BytesIO(head[: kind.sizeof_hdr]), check=False)
            offset, dtype = int(header["vox_offset"]), header.get_data_dtype()
            count = int(np.prod(header.get_data_shape()))
        except Exception:  # a header ITK read but nibabel cannot parse: nothing to compare against
            return
        floating = dtype.kind in "fc"
        expected = offset + count * dtype.itemsize
        if compressed and not floating and _gzip_trailer_size(file) == expected % 2**32:
            return  # complete; a cut-off file ends in compressed data, which matches by chance once in 2**32
        try:
            if floating:
                data = head + stream.read()
                size = len(data)
            elif compressed:
                size = len(head) + sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 22), b""))
            else:
                size = file.stat().st_size
        except EOFError:
            raise InputError(path, "file is truncated (the compressed data ends early)") from None
    if size < expected:
        raise InputError(path, f"file is truncated ({size} of {expected} bytes)")
    if floating and not np.isfinite(np.frombuffer(data, dtype=dtype, count=count, offset=offset)).all():
        raise InputError(path, "image contains NaN or infinite voxel values")


def _gzip_trailer_size(file: Path) -> int:
    """The uncompressed size (mod 2**32) that a complete gzip file records in its last 4 bytes (RFC 1952)."""
    with open(file, "rb") as stream:
        stream.seek(-4, io.SEEK_END)
        return int.from_bytes(stream.read(4), "little")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # ITK messages carry the source location first; the description is the last line.
    detail = lines[-1] if lines else type(error).__name__
    return detail.removeprefix("Description: ").removeprefix("ITK ERROR: ")[:200]


def check_image(image: sitk.Image, path: str | Path) -> None:
    """InputError unless ``image`` is a scalar 3D volume with finite voxels (within float32's range), not all zero."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path,
            f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector image); "
            "expected a scalar MRI volume",
        )
    size = image.GetSize()
    if image.GetDimension() != 3 or min(size) < 2:
        shape = "x".join(str(s) for s in size)
        dimension = sum(s > 1 for s in size)  # a single-slice 3D file is a 2D image
        raise InputError(path, f"image is {dimension}D (size {shape}); expected a 3D volume")
    voxels = sitk.GetArrayViewFromImage(image)  # no copy; used only while ``image`` is alive, here
    if voxels.dtype.kind in "fc":  # integer voxels are always finite
        if not np.isfinite(voxels).all():
            raise InputError(path, "image contains NaN or infinite voxel values")
        if voxels.dtype.itemsize > 4 and max(float(voxels.max()), -float(voxels.min())) > float(np.finfo(np.float32).max):
            raise InputError(path, "image has voxel values beyond the float32 range")
    if not voxels.any():
        raise InputError(path, "image is all zeros")


def _read_volume(path: str | Path) -> sitk.Image:
    image = read_image(path)
    check_image(image, path)
    return image


def read_volumes(paths: Mapping[str, str | Path]) -> dict[str, sitk.Image]:
    """Read and check several volumes at once (decompression and ITK release the GIL); errors in ``paths`` order."""
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        futures = {key: pool.submit(_read_volume, path) for key, path in paths.items()}
        return {key: future.result() for key, future in futures.items()}


def check_distinct_files(paths: Mapping[str, str | Path]) -> None:
    """InputError when one file is given for two sequences."""
    seen: dict[Path, str] = {}
    for modality in MODALITIES:
        key = Path(paths[modality]).resolve()
        if key in seen:
            raise InputError(paths[modality], f"is given as both {DISPLAY_NAMES[seen[key]]} and {DISPLAY_NAMES[modality]}")
        seen[key] = modality


def check_distinct_sequences(data: np.ndarray, names: Sequence[str]) -> None:
    """InputError naming ``names[b]`` when channel ``b`` of ``data`` (MODALITIES order) holds exactly the voxels of
    an earlier channel: a sequence copied under another's name would otherwise give a confident wrong segmentation.
    A sparse sample is compared first, so different channels cost about a millisecond."""
    flat = data.reshape(len(data), -1)
    sample = flat[:, ::97]
    for b in range(1, len(flat)):
        for a in range(b):
            if np.array_equal(sample[a], sample[b]) and np.array_equal(flat[a], flat[b]):
                raise InputError(
                    names[b],
                    f"has the same voxel values as the {DISPLAY_NAMES[MODALITIES[a]]} image ({names[a]}); "
                    "T1, T1ce, T2 and FLAIR must be four different images",
                )


LOW_COVERAGE = 0.9  # a resampled sequence holding less of the T1ce's brain than this gets a warning


# A T1ce whose non-zero voxels fill more than this is taken not to be skull-stripped: the 35 BraTS 2018 cases here
# fill 1.15-1.73 L, a head with its skull and scalp about twice that, a noisy background the whole field of view. (Not
# a fraction of the volume: a skull-stripped case cropped to its brain is mostly non-zero too.)
NOT_STRIPPED_LITRES = 2.2


def skull_stripping_warning(reference_channel: np.ndarray, voxel_ml: float, name: str | Path) -> str | None:
    """A warning when the T1ce looks like a whole head (skull, scalp or a noisy background around the brain): the
    models were trained on skull-stripped sequences and take every non-zero voxel for brain."""
    voxels = np.count_nonzero(reference_channel)
    litres, fraction = voxels * voxel_ml / 1000.0, voxels / max(reference_channel.size, 1)
    if litres <= NOT_STRIPPED_LITRES:
        return None
    return (
        f"{name}: its non-zero voxels fill {litres:.1f} L ({100 * fraction:.0f}% of the volume), more than a "
        "skull-stripped brain (BraTS: 1.1-1.8 L); the models expect skull-stripped, co-registered sequences with a "
        "zero background, as BraTS provides them"
    )


def _warn(warnings: list[str], message: str | None) -> None:
    """Log ``message`` as a warning and keep it for the outputs."""
    if message:
        log.warning("brain-tumor-seg: warning: %s", message)
        warnings.append(message)


def brain_coverage(channel: np.ndarray, reference_channel: np.ndarray) -> float:
    """The fraction of the reference sequence's non-zero voxels (its brain, when skull-stripped) where ``channel``
    is non-zero too: how much of the T1ce's brain a sequence resampled onto its grid actually covers."""
    brain = reference_channel != 0
    return float(np.count_nonzero(brain & (channel != 0)) / max(np.count_nonzero(brain), 1))


def load_case(paths: Mapping[str, str | Path]) -> Case:
    """Load four modality files (keys of :data:`MODALITIES`) onto the T1ce grid."""
    missing = [m for m in MODALITIES if not paths.get(m)]
    if missing:
        raise InputError("inputs", f"missing {', '.join(DISPLAY_NAMES[m] for m in missing)} image")
    check_distinct_files(paths)
    images = read_volumes({m: paths[m] for m in MODALITIES})
    reference = images[REFERENCE_MODALITY]
    data = np.empty((len(MODALITIES), *reversed(reference.GetSize())), dtype=np.float32)
    resampled = []
    for channel, modality in enumerate(MODALITIES):
        image = images[modality]
        if same_grid(image, reference):
            data[channel] = sitk.GetArrayViewFromImage(image)  # stored type -> float32 in one copy, no temporary
            continue
        if overlap_fraction(image, reference) <= 0.0:
            raise InputError(paths[modality], f"does not overlap the {DISPLAY_NAMES[REFERENCE_MODALITY]} volume in space")
        moved = resample_to(sitk.Cast(image, sitk.sitkFloat32), reference)
        data[channel] = sitk.GetArrayViewFromImage(moved)
        if not data[channel].any():
            raise InputError(paths[modality], f"does not overlap the {DISPLAY_NAMES[REFERENCE_MODALITY]} volume in space")
        resampled.append(modality)
    coverage = {m: brain_coverage(data[MODALITIES.index(m)], data[MODALITIES.index(REFERENCE_MODALITY)]) for m in resampled}
    warnings: list[str] = []
    for modality, fraction in coverage.items():
        if fraction < LOW_COVERAGE:
            _warn(warnings, (
                f"{paths[modality]}: covers only {100 * fraction:.0f}% of the {DISPLAY_NAMES[REFERENCE_MODALITY]} "
                "volume's non-zero voxels; the rest is read as empty"
            ))  # fmt: skip
    check_distinct_sequences(data, [str(paths[m]) for m in MODALITIES])
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    _warn(warnings, skull_stripping_warning(data[MODALITIES.index(REFERENCE_MODALITY)], voxel_ml, paths[REFERENCE_MODALITY]))
    grid = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(reference)
    return Case(grid, data, {m: str(paths[m]) for m in MODALITIES}, resampled, coverage, warnings)


def load_case_4d(path: str | Path) -> Case:
    """Load one 4D image whose channels are FLAIR, T1w, T1gd, T2w (Medical Segmentation Decathlon Task01)."""
    image = read_image(path)
    if image.GetDimension() == 4:
        size = image.GetSize()
        if size[3] != 4:
            raise InputError(path, f"4D image has {size[3]} channels; expected 4 (FLAIR, T1w, T1gd, T2w)")
        channels = [sitk.Extract(image, (*size[:3], 0), (0, 0, 0, c)) for c in range(4)]
    elif image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() == 4:
        channels = [sitk.VectorIndexSelectionCast(image, c) for c in range(4)]
    else:
        raise InputError(path, "expected a 4D image with 4 channels (FLAIR, T1w, T1gd, T2w)")
    names = {m: f"{path} (channel {c}, {DISPLAY_NAMES[m]})" for c, m in enumerate(MSD_CHANNEL_ORDER)}
    reference = channels[MSD_CHANNEL_ORDER.index(REFERENCE_MODALITY)]
    data = np.empty((len(MODALITIES), *reversed(reference.GetSize())), dtype=np.float32)
    for modality, channel in zip(MSD_CHANNEL_ORDER, channels, strict=True):  # checked in the file's channel order
        check_image(channel, names[modality])
        data[MODALITIES.index(modality)] = sitk.GetArrayViewFromImage(channel)  # one copy, while ``channel`` lives
    grid = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(reference)
    check_distinct_sequences(data, [names[m] for m in MODALITIES])
    warnings: list[str] = []
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    _warn(warnings, skull_stripping_warning(data[MODALITIES.index(REFERENCE_MODALITY)], voxel_ml, names[REFERENCE_MODALITY]))
    return Case(grid, data, {m: f"{path}#{MSD_CHANNEL_ORDER.index(m)}" for m in MODALITIES}, warnings=warnings)


def resolve_inputs(input_path: str | Path | None = None, **files: str | Path | None) -> Case:
    """Load a case from a folder, a 4D file, or explicit per-modality files (``t1=``, ``t1ce=``, ...)."""
    explicit = {m: files.get(m) for m in MODALITIES if files.get(m)}
    if input_path is not None and explicit:
        raise InputError(input_path, "give either an input folder/4D file or the four --t1/--t1ce/--t2/--flair files, not both")
    if explicit:
        return load_case(explicit)
    if input_path is None:
        raise InputError("inputs", "no input given; use --input FOLDER, --t1/--t1ce/--t2/--flair FILES, or --sample")
    path = Path(input_path)
    if path.is_dir():
        images = [p for p in sorted(path.iterdir()) if p.is_file() and image_extension(p)]
        named = [p for p in images if modality_of(p)]
        if not named and len(images) == 1:
            return load_case_4d(images[0])
        return load_case(find_modalities(path))
    if not path.exists():
        raise InputError(path, "file or folder not found")
    return load_case_4d(path)
