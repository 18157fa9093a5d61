"""The choices a user makes for one segmentation run, and the ``brain-tumor-seg segment`` arguments they become.

The Slicer panel binds these enums to its combo boxes (each enum's ``label`` is the text shown);
:func:`segment_arguments` turns a choice into CLI flags. ``MODEL`` ("model default") adds no
flag, so the model card decides. :func:`offered_models` lists the models the panel offers,
with those of the user's models folder. Standard library only (model cards are read without PyTorch).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .models.card import ModelCard, ModelCatalog, find_models
from .models.ensemble import member_cards
from .slicer_inputs import model_label, model_tooltip

MODALITY_FLAGS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")


class _Labelled(enum.Enum):
    """An enum whose members carry (CLI value, label shown in the GUI)."""

    def __new__(cls, value: str, label: str):
        member = object.__new__(cls)
        member._value_ = value
        member._label = label
        return member

    def label(self) -> str:
        return self._label


class Device(_Labelled):
    AUTO = ("auto", "Auto (GPU if available)")
    CPU = ("cpu", "CPU")
    GPU = ("gpu", "GPU")


class SliceAxis(_Labelled):
    MODEL = ("", "Model default")
    AXIAL = ("axial", "Axial")
    CORONAL = ("coronal", "Coronal")
    SAGITTAL = ("sagittal", "Sagittal")


class InferenceMode(_Labelled):
    MODEL = ("", "Model default")
    SLICES = ("slices", "Slice by slice (2D)")
    WINDOW = ("window", "Sliding window (patches)")
    DENSE = ("dense", "Dense (patch classifier)")


class Mirroring(_Labelled):
    MODEL = ("", "Model default")
    NONE = ("none", "None")
    X = ("x", "Left-right flip")
    XY = ("xy", "All in-plane flips")


class Postprocessing(_Labelled):
    DEFAULT = ("model", "Model default (its measured clean-up)")
    NONE = ("none", "None (raw network output)")


def device_argument(device: Device, platform: str = sys.platform) -> str:
    """The ``--device`` value of a GUI choice: GPU means CUDA, or Apple's MPS on macOS."""
    if device is Device.GPU:
        return "mps" if platform == "darwin" else "cuda"
    return device.value


@dataclass
class SegmentChoices:
    """Everything but the inputs and the output folder of one ``segment`` run."""

    model: str = ""
    device: Device = Device.AUTO
    axis: SliceAxis = SliceAxis.MODEL
    mode: InferenceMode = InferenceMode.MODEL
    tta: Mirroring = Mirroring.MODEL
    postprocess: Postprocessing = Postprocessing.DEFAULT


def segment_arguments(
    inputs: Mapping[str, str | Path],
    out: str | Path,
    options: SegmentChoices,
    progress: bool = True,
    models_dirs: Iterable[str | Path] = (),
) -> list[str]:
    """``segment`` arguments for four input files (by modality), an output folder, the options and extra model folders."""
    missing = [m for m in MODALITY_FLAGS if not inputs.get(m)]
    if missing:
        raise ValueError(f"missing input volume(s): {', '.join(missing)}")
    args = ["segment"]
    for modality in MODALITY_FLAGS:
        args += [f"--{modality}", str(inputs[modality])]
    args += ["--out", str(out)]
    for folder in models_dirs:
        args += ["--models-dir", str(folder)]
    if options.model:
        args += ["--model", options.model]
    args += ["--device", device_argument(options.device)]
    for flag, choice in (("--axis", options.axis), ("--mode", options.mode), ("--tta", options.tta)):
        if choice.value:
            args += [flag, choice.value]
    if options.postprocess is not Postprocessing.DEFAULT:
        args += ["--postprocess", options.postprocess.value]
    if progress:
        args += ["--progress", "json"]
    return args


@dataclass
class OfferedModels:
    """The models a panel offers: cards by id, the extra folders they need (``--models-dir``), and what to tell the user."""

    cards: dict[str, ModelCard]
    folders: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def offered_models(folder: str | Path = "") -> OfferedModels:
    """The bundled models (and those of ``BRAIN_TUMOR_SEG_MODELS``) plus the cards in the user's models ``folder``.

    ``folder`` holds ``<id>.json`` + ``<id>.safetensors`` as ``brain-tumor-seg train`` writes them; a card
    there wins over a bundled card of the same id, as with ``--models-dir``. Never raises: a folder that
    does not exist or has no cards adds nothing, a card that cannot be read is left out (as the CLI
    leaves it out), and ``notes`` says why, one line each.
    """
    text = str(folder).strip()
    if not text:
        return _bundled_models()
    path = Path(text).expanduser().absolute()
    if not path.is_dir():
        offered = _bundled_models()
        offered.notes.insert(0, f"Models folder {path} does not exist; only the bundled models are offered.")
        return offered
    catalog = find_models([path])
    cards = catalog.cards
    notes = broken_notes(catalog)
    own = [card for card in cards.values() if card.path is not None and card.path.parent == path]
    if not own:
        offered = _bundled_models()  # notes the broken cards of the other folders itself
        broken_here = [
            note for note, error in zip(notes, catalog.broken.values(), strict=True) if Path(error.path).parent == path
        ]
        usable = "no readable model cards" if broken_here else "no model cards (<id>.json)"
        offered.notes[:0] = [*broken_here, f"{path} has {usable}; only the bundled models are offered."]
        return offered
    for card in own:
        if problem := _display_problem(card):  # a hand-edited card with a wrong type: leave it out
            notes.append(problem)
            del cards[card.id]
        elif card.is_ensemble:
            try:
                member_cards(card, [path])
            except ValueError as error:  # errors.InputError: a member that is not found
                notes.append(f"Model {card.id}: not offered, {error}")
                del cards[card.id]
        elif not card.weights_path.is_file():
            notes.append(f"Model {card.id}: weights file {card.weights_path} is missing.")
    return OfferedModels(cards, [path], notes)


def _display_problem(card: ModelCard) -> str | None:
    """Why the model selector cannot show ``card`` (label, tooltip, sorting by name), or None."""
    try:
        model_label(card)
        model_tooltip(card)
        if not all(isinstance(text, str) for text in (card.id, card.name)):
            raise TypeError("id and name must be text")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        return f"{card.path}: not shown, a field has the wrong type ({error})"
    return None


def broken_notes(catalog: ModelCatalog) -> list[str]:
    return [f"A model card cannot be read and is left out: {error}" for error in catalog.broken.values()]


def _bundled_models() -> OfferedModels:
    catalog = find_models()  # a broken card in BRAIN_TUMOR_SEG_MODELS or the bundled folder is left out with a note
    return OfferedModels(catalog.cards, notes=broken_notes(catalog))
