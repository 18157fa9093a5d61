"""Network outputs as probabilities: region and class forms, averaging models, and uncertainty.

Models give either overlapping region probabilities (WT, TC, ET sigmoids) or exclusive class
probabilities (softmax over background, NCR/NET, edema, enhancing). Averaging models of one
kind stays in that kind, so an ensemble of one model decides exactly like that model; models
of both kinds are averaged as regions, the form BraTS evaluates. Class probabilities of a
region model come from nesting the regions (ET inside TC inside WT).
"""

from __future__ import annotations

import numpy as np

REGION_CHANNELS = ("WT", "TC", "ET")
CLASS_CHANNELS = ("background", "necrotic_core", "edema", "enhancing")  # internal labels 0, 1, 2, 3


def _regions_of(probabilities: np.ndarray, channels: list[str] | tuple[str, ...]) -> np.ndarray:
    order = [list(channels).index(name) for name in REGION_CHANNELS]
    return probabilities if order == list(range(len(probabilities))) else probabilities[order]  # no copy when in order


def regions_to_classes(regions: np.ndarray) -> np.ndarray:
    """``(3, ...)`` WT/TC/ET probabilities -> ``(4, ...)`` class probabilities summing to 1 (regions made nested first)."""
    classes = np.empty((4, *regions.shape[1:]), np.float32)  # filled in place: no temporaries of a whole channel
    background, core, edema, enhancing = classes
    np.clip(regions[2], 0, 1, out=enhancing)
    np.maximum(np.clip(regions[1], 0, 1, out=core), enhancing, out=core)  # TC for now
    np.maximum(np.clip(regions[0], 0, 1, out=edema), core, out=edema)  # WT for now
    np.subtract(1, edema, out=background)  # 1 - WT
    edema -= core  # WT - TC
    core -= enhancing  # TC - ET
    return classes


def classes_to_regions(classes: np.ndarray, labels: tuple[int, ...] = (0, 1, 2, 3)) -> np.ndarray:
    """``(K, ...)`` class probabilities whose channels are internal ``labels`` -> ``(3, ...)`` WT/TC/ET probabilities."""
    by_label = {label: classes[i] for i, label in enumerate(labels)}
    zero = np.zeros_like(classes[0])
    ncr, ed, et = (by_label.get(label, zero) for label in (1, 2, 3))
    return np.stack([ncr + ed + et, ncr + et, et]).astype(np.float32)


def as_regions(probabilities: np.ndarray, outputs: dict) -> np.ndarray:
    """A model's output in WT/TC/ET order, whatever its kind."""
    if outputs["type"] == "regions":
        return _regions_of(probabilities, outputs["channels"])
    return classes_to_regions(probabilities, tuple(outputs.get("labels", (0, 1, 2, 3))))


def as_classes(probabilities: np.ndarray, outputs: dict) -> np.ndarray:
    """A model's output as class probabilities of internal labels 0-3."""
    if outputs["type"] == "regions":
        return regions_to_classes(_regions_of(probabilities, outputs["channels"]))
    labels = tuple(outputs.get("labels", (0, 1, 2, 3)))
    full = np.zeros((len(CLASS_CHANNELS), *probabilities.shape[1:]), dtype=np.float32)
    for i, label in enumerate(labels):
        full[label] += probabilities[i]
    return full


def average(outputs: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
    """The mean of several models' probabilities and the ``outputs`` description that decides on it.

    One kind: that kind's mean (for class models, with one label layout). Mixed kinds: the mean
    region probabilities, thresholded at 0.5. One model: its own probabilities, not copied.
    """
    if len(outputs) == 1:
        return outputs[0]
    kinds = {(o["type"], tuple(o.get("labels", ()))) for _, o in outputs}
    if len(kinds) == 1 and outputs[0][1]["type"] == "classes":
        return _mean([p for p, _ in outputs]), outputs[0][1]
    if len(kinds) == 1 and len({tuple(o["channels"]) for _, o in outputs}) == 1:
        thresholds = {float(o.get("threshold", 0.5)) for _, o in outputs}
        description = dict(outputs[0][1]) | {"threshold": thresholds.pop() if len(thresholds) == 1 else 0.5}
        return _mean([p for p, _ in outputs]), description
    regions = _mean([as_regions(p, o) for p, o in outputs])
    return regions, {"type": "regions", "channels": list(REGION_CHANNELS), "threshold": 0.5}


def _mean(arrays: list[np.ndarray]) -> np.ndarray:
    """Element-wise float32 mean, summed in place (``np.mean`` over a list first stacks a copy of all of them)."""
    total = arrays[0].astype(np.float32, copy=True)
    for array in arrays[1:]:
        total += array
    total /= len(arrays)
    return total


def normalized_entropy(classes: np.ndarray) -> np.ndarray:
    """Per-voxel entropy of class probabilities divided by its maximum, log(K): 0 certain, 1 uniform."""
    entropy = np.zeros(classes.shape[1:], np.float32)
    for channel in classes:  # one class at a time: no temporaries the size of all of them
        p = np.clip(channel, 1e-7, 1.0, dtype=np.float32)
        entropy -= p * np.log(p)
    entropy /= np.float32(np.log(classes.shape[0]))
    return entropy
