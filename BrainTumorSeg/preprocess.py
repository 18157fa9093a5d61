"""Brain mask, crop to the brain, and per-channel z-score inside the mask.

Operates on canonical RAS arrays ``(C, x, y, z)`` (see :mod:`geometry`).
BraTS volumes are skull-stripped, so the brain is where any sequence is non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .geometry import Reorientation

if TYPE_CHECKING:
    from .case import Case


@dataclass(frozen=True)
class Crop:
    """A box inside a full array: per-axis (start, stop) and the full shape."""

    box: tuple[tuple[int, int], ...]
    full_shape: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.box)

    def paste(self, cropped: np.ndarray, fill: float = 0) -> np.ndarray:
        """Put a cropped array (any leading channel axes) back into the full spatial shape."""
        lead = cropped.shape[: cropped.ndim - len(self.full_shape)]
        full = np.full((*lead, *self.full_shape), fill, dtype=cropped.dtype)
        full[(..., *self.slices)] = cropped
        return full


def brain_mask(data: np.ndarray) -> np.ndarray:
    """Voxels where any channel is non-zero."""
    return np.any(data != 0, axis=0)


def bounding_crop(mask: np.ndarray, margin: int = 2) -> Crop:
    """The smallest box holding every true voxel of ``mask``, grown by ``margin`` voxels."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return Crop(tuple(box), mask.shape)


def zscore(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each channel minus its mean, over its standard deviation, inside ``mask``; zero outside."""
    out = np.zeros(data.shape, dtype=np.float32)
    for c, channel in enumerate(data):
        values = channel[mask]
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))  # float64: order-independent
        out[c][mask] = (values - np.float32(mean)) / np.float32(std if std > 0 else 1.0)
    return out


@dataclass
class Prepared:
    """Network input: normalised channels cropped to the brain, with what is needed to undo the crop."""

    data: np.ndarray
    mask: np.ndarray
    crop: Crop
    source: np.ndarray | None = field(default=None, repr=False, compare=False)  # the array it was made from


def prepare(canonical: np.ndarray, margin: int = 2) -> Prepared:
    """Mask, crop and z-score a canonical ``(C, x, y, z)`` case."""
    return prepare_oriented(canonical, UNCHANGED, margin)


UNCHANGED = Reorientation((0, 1, 2), (False, False, False))  # an array already in canonical order


def prepare_oriented(source: np.ndarray, orientation: Reorientation, margin: int = 2) -> Prepared:
    """:func:`prepare` of ``orientation.to_canonical(source)`` for a SimpleITK-ordered ``(C, k, j, i)`` case.

    The mask and its box are found in the source array and only the box is reoriented and normalised:
    the same result, without copying the whole reoriented volume (about 0.2 s less for a 240x240x155 case).
    """
    mask = brain_mask(source)
    box = bounding_crop(mask, margin)
    canonical_mask = orientation.to_canonical(mask[box.slices])
    data = zscore(orientation.to_canonical(source[(slice(None), *box.slices)]), canonical_mask)
    return Prepared(data, canonical_mask, Crop(*orientation.box_to_canonical(box.box, box.full_shape)), source)


def prepare_case(case: Case, margin: int = 2) -> Prepared:
    """The network input of a loaded case: :func:`prepare_oriented` of its four channels, reoriented from its
    reference grid (no PyTorch, so the CLI's `segment` command runs it while PyTorch is imported)."""
    return prepare_oriented(case.data, Reorientation.of(case.reference), margin)
