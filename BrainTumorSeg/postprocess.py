"""From network probabilities to a clean label map.

Region outputs (WT, TC, ET sigmoid channels) are thresholded and nested
(ET inside TC inside WT wins in that order); class outputs take the arg-max.
Nothing is labelled outside the brain mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .labels import regions_to_labels


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
