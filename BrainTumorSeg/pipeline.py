"""One case from loaded volumes to a label map on the reference grid.

reorient to canonical RAS -> mask, crop, z-score -> network per model card ->
labels -> undo the crop and the reorientation. The result is indexed exactly like
``sitk.GetArrayFromImage(case.reference)``: same grid as the T1ce input.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from .case import MODALITIES, Case
from .device import autocast_dtype, resolve_device
from .geometry import Reorientation
from .inference import Progress, predict_slices
from .models.registry import ModelCard
from .postprocess import probabilities_to_labels
from .preprocess import prepare


def segment_case(
    case: Case,
    card: ModelCard,
    network: nn.Module | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: Progress | None = None,
) -> np.ndarray:
    """Internal labels (0 background, 1 NCR/NET, 2 ED, 3 ET) on the case's reference grid."""
    mode = card.inference.get("mode")
    if mode != "slices":
        raise ValueError(f"model {card.id}: inference mode {mode!r} is not supported")
    torch_device = resolve_device(device)
    network = network if network is not None else card.load()
    orientation = Reorientation.of(case.reference)
    channels = case.data[[MODALITIES.index(m) for m in card.modalities]]
    prepared = prepare(orientation.to_canonical(channels))
    probabilities = predict_slices(
        network,
        prepared.data,
        axis=card.inference.get("axis", "axial"),
        context=card.context_slices,
        output_type=card.outputs["type"],
        batch_size=int(card.inference.get("batch_size", 16)),
        device=torch_device,
        dtype=autocast_dtype(torch_device, precision),
        progress=progress,
    )
    labels = probabilities_to_labels(probabilities, card.outputs, prepared.mask)
    return orientation.from_canonical(prepared.crop.paste(labels))
