"""Label conventions, BraTS regions, segment names, colors and standard terminology.

Inside the package a label map always uses the *internal* indices
0 background, 1 necrotic / non-enhancing tumor core (NCR/NET), 2 edema (ED),
3 enhancing tumor (ET). Files are written and read in a named convention:

- ``brats2017`` (BraTS 2017-2021): 1 NCR/NET, 2 ED, 4 ET
- ``brats2023`` (BraTS 2023+):      1 NETC,    2 SNFH, 3 ET
- ``msd`` (Medical Segmentation Decathlon Task01): 1 edema, 2 non-enhancing tumor, 3 enhancing tumor

Regions (Menze et al., IEEE TMI 2015): whole tumor WT = NCR + ED + ET,
tumor core TC = NCR + ET, enhancing tumor ET.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

NCR, ED, ET = 1, 2, 3

CONVENTIONS: dict[str, tuple[int, int, int]] = {
    "brats2017": (1, 2, 4),
    "brats2023": (1, 2, 3),
    "msd": (2, 1, 3),  # never detected from the values (they are brats2023's): named by the user
}

REGIONS: dict[str, tuple[int, ...]] = {
    "WT": (NCR, ED, ET),
    "TC": (NCR, ET),
    "ET": (ET,),
}

# SNOMED CT codes as used by Slicer extensions (DESIGN.md section 5).
_CATEGORY = "SCT^49755003^Morphologically Altered Structure"
_ANATOMY = "SCT^12738006^Brain"


@dataclass(frozen=True)
class Segment:
    """One output segment: internal label, display name, color and terminology code."""

    label: int
    key: str
    name: str
    color: tuple[int, int, int]
    type_code: str

    @property
    def terminology(self) -> str:
        """The segment's terminology entry as 3D Slicer serializes it in a .seg.nrrd.

        The DICOM master list is the context that holds all three types (the General Anatomy list lacks
        SCT 86049000 "Neoplasm, Primary"), so Slicer's terminology selector finds every segment.
        """
        return (
            "Segmentation category and type - DICOM master list"
            f"~{_CATEGORY}~{self.type_code}~^^"
            f"~Anatomic codes - DICOM master list~{_ANATOMY}~^^"
        )


SEGMENTS: tuple[Segment, ...] = (
    # Colors: DICOM master list recommendations for necrosis and edema; the
    # neoplasm has none there, so an amber that stands out from both.
    Segment(NCR, "necrosis", "Necrotic and non-enhancing tumor core", (216, 191, 216), "SCT^6574001^Necrosis"),
    Segment(ED, "edema", "Edema", (140, 224, 228), "SCT^79654002^Edema"),
    Segment(ET, "enhancing", "Enhancing tumor", (255, 176, 0), "SCT^86049000^Neoplasm, Primary"),
)


def check_convention(convention: str) -> tuple[int, int, int]:
    """File label values (NCR, ED, ET) of a convention, or ValueError naming the choices."""
    try:
        return CONVENTIONS[convention]
    except KeyError:
        raise ValueError(f"unknown label convention {convention!r}; choose one of {', '.join(CONVENTIONS)}") from None


def to_convention(internal: np.ndarray, convention: str = "brats2017") -> np.ndarray:
    """Internal labels -> file labels of ``convention`` (uint8)."""
    lut = np.array((0, *check_convention(convention)), dtype=np.uint8)
    return lut[internal]


def shown_values(values: list) -> str:
    """Label values for a one-line message: all of a few, else the first ones and how many there are (an image given
    as a label map has thousands)."""
    if len(values) <= 8:
        return str(values)
    return f"[{', '.join(map(str, values[:5]))}, ... ({len(values)} values; is this an image rather than a label map?)]"


def from_convention(labels: np.ndarray, convention: str = "brats2017") -> np.ndarray:
    """File labels of ``convention`` -> internal labels; unknown values raise ValueError."""
    values = check_convention(convention)
    internal = np.zeros(labels.shape, dtype=np.uint8)
    known = labels == 0
    for index, value in enumerate(values, start=1):
        hit = labels == value
        internal[hit] = index
        known |= hit
    if not known.all():
        extra = sorted(set(np.unique(labels[~known]).tolist()))
        raise ValueError(f"label values {shown_values(extra)} are not in the {convention} convention (0, {values})")
    return internal


def detect_convention(labels: np.ndarray) -> str:
    """The convention of a file's label map, from the values it holds; ValueError when it fits none.

    A 4 means ``brats2017`` (ET = 4); a 3 without a 4 means ``brats2023`` (ET = 3). A map with
    only 0, 1 and 2 (no enhancing tumor) is ambiguous, but both conventions read it the same
    way (1 NCR/NET, 2 edema), so it is called ``brats2017``. Decathlon (``msd``) maps hold the values of
    ``brats2023`` with 1 and 2 swapped, so they cannot be told apart: the user names that convention.
    """
    values = set(np.unique(labels).tolist())
    unknown = sorted(values - {0, 1, 2, 3, 4})
    if unknown:
        known = "brats2017: 0, 1, 2, 4; brats2023: 0, 1, 2, 3"
        raise ValueError(f"label values {shown_values(unknown)} are in no known convention ({known})")
    if {3, 4} <= values:
        raise ValueError("label map holds both 3 and 4, which no convention does (brats2017: 0, 1, 2, 4; brats2023: 0, 1, 2, 3)")
    return "brats2023" if 3 in values else "brats2017"


def region_masks(internal: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean WT / TC / ET masks of an internal label map."""
    masks = {label: internal == label for label in {m for members in REGIONS.values() for m in members}}
    return {name: functools.reduce(np.logical_or, (masks[m] for m in members)) for name, members in REGIONS.items()}


def regions_to_labels(wt: np.ndarray, tc: np.ndarray, et: np.ndarray) -> np.ndarray:
    """Nested region masks -> internal labels. ET wins over TC, TC over WT (regions are nested)."""
    labels = np.zeros(wt.shape, dtype=np.uint8)
    labels[wt] = ED
    labels[tc] = NCR
    labels[et] = ET
    return labels
