"""Fill the Slicer panel: which loaded volume is T1, T1ce, T2 or FLAIR (from its name), and what a model is.

Standard library only, so the panel works before PyTorch and the other dependencies are installed.
The BraTS name endings here are the ones :data:`BrainTumorSeg.case.NAME_SUFFIXES` recognises in
file names (a test keeps the two in step); other common names are matched by words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .models.card import ModelCard

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

# BraTS 2017-2021 and 2023+ name endings (as in case.NAME_SUFFIXES), most specific first.
_ENDINGS: tuple[tuple[str, str], ...] = (
    ("_t1ce", "t1ce"),
    ("-t1c", "t1ce"),
    ("_flair", "flair"),
    ("-t2f", "flair"),
    ("_t1", "t1"),
    ("-t1n", "t1"),
    ("_t2", "t2"),
    ("-t2w", "t2"),
)

# Words (split on anything but letters and digits) naming a sequence, checked in this order.
_WORDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("flair", frozenset({"flair", "t2f", "t2flair"})),
    ("t1ce", frozenset({"t1ce", "t1c", "t1gd", "t1post", "gd", "gad", "contrast", "post", "ce", "t1wce", "postcontrast"})),
    ("t2", frozenset({"t2", "t2w"})),
    ("t1", frozenset({"t1", "t1w", "t1n", "t1pre", "mprage"})),
)


def guess_modality(name: str) -> str | None:
    """The sequence a volume's name suggests ("t1", "t1ce", "t2", "flair"), or None."""
    lowered = name.strip().lower()
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        lowered = lowered.removesuffix(ext)
    for ending, modality in _ENDINGS:
        if lowered.endswith(ending):
            return modality
    words = set(re.split(r"[^a-z0-9]+", lowered)) - {""}
    for modality, keys in _WORDS:
        if words & keys:
            return modality
    return None


def assign_modalities(names: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Map each modality to the id of the first volume whose name suggests it.

    ``names`` yields (id, name) pairs, e.g. (node ID, node name); a volume is used for one modality at most.
    """
    assigned: dict[str, str] = {}
    for volume_id, name in names:
        modality = guess_modality(name)
        if modality and modality not in assigned and volume_id not in assigned.values():
            assigned[modality] = volume_id
    return assigned


def repeated_input(volume_ids: dict[str, str]) -> tuple[str, str] | None:
    """The first two modalities (in :data:`MODALITIES` order) given the same volume, by id, or None when all differ."""
    first_with: dict[str, str] = {}
    for modality in MODALITIES:
        volume_id = volume_ids[modality]
        if volume_id in first_with:
            return first_with[volume_id], modality
        first_with[volume_id] = modality
    return None


def input_file_name(volume_name: str, modality: str) -> str:
    """The file a panel input is exported to for the CLI: the volume's name (so an error about the file, and the
    case id of the outputs, name the volume the user chose), made safe for any file system, then the sequence."""
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", volume_name).strip("._-")[:60] or "volume"
    return f"{safe}_{modality}.nrrd"


def model_label(card: ModelCard) -> str:
    """The text of a model in the model selector."""
    return f"{card.name or card.id} (default)" if card.default else (card.name or card.id)


def model_tooltip(card: ModelCard) -> str:
    """Description, validation Dice and CPU time of a model, for the selector's tooltip."""
    lines = [card.name or card.id]
    if card.description:
        lines.append(card.description)
    if card.is_ensemble:
        lines.append(f"Ensemble of: {', '.join(card.members)}")
    dice = card.validation.get("dice", {})
    if dice:
        scores = ", ".join(f"{region} {dice[region]:.3f}" for region in ("WT", "TC", "ET") if region in dice)
        cases = card.validation.get("cases")
        lines.append(f"Validation Dice: {scores}" + (f" ({cases} cases)" if cases else ""))
    else:
        lines.append("Validation Dice: not measured")
    seconds = card.validation.get("seconds_per_case")
    lines.append(f"CPU time: about {seconds:.0f} s per case" if seconds else "CPU time: not measured")
    lines.append(f"Model id: {card.id}")
    return "\n".join(lines)
