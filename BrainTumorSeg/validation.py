"""Validation Dice of a model card on its own validation split, through the shipping inference path.

Each validation case is read from its files, segmented exactly as `brain-tumor-seg segment`
does (same preprocessing, precision and test-time mirroring as the card declares), and
compared with its ground truth by BraTS region Dice. ``--write`` stores the result in the card.
``--choose-postprocess`` scores the standard clean-up variants on the same pass and makes the best
one the card's clean-up, so a slow model (a Havaei cascade: 25 min per pass) needs one pass, not two.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .case import read_truth, resolve_inputs, truth_file
from .device import autocast_dtype, precision_name, warn_if_emulated
from .errors import InputError
from .fp16_check import NOT_NEEDED, is_deferred, resolve, weights_dtype
from .metrics import mean_region_dice, region_dice
from .models.card import ModelCard, get_model
from .models.ensemble import expand
from .pipeline import InferenceOptions, Member, RunOptions, postprocess_options, segment
from .postprocess import PostprocessOptions, postprocess

# Clean-up variants compared by ``--compare-postprocess``: one standard setting of each step, and the shipped
# models' combination.
POSTPROCESS_VARIANTS: dict[str, PostprocessOptions] = {
    "none": PostprocessOptions(),
    "closing 1": PostprocessOptions(closing=1),
    "keep largest": PostprocessOptions(keep_largest=True),
    "min component 1 mL": PostprocessOptions(min_component_ml=1.0),
    "ET < 0.5 mL -> core": PostprocessOptions(et_to_core_ml=0.5),
    "closing 1 + min component 1 mL": PostprocessOptions(closing=1, min_component_ml=1.0),
}


def validate(
    cards: Sequence[ModelCard],
    data: Path,
    flips: str | None = None,
    precision: str = "auto",
    convention: str | None = None,
    variants: dict[str, PostprocessOptions] | None = None,
    extra_dirs: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Mean and per-case region Dice, and mean seconds per case, on the cards' validation cases.

    Several cards, or an ensemble card, are an ensemble (probabilities averaged, as ``segment --model a,b``);
    their networks must share one validation split. The first card's clean-up applies. With ``variants`` the
    networks run once per case and each clean-up variant is scored on the raw labels too
    (``result["postprocess"][name]``). Ensemble members are looked up in ``extra_dirs`` and the usual folders.
    The ground truth is read in ``convention``, by default the one the first network was trained with (its card's
    ``training.label_convention``; BraTS 2017-2022 labels 1, 2, 4 for cards written before it was recorded).
    """
    networks = expand(cards, extra_dirs)
    splits = {tuple(card.training["split"]["validation"]) for card in networks}
    if len(splits) != 1:
        raise InputError(",".join(card.id for card in cards), "the models have different validation splits")
    members = [Member(card, card.load()) for card in networks]
    convention = convention or networks[0].training.get("label_convention", "brats2017")
    per_case, seconds = {}, []
    by_variant: dict[str, dict[str, dict[str, float]]] = {name: {} for name in variants or {}}
    own = postprocess_options(cards, None)
    for case_id in splits.pop():
        folder = data / case_id
        started = time.perf_counter()
        case = resolve_inputs(folder)
        options = RunOptions("cpu", precision, InferenceOptions(flips=flips), PostprocessOptions())
        raw = segment(case, members, options).labels
        labels = postprocess(raw, own, case.voxel_volume_ml, case.brain) if own.active else raw
        seconds.append(time.perf_counter() - started)
        truth = read_truth(truth_file(folder), convention=convention)
        per_case[case_id] = {k: round(v, 4) for k, v in region_dice(labels, truth).items()}
        for name, variant in (variants or {}).items():
            cleaned = postprocess(raw, variant, case.voxel_volume_ml, case.brain)
            by_variant[name][case_id] = region_dice(cleaned, truth)
    result = {
        "cases": len(per_case),
        "dice": mean_region_dice(per_case),
        "per_case": per_case,
        "seconds_per_case": round(float(np.mean(seconds)), 1),
    }
    if variants:
        result["postprocess"] = {name: mean_region_dice(scores) for name, scores in by_variant.items()}
        result["postprocess_per_case"] = {
            name: {case_id: {k: round(v, 4) for k, v in scores.items()} for case_id, scores in cases.items()}
            for name, cases in by_variant.items()
        }
    return result


def best_variant(means: dict[str, dict[str, float]]) -> str:
    """The clean-up variant with the highest mean of its WT, TC and ET Dice; a tie goes to the one listed first."""
    return max(means, key=lambda name: (round(float(np.mean(list(means[name].values()))), 4), -list(means).index(name)))


def adopt_variant(card: ModelCard, result: dict[str, Any], name: str, command: str) -> None:
    """Make variant ``name`` the card's clean-up and its scores the card's validation Dice (the rest of ``result`` too)."""
    chosen = POSTPROCESS_VARIANTS[name].to_dict()
    default = PostprocessOptions().to_dict()
    card.postprocess = {k: v for k, v in chosen.items() if v != default[k]}
    card.validation.update(
        {k: v for k, v in result.items() if not k.startswith("postprocess")},
        dice=result["postprocess"][name],
        per_case=result["postprocess_per_case"][name],
        dice_before_clean_up=result["postprocess"]["none"],
        postprocess_comparison=result["postprocess"],
        postprocess_choice=f"{name}: the variant with the highest mean of WT, TC and ET Dice on these cases",
        method=METHOD,
        measured_by=command,
    )
    card.validation.pop("per_case_note", None)


METHOD = (
    "BrainTumorSeg.validation.validate: each validation case read from its files and segmented as `brain-tumor-seg "
    "segment` does (the card's weights, precision and mirroring), then metrics.region_dice against its ground truth; "
    "seconds_per_case: read + segment + clean-up"
)


def require_fp16_check_setup(card: ModelCard, compare: bool, precision: str, tta: str | None) -> None:
    """Refuse, before any case runs, a ``--write`` that cannot settle the card's deferred fp16 check: the Dice before
    clean-up must be measured as train measured ``dice_fp32`` (CPU, the training precision, no mirroring)."""
    if not compare:
        problem = "its fp16 check is deferred to this command: add --choose-postprocess or --compare-postprocess"
        raise InputError(card.path, problem)
    trained = card.training.get("precision", "fp32")
    here = precision_name(autocast_dtype(torch.device("cpu"), precision))
    if here != trained:
        flag = {"bfloat16": "bf16", "fp32": "fp32"}.get(trained)
        fix = f"validate with --precision {flag}" if flag else "check it with `train` (no --defer-fp16-check)"
        problem = f"its fp16 check compares with Dice measured in {trained}, not {here}: {fix}"
        raise InputError(card.path, problem)
    if (tta or card.inference.get("flips", "none")) != "none":
        problem = "its fp16 check compares with Dice measured without mirroring: validate with --tta none"
        raise InputError(card.path, problem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brain-tumor-seg validate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model id, or comma-separated ids for an ensemble (default: the default model)")
    parser.add_argument("--models-dir", action="append", default=[], metavar="DIR")
    parser.add_argument("--data", required=True, type=Path, help="folder of BraTS-named case folders")
    parser.add_argument("--tta", choices=("none", "x", "xy"), help="test-time mirroring (default: the card's)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--write", action="store_true", help="store the result in the model card")
    parser.add_argument(
        "--compare-postprocess",
        action="store_true",
        help="also score standard clean-up variants (network run once per case) to choose the card's postprocess block",
    )
    parser.add_argument(
        "--choose-postprocess",
        action="store_true",
        help="compare the clean-up variants and make the best (highest mean of WT, TC, ET Dice) the card's clean-up; "
        "with --write, store it and its Dice in the card",
    )
    args = parser.parse_args(argv)
    ids = [m.strip() for m in args.model.split(",")] if args.model else [None]
    if len(ids) > 1 and (args.write or args.choose_postprocess):
        parser.error("--write and --choose-postprocess store into one model's card: give one --model")
    compare = args.compare_postprocess or args.choose_postprocess
    warn_if_emulated(torch.device("cpu"), args.precision)  # validate runs on the CPU
    try:
        cards = [get_model(model_id, args.models_dir) for model_id in ids]
        check_fp16 = args.write and is_deferred(cards[0].validation)
        settled: dict[str, str] | None = None
        if check_fp16 and weights_dtype(cards[0].weights_path) == "float32":
            check_fp16, settled = False, NOT_NEEDED  # the fp32 file copied over the fp16 one: nothing was rounded
        elif check_fp16:
            require_fp16_check_setup(cards[0], compare, args.precision, args.tta)
        variants = POSTPROCESS_VARIANTS if compare else None
        result = validate(cards, args.data, args.tta, args.precision, variants=variants, extra_dirs=args.models_dir)
    except InputError as error:
        print(f"brain-tumor-seg validate: error: {error}", file=sys.stderr)
        return 2
    card = cards[0]
    for case_id, scores in result["per_case"].items():
        print(f"{case_id:<24} " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    print(f"{'mean':<24} " + "  ".join(f"{k} {v:.4f}" for k, v in result["dice"].items()))
    print(f"seconds per case (read + segment): {result['seconds_per_case']}")
    for name, scores in result.get("postprocess", {}).items():
        print(f"{'clean-up: ' + name:<32} " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    if check_fp16:
        try:
            settled = resolve(card.validation, card.weights_path, result["postprocess"]["none"])
        except InputError as error:
            print(f"brain-tumor-seg validate: error: {error}", file=sys.stderr)
            return 1
    flips = args.tta or card.inference.get("flips", "none")
    if args.choose_postprocess:
        name = best_variant(result["postprocess"])
        command = "brain-tumor-seg validate " + " ".join(argv if argv is not None else sys.argv[1:])
        adopt_variant(card, result, name, f"`{command}` (flips {flips}, precision {args.precision})")
        print(f"chosen clean-up: {name} {card.postprocess}")
    if args.write:
        if not args.choose_postprocess:
            card.validation.update({k: v for k, v in result.items() if k != "postprocess_per_case"})
        card.validation["flips"] = flips
        if settled:
            card.validation.update(settled)
            print(f"fp16 check: {settled['fp16_check']}")
        card.write(card.path)
        print(f"wrote {card.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
