"""Ensemble cards: one model id for several trained models whose probabilities are averaged.

An ensemble card (``"architecture": "ensemble"``, ``"members": [ids]``) makes ``--model a,b`` a
model of its own: listed by ``brain-tumor-seg models``, offered in the Slicer module, the default
when marked so, with its own clean-up (``postprocess``) and its own validation Dice measured by
``brain-tumor-seg validate``. Each member runs in its own mode (axis, window, mirroring) as its
card says; members are found like any model, so a user's folder can hold either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import InputError
from .card import ModelCard, find_models


def member_cards(card: ModelCard, extra_dirs: Iterable[str | Path] = ()) -> list[ModelCard]:
    """The network cards ``card`` stands for: itself, or an ensemble card's members in its order."""
    if not card.is_ensemble:
        return [card]
    catalog = find_models(extra_dirs)
    members = []
    for member_id in card.members:
        if member_id in catalog.broken:
            raise catalog.broken[member_id]
        member = catalog.cards.get(member_id)
        if member is None:
            available = ", ".join(sorted(catalog.cards))
            raise InputError(card.path or card.id, f"ensemble member {member_id!r} not found; available: {available}")
        if member.is_ensemble:
            raise InputError(card.path or card.id, f"ensemble member {member_id!r} is itself an ensemble")
        members.append(member)
    return members


def expand(cards: Sequence[ModelCard], extra_dirs: Iterable[str | Path] = ()) -> list[ModelCard]:
    """The network cards of models named together (``--model a,b``): ensembles replaced by their members."""
    extra = list(extra_dirs)
    return [member for card in cards for member in member_cards(card, extra)]
