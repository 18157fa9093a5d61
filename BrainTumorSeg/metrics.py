"""BraTS overlap metrics on label maps.

Empty regions follow the BraTS 2023 reference code's legacy convention: when
both prediction and truth are empty the Dice is 1; when only one is empty it is 0.
"""

from __future__ import annotations

import numpy as np

from .labels import region_masks


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def region_dice(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of WT, TC and ET between two internal label maps."""
    pred, true = region_masks(prediction), region_masks(truth)
    return {name: dice(pred[name], true[name]) for name in pred}
