"""One case from loaded volumes to a label map on the reference grid.

reorient to canonical RAS -> mask, crop, z-score -> network per model card ->
labels -> undo the crop and the reorientation. The result is indexed exactly like
``sitk.GetArrayFromImage(case.reference)``: same grid as the T1ce input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .case import MODALITIES, Case
from .device import autocast_dtype, resolve_device
from .export import check_writable, write_outputs
from .geometry import Reorientation
from .inference import Progress, predict_slices, predict_with_flips
from .models.card import ModelCard
from .postprocess import probabilities_to_labels
from .preprocess import prepare


def predict_with_card(
    card: ModelCard,
    network: nn.Module,
    volume: np.ndarray,
    device: torch.device,
    dtype: torch.dtype | None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Probabilities of a prepared canonical volume, run the way the card's ``inference`` block says (no mirroring)."""
    return predict_slices(
        network,
        volume,
        axis=card.inference.get("axis", "axial"),
        context=card.context_slices,
        output_type=card.outputs["type"],
        batch_size=int(card.inference.get("batch_size", 16)),
        device=device,
        dtype=dtype,
        progress=progress,
    )


def segment_case(
    case: Case,
    card: ModelCard,
    network: nn.Module | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: Progress | None = None,
    flips: str | None = None,
) -> np.ndarray:
    """Internal labels (0 background, 1 NCR/NET, 2 ED, 3 ET) on the case's reference grid.

    ``flips`` (test-time mirroring, see :func:`inference.predict_with_flips`) defaults to the card's ``inference.flips``.
    """
    mode = card.inference.get("mode")
    if mode != "slices":
        raise ValueError(f"model {card.id}: inference mode {mode!r} is not supported")
    torch_device = resolve_device(device)
    network = network if network is not None else card.load()
    orientation = Reorientation.of(case.reference)
    channels = case.data[[MODALITIES.index(m) for m in card.modalities]]
    prepared = prepare(orientation.to_canonical(channels))

    dtype = autocast_dtype(torch_device, precision)

    def predict(volume: np.ndarray) -> np.ndarray:
        return predict_with_card(card, network, volume, torch_device, dtype, progress)

    probabilities = predict_with_flips(predict, prepared.data, flips or card.inference.get("flips", "none"))
    labels = probabilities_to_labels(probabilities, card.outputs, prepared.mask)
    return orientation.from_canonical(prepared.crop.paste(labels))


def segment_to_folder(
    case: Case,
    card: ModelCard,
    network: nn.Module,
    out: Path,
    case_id: str,
    convention: str = "brats2017",
    device: str = "auto",
    precision: str = "auto",
    flips: str | None = None,
    progress: Progress | None = None,
    report: bool = False,
) -> tuple[np.ndarray, dict[str, Path]]:
    """Segment a case and write its outputs (:func:`export.write_outputs`) into ``out``; returns labels and paths.

    ``out`` is created when needed and removed again when the run fails and it is still empty,
    so a failed case leaves nothing behind. With ``report`` a PNG of the result
    (:func:`report.write_case_report`) is written with the other outputs.
    """
    created = check_writable(out)
    try:
        labels = segment_case(case, card, network, device=device, precision=precision, progress=progress, flips=flips)
        extras: dict[str, tuple[str, Callable[[Path], None]]] = {}
        if report:
            from .report import write_case_report  # matplotlib only when asked for

            def write_report(path: Path) -> None:
                write_case_report(path, case, labels, case_id, card.id)

            extras["report"] = (f"{case_id}_report.png", write_report)
        paths = write_outputs(out, case_id, labels, case.reference, card.id, case.sources, convention, extras)
    except BaseException:
        if created:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    return labels, paths
