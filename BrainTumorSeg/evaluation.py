"""Evaluating predicted label maps against ground truth: find the files, match them by case id,
score each case (:mod:`metrics`), write the per-case CSV and summarize the cohort.

A case id is a label file's name without its extension and without a trailing ``_seg``
or ``-seg``: ``Brats18_2013_2_1_seg.nii.gz`` (BraTS 2017-2021 ground truth),
``BraTS-GLI-00000-000-seg.nii.gz`` (BraTS 2023) and ``BraTS-GLI-00000-000.nii.gz`` (a
BraTS 2023 submission) name the cases they belong to, and so do this package's outputs.
A folder is searched together with its immediate subfolders (one folder per case, as in
BraTS downloads and ``batch`` outputs). Modality images (``*_t1``, ``*-t2f``, ...), 3D
Slicer ``.seg.nrrd`` files (written beside every NIfTI output, in internal labels) and the
``*_probabilities`` and ``*_uncertainty`` maps of ``--probabilities`` are not label maps here.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .case import image_extension, modality_of, read_image
from .errors import InputError
from .export import OUTPUT_SUFFIXES, volumes_ml
from .geometry import same_grid
from .labels import CONVENTIONS, REGIONS, detect_convention, from_convention
from .metrics import METRICS, region_metrics

LABEL_SUFFIXES: tuple[str, ...] = ("_seg", "-seg")
AUTO = "auto"
CONVENTION_CHOICES: tuple[str, ...] = (AUTO, *CONVENTIONS)
# Column name of each metric: the unit goes into the name where there is one.
METRIC_COLUMNS: dict[str, str] = {"dice": "dice", "hd95": "hd95_mm", "sensitivity": "sensitivity", "specificity": "specificity"}


def metric_column(metric: str, region: str) -> str:
    """CSV column of one metric of one region, e.g. ``dice_WT``, ``hd95_mm_ET``."""
    return f"{METRIC_COLUMNS[metric]}_{region}"


def metric_columns() -> list[str]:
    """All metric columns, metric by metric, regions in WT, TC, ET order."""
    return [metric_column(m, r) for m in METRICS for r in REGIONS]


def volume_columns(kind: str) -> list[str]:
    """Region volume columns of ``kind`` (``pred`` or ``truth``), e.g. ``truth_WT_ml``."""
    return [f"{kind}_{region}_ml" for region in REGIONS]


CSV_COLUMNS: list[str] = [
    "case_id",
    "prediction",
    "truth",
    "prediction_labels",
    "truth_labels",
    *metric_columns(),
    *volume_columns("pred"),
    *volume_columns("truth"),
]


def label_case_id(path: Path) -> str:
    """The case id a label file's name gives (see the module docstring)."""
    ext = image_extension(path) or ""
    stem = path.name[: len(path.name) - len(ext)]
    for suffix in LABEL_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


NOT_LABEL_MAPS: tuple[str, ...] = tuple(OUTPUT_SUFFIXES[kind] for kind in ("segmentation", "probabilities", "uncertainty"))


def is_label_file(path: Path) -> bool:
    """An image file that is not a modality image, not hidden, and none of this package's other image outputs
    (the Slicer segmentation, class probabilities and uncertainty written beside each label map)."""
    name = path.name.lower()
    return (
        path.is_file()
        and not name.startswith(".")
        and image_extension(path) is not None
        and modality_of(path) is None
        and not name.endswith(NOT_LABEL_MAPS)
    )


def find_label_files(folder: Path) -> dict[str, Path]:
    """Label maps in ``folder`` and its immediate non-hidden subfolders, by case id; InputError on a doubled id."""
    found: dict[str, Path] = {}
    places = [folder, *sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]
    for place in places:
        for path in sorted(place.iterdir()):
            if not is_label_file(path):
                continue
            case_id = label_case_id(path)
            if case_id in found:
                raise InputError(folder, f"two label maps for case {case_id}: {found[case_id]} and {path}")
            found[case_id] = path
    return found


@dataclass(frozen=True)
class CasePair:
    """One case's prediction and ground-truth files."""

    case_id: str
    prediction: Path
    truth: Path


def _label_files(path: Path) -> dict[str, Path]:
    if path.is_dir():
        found = find_label_files(path)
        if not found:
            raise InputError(path, "no label maps found (in the folder or its subfolders)")
        return found
    if not path.exists():
        raise InputError(path, "file or folder not found")
    return {label_case_id(path): path}


def match_cases(prediction: Path, truth: Path) -> tuple[list[CasePair], list[str]]:
    """Pairs of prediction and truth files by case id, and the ids of truth cases that have no prediction.

    Two files are one pair whatever their names. Otherwise every prediction needs a ground truth
    (InputError naming the first ones that have none).
    """
    prediction, truth = Path(prediction), Path(truth)
    predicted, truths = _label_files(prediction), _label_files(truth)
    if prediction.is_file() and truth.is_file():
        (case_id, pred_path), truth_path = next(iter(predicted.items())), next(iter(truths.values()))
        return [CasePair(case_id, pred_path, truth_path)], []
    missing = [case_id for case_id in predicted if case_id not in truths]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(truth, f"no ground truth for case {shown}")
    pairs = [CasePair(case_id, path, truths[case_id]) for case_id, path in sorted(predicted.items())]
    return pairs, sorted(set(truths) - set(predicted))


def read_labels(path: str | Path, convention: str = AUTO) -> tuple[np.ndarray, sitk.Image, str]:
    """Internal labels (indexed like the SimpleITK array), the image, and the convention used.

    ``convention`` is ``auto`` (:func:`labels.detect_convention`) or a name from :data:`labels.CONVENTIONS`.
    """
    image = read_image(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "label map is not a scalar 3D image")
    values = sitk.GetArrayFromImage(image)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise InputError(path, "label map holds non-integer values")
        values = values.astype(np.int64)
    try:
        used = detect_convention(values) if convention == AUTO else convention
        return from_convention(values, used), image, used
    except ValueError as error:
        raise InputError(path, str(error)) from None


def array_spacing(image: sitk.Image) -> tuple[float, ...]:
    """Voxel spacing in mm in SimpleITK-array axis order ``(k, j, i)``."""
    return tuple(float(s) for s in reversed(image.GetSpacing()))


def region_volumes(internal: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """Volume in mL of WT, TC and ET (those of :func:`export.volumes_ml`)."""
    volumes = volumes_ml(internal, voxel_ml)
    return {name: volumes[name] for name in REGIONS}


def metric_row(prediction: np.ndarray, truth: np.ndarray, truth_image: sitk.Image) -> dict[str, float]:
    """Metric and volume columns of one case (internal label maps on ``truth_image``'s grid)."""
    spacing = array_spacing(truth_image)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    scores = region_metrics(prediction, truth, spacing)
    row: dict[str, float] = {metric_column(m, r): scores[r][m] for m in METRICS for r in REGIONS}
    row.update({f"pred_{r}_ml": v for r, v in region_volumes(prediction, voxel_ml).items()})
    row.update({f"truth_{r}_ml": v for r, v in region_volumes(truth, voxel_ml).items()})
    return row


def check_same_grid(image: sitk.Image, path: str | Path, truth_image: sitk.Image, truth_path: str | Path) -> None:
    """InputError naming ``path`` when it is not on the ground truth's grid."""
    if image.GetSize() != truth_image.GetSize():
        size = "x".join(map(str, image.GetSize()))
        raise InputError(
            path, f"label map is {size} voxels, its ground truth {truth_path} is {'x'.join(map(str, truth_image.GetSize()))}"
        )
    if not same_grid(image, truth_image):
        raise InputError(
            path, f"label map is not on the grid of its ground truth {truth_path} (spacing, origin or direction differ)"
        )


def evaluate_pair(pair: CasePair, prediction_labels: str = AUTO, truth_labels: str = AUTO) -> dict[str, Any]:
    """One CSV row: case id, files, conventions, metrics of WT/TC/ET, and region volumes."""
    prediction, pred_image, pred_convention = read_labels(pair.prediction, prediction_labels)
    truth, truth_image, truth_convention = read_labels(pair.truth, truth_labels)
    check_same_grid(pred_image, pair.prediction, truth_image, pair.truth)
    row: dict[str, Any] = {
        "case_id": pair.case_id,
        "prediction": str(pair.prediction),
        "truth": str(pair.truth),
        "prediction_labels": pred_convention,
        "truth_labels": truth_convention,
    }
    row.update(metric_row(prediction, truth, truth_image))
    return row


def evaluate_pairs(
    pairs: Iterable[CasePair],
    prediction_labels: str = AUTO,
    truth_labels: str = AUTO,
    on_case: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows of :func:`evaluate_pair` for every pair; ``on_case`` is called after each."""
    rows = []
    for pair in pairs:
        rows.append(evaluate_pair(pair, prediction_labels, truth_labels))
        if on_case:
            on_case(rows[-1])
    return rows


@dataclass(frozen=True)
class Stats:
    """Mean, standard deviation (0 for one case), median and count of one metric over a cohort."""

    mean: float
    sd: float
    median: float
    n: int


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Stats]]:
    """Per region and metric, :class:`Stats` over the rows that have a value (empty values are skipped)."""
    rows = list(rows)
    out: dict[str, dict[str, Stats]] = {}
    for region in REGIONS:
        out[region] = {}
        for metric in METRICS:
            values = [float(v) for row in rows if (v := row.get(metric_column(metric, region))) not in (None, "")]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                out[region][metric] = Stats(statistics.fmean(values), sd, statistics.median(values), len(values))
    return out


_HEADINGS = {"dice": "Dice", "hd95": "HD95 (mm)", "sensitivity": "Sensitivity", "specificity": "Specificity"}


def format_summary(summary: Mapping[str, Mapping[str, Stats]]) -> list[str]:
    """A text table: one line per region, each metric as ``mean ± sd (median)``."""
    width = 26
    lines = [
        "region  " + "".join(f"{_HEADINGS[m]:<{width}}" for m in METRICS),
        "        " + "mean ± sd (median)".ljust(width) * 4,
    ]
    for region, stats in summary.items():
        cells = []
        for metric in METRICS:
            s = stats.get(metric)
            digits = 2 if metric == "hd95" else 3
            cells.append(f"{s.mean:.{digits}f} ± {s.sd:.{digits}f} ({s.median:.{digits}f})" if s else "-")
        lines.append(f"{region:<8}" + "".join(f"{c:<{width}}" for c in cells))
    return lines
