"""From network probabilities to a clean label map, and optional clean-up of that map.

Region outputs (WT, TC, ET sigmoid channels) are thresholded and nested
(ET inside TC inside WT wins in that order); class outputs take the arg-max.
Nothing is labelled outside the brain mask.

Clean-up steps (:class:`PostprocessOptions`, each off unless asked for, in this order):

- ``closing``: morphological closing of WT, TC and ET with a ball of this radius in voxels,
  then re-nested (fills small holes and gaps; the FC-DenseNet reimplementation's last step);
- ``keep_largest``: keep only the largest connected tumor (WT) component;
- ``min_component_ml``: drop tumor components smaller than this volume;
- ``et_to_core_ml``: when the enhancing tumor in total is smaller than this volume, relabel it as
  necrotic/non-enhancing core (a BraTS practice against false-positive enhancement in
  non-enhancing tumors, e.g. Isensee et al. 2018).

Components use 26-connectivity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage

from .labels import ET, NCR, regions_to_labels


def probabilities_to_labels(probabilities: np.ndarray, outputs: dict[str, Any], brain: np.ndarray | None = None) -> np.ndarray:
    """Internal labels from ``(K, ...)`` probabilities as the model card's ``outputs`` describes them.

    ``outputs["type"] == "regions"``: channels named in ``outputs["channels"]`` (WT, TC, ET),
    each above ``outputs["threshold"]`` (default 0.5). ``"classes"``: arg-max over channels whose
    internal labels are ``outputs["labels"]`` (default 0, 1, 2, 3).
    """
    if outputs["type"] == "regions":
        threshold = float(outputs.get("threshold", 0.5))
        masks = {name: probabilities[i] > threshold for i, name in enumerate(outputs["channels"])}
        labels = regions_to_labels(masks["WT"], masks["TC"], masks["ET"])
    elif outputs["type"] == "classes":
        lut = np.asarray(outputs.get("labels", (0, 1, 2, 3)), dtype=np.uint8)
        labels = lut[np.argmax(probabilities, axis=0)]
    else:
        raise ValueError(f"unknown output type {outputs['type']!r}")
    if brain is not None:
        labels[~brain] = 0
    return labels


@dataclass(frozen=True)
class PostprocessOptions:
    """Which clean-up steps run (all off by default); a model card's ``postprocess`` block sets its defaults."""

    closing: int = 0
    keep_largest: bool = False
    min_component_ml: float = 0.0
    et_to_core_ml: float = 0.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> PostprocessOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(values or {}) - known
        if unknown:
            raise ValueError(f"unknown postprocessing option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**(values or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def active(self) -> bool:
        return self != PostprocessOptions()


def _ball(radius: int) -> np.ndarray:
    grid = np.mgrid[(slice(-radius, radius + 1),) * 3]
    return (grid**2).sum(axis=0) <= radius**2


def tumor_box(labels: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of the labelled voxels grown by ``margin`` (within the array); ``None`` when nothing is labelled."""
    box = []
    for axis in range(labels.ndim):
        present = np.flatnonzero(labels.any(axis=tuple(a for a in range(labels.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(max(int(present[0]) - margin, 0), int(present[-1]) + margin + 1))
    return tuple(box)


def postprocess(labels: np.ndarray, options: PostprocessOptions, voxel_ml: float, brain: np.ndarray | None = None) -> np.ndarray:
    """Internal labels after the clean-up steps of ``options``; ``voxel_ml`` is one voxel's volume in mL.

    The steps run on the tumor's bounding box grown by the closing radius, which holds every voxel they can
    change (closing adds voxels only within its radius of the tumor; the other steps only remove): the same
    result as on the whole volume, in a fraction of the time.
    """
    box = tumor_box(labels, options.closing)
    result = np.zeros_like(labels)
    if box is not None:
        result[box] = clean_up(labels[box], options, voxel_ml, None if brain is None else brain[box])
    return result


def clean_up(labels: np.ndarray, options: PostprocessOptions, voxel_ml: float, brain: np.ndarray | None = None) -> np.ndarray:
    """The clean-up steps of :func:`postprocess` on the array as given."""
    labels = labels.copy()
    if options.closing > 0:
        ball = _ball(options.closing)
        pad = options.closing  # so closing is not cut at the array's edge

        def close(mask: np.ndarray) -> np.ndarray:
            padded = np.pad(mask, pad)
            return ndimage.binary_closing(padded, ball)[(slice(pad, -pad),) * 3]

        wt = close(labels > 0)
        tc = close((labels == NCR) | (labels == ET)) & wt
        et = close(labels == ET) & tc
        labels = regions_to_labels(wt, tc, et)
        if brain is not None:
            labels[~brain] = 0
    if options.keep_largest or options.min_component_ml > 0:
        components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
        if count:
            sizes = np.bincount(components.ravel())[1:]
            keep = sizes * voxel_ml >= options.min_component_ml
            if options.keep_largest:
                keep &= np.arange(count) == np.argmax(sizes)
            labels[~np.concatenate([[False], keep])[components]] = 0
    if options.et_to_core_ml > 0:
        enhancing = labels == ET
        if 0 < enhancing.sum() * voxel_ml < options.et_to_core_ml:
            labels[enhancing] = NCR
    return labels
