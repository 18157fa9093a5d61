"""Model cards: find them and read them, without importing PyTorch.

A model card is ``<id>.json`` beside ``<id>.safetensors`` in a models folder:
the bundled ``Resources/Models``, folders in ``BRAIN_TUMOR_SEG_MODELS``
(``os.pathsep``-separated) and any ``--models-dir``. Behaviour comes from the card
(architecture, config, inputs, outputs, inference mode), never from a file name.
An ensemble card (``"architecture": "ensemble"``) has no weights: it names its ``members``
(other cards, run each in its own mode, probabilities averaged) and holds the ensemble's own
clean-up and validation; see :mod:`.ensemble`.
Listing cards needs only the standard library, so the Slicer module can offer the
models before PyTorch is installed; building a network (:mod:`.registry`) needs PyTorch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..resources import resources_dir

log = logging.getLogger("brain_tumor_seg")

if TYPE_CHECKING:
    from torch import nn

ARCHITECTURE_NAMES = (
    "unet2d",
    "twopathcnn",
    "inputcascadecnn",
    "localcascadecnn",
    "mfcascadecnn",
    "fcdensenet",
    "pspnet",
    "segresnet",
)
ENSEMBLE = "ensemble"  # the architecture of a card that only names member cards
MODELS_ENV = "BRAIN_TUMOR_SEG_MODELS"
NETWORK_FIELDS = ("config", "inputs", "outputs", "inference")

# The vocabulary of a card's ``inference`` block (see pipeline.InferenceOptions).
MODES = ("slices", "dense", "window")
# Slice axes by anatomical name -> axis of the canonical RAS array (x, y, z).
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
# Test-time mirroring -> the sets of canonical axes mirrored in each extra pass.
FLIPS: dict[str, tuple[tuple[int, ...], ...]] = {"none": (), "x": ((0,),), "xy": ((0,), (1,), (0, 1))}


@dataclass
class ModelCard:
    """What a model is, how to feed it, how to read its output, and how it was trained and validated."""

    id: str
    architecture: str
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    postprocess: dict[str, Any] = field(default_factory=dict)  # clean-up defaults (postprocess.PostprocessOptions)
    name: str = ""
    description: str = ""
    default: bool = False
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    members: list[str] = field(default_factory=list)  # ensemble cards only: the member models' ids

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        try:
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            missing = [repr(k) for k in ("id", "architecture") if k not in raw]
            known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw and k != "path"}
            card = None if missing else cls(**known, path=path)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise InputError(path, f"not a valid model card ({error})") from None
        if card is None:
            raise InputError(path, f"not a valid model card (missing {', '.join(missing)})")
        if card.is_ensemble:
            if not card.members or not all(isinstance(m, str) and m for m in card.members):
                raise InputError(path, 'an ensemble card needs "members": a list of model ids')
            return card
        if card.architecture not in ARCHITECTURE_NAMES:
            known = ", ".join((*ARCHITECTURE_NAMES, ENSEMBLE))
            raise InputError(path, f"unknown architecture {card.architecture!r}; known: {known}")
        missing = [name for name in NETWORK_FIELDS if name not in raw]
        if missing:
            raise InputError(path, f"not a valid model card (missing {', '.join(repr(m) for m in missing)})")
        spacing = card.inputs.get("spacing_mm") if isinstance(card.inputs, dict) else None
        if spacing is not None and not (
            isinstance(spacing, list) and len(spacing) == 3 and all(_positive_number(v) for v in spacing)
        ):
            raise InputError(path, f"inputs.spacing_mm must be three positive numbers (mm along x, y, z), not {spacing!r}")
        return card

    @property
    def is_ensemble(self) -> bool:
        return self.architecture == ENSEMBLE

    def to_json(self) -> dict[str, Any]:
        """The card's fields; an ensemble card leaves out the network fields it does not have."""
        skip = {"path", *NETWORK_FIELDS, "weights"} if self.is_ensemble else {"path", "members"}
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @property
    def weights_path(self) -> Path:
        if self.path is None:
            raise ValueError(f"model {self.id} has no card file")
        return self.path.parent / (self.weights or f"{self.id}.safetensors")

    @property
    def context_slices(self) -> int:
        return int(self.inputs.get("context_slices", 0))

    @property
    def modalities(self) -> list[str]:
        return list(self.inputs["modalities"])

    def build(self) -> nn.Module:
        """The untrained network of this card's architecture and configuration (imports PyTorch)."""
        from .registry import build_network

        if self.is_ensemble:
            raise ValueError(f"model {self.id} is an ensemble of {', '.join(self.members)}: build its members")
        try:
            return build_network(self.architecture, self.config)
        except ValueError as error:
            raise InputError(self.path or self.id, f"not a valid {self.architecture} configuration ({error})") from None

    def load(self) -> nn.Module:
        """The network with this card's weights (safetensors: no pickle, no code), for inference: eval mode, fp32,
        batch normalization folded into the convolutions before it (same function, fewer passes over memory)."""
        from .batch_norm_folding import fold_batch_norms
        from .registry import load_weights

        network = load_weights(self.build(), self.weights_path, self.id)
        fold_batch_norms(network)
        return network


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def is_model_card(path: Path) -> bool:
    """A JSON file is meant as a model card when it is an object with ``id`` and ``architecture`` or another card
    field (so a card that lacks its architecture is reported, not skipped); other JSON files are not."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return True  # let ModelCard.read report the broken file
    return isinstance(raw, dict) and "id" in raw and any(k in raw for k in ("architecture", "members", *NETWORK_FIELDS))


def model_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    """Folders searched for model cards: extra ones first, then the environment's, then the bundled one."""
    env = [p for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return [Path(p) for p in (*extra, *env)] + [resources_dir() / "Models"]


@dataclass
class ModelCatalog:
    """The model cards found, by id, and the card files that could not be read, by file name without ``.json`` (the
    id ``train`` gives the file) with the error reading them."""

    cards: dict[str, ModelCard]
    broken: dict[str, InputError]

    def card(self, model_id: str) -> ModelCard:
        """The card of ``model_id``: InputError naming the broken file when that id's card cannot be read."""
        if model_id in self.cards:
            return self.cards[model_id]
        if model_id in self.broken:
            raise self.broken[model_id]
        raise InputError(model_id, f"no such model; available: {', '.join(sorted(self.cards)) or 'none'}")


_warned: set[str] = set()  # broken card files already reported by this process


def find_models(extra_dirs: Iterable[str | Path] = ()) -> ModelCatalog:
    """Model cards of every folder (:func:`model_dirs`); an id found in an earlier folder wins over the same id later.

    A card that cannot be read is set aside, not fatal: one broken file does not stop runs of other models. Its id
    (the file's name) is not taken from a later folder either, so a user's broken card never silently becomes the
    bundled one of that id. The folders named in ``extra_dirs`` (``--models-dir``) must exist.
    """
    extra_dirs = list(extra_dirs)
    for folder in map(Path, extra_dirs):  # named by the user: a typo must not pass unnoticed
        if not folder.is_dir():
            raise InputError(folder, "models folder not found" if not folder.exists() else "is not a folder")
    catalog = ModelCatalog({}, {})
    for folder in model_dirs(extra_dirs):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            if not is_model_card(path):
                continue
            try:
                card = ModelCard.read(path)
            except InputError as error:
                if path.stem not in catalog.cards:
                    catalog.broken.setdefault(path.stem, error)
                continue
            if card.id not in catalog.broken:
                catalog.cards.setdefault(card.id, card)
    return catalog


def warn_broken(catalog: ModelCatalog) -> ModelCatalog:
    """``catalog``, after one warning on stderr (per process) for each card file that cannot be read."""
    for error in catalog.broken.values():
        if error.path not in _warned:
            _warned.add(error.path)
            log.warning("brain-tumor-seg: warning: %s; that model is left out", error)
    return catalog


def available_models(extra_dirs: Iterable[str | Path] = ()) -> dict[str, ModelCard]:
    """All readable model cards by id (:func:`find_models`); a broken card file gets a warning."""
    return warn_broken(find_models(extra_dirs)).cards


def get_model(model_id: str | None = None, extra_dirs: Iterable[str | Path] = ()) -> ModelCard:
    """The card of ``model_id``, or the default model's card."""
    catalog = warn_broken(find_models(extra_dirs))
    if model_id is not None:
        return catalog.card(model_id)
    defaults = [c for c in catalog.cards.values() if c.default]
    if not defaults:
        raise InputError("models", "no default model found")
    return defaults[0]
