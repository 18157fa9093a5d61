"""Shared by the training tests: a tiny data set of real BraTS cases cropped around their tumors, made once per session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
BRATS = ROOT.parent / "shared" / "data" / "brats"
needs_brats = pytest.mark.skipif(not BRATS.is_dir(), reason="shared BraTS cases not beside the repository")
TRAIN = ["Brats18_CBICA_AQR_1", "Brats18_2013_20_1"]
VALIDATION = ["Brats18_CBICA_ARZ_1"]
# The validation case, cut closer around its tumor (SimpleITK (i, j, k) order): dense and windowed validation is most
# of a tiny training run's time.
VALIDATION_CROP = (slice(70, 150), slice(70, 154), slice(80, 112))


@dataclass(frozen=True)
class TinyData:
    """Cropped case folders, a split file and a cache folder shared by the tests of one session."""

    data: Path
    split: Path
    cache: Path

    def args(self, out: Path) -> list[str]:
        return ["--data", str(self.data), "--split", str(self.split), "--out", str(out), "--cache", str(self.cache)]


_made: dict[str, TinyData] = {}


def tiny_data(tmp_path_factory: pytest.TempPathFactory, crop_case) -> TinyData:
    """Make (once per session) the cropped cases, ``split.json`` and an empty cache folder."""
    if "data" not in _made:
        root = tmp_path_factory.mktemp("tiny-brats")
        for case in TRAIN:
            crop_case(BRATS / case, root / "data" / case)
        for case in VALIDATION:
            copy_cropped(BRATS / case, root / "data" / case, VALIDATION_CROP)
        split = root / "split.json"
        split.write_text(json.dumps({"train": TRAIN, "validation": VALIDATION}))
        _made["data"] = TinyData(root / "data", split, root / "cache")
    return _made["data"]


def copy_cropped(source: Path, target: Path, crop: tuple[slice, ...]) -> Path:
    """Copy a case folder's images and ground truth cut to ``crop`` (SimpleITK (i, j, k) order; geometry kept) as
    ``.nii.gz`` into ``target``; returns ``target``."""
    from BrainTumorSeg.case import read_image

    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if ".nii" in path.name:
            name = path.name.split(".nii")[0] + ".nii.gz"
            sitk.WriteImage(read_image(path)[crop], str(target / name), useCompression=True)
    return target
