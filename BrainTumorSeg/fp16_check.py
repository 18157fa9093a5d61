"""The fp16 weights check that `brain-tumor-seg train --defer-fp16-check` leaves to `brain-tumor-seg validate --write`.

Trained weights ship as fp16 when that moves no validation Dice by more than ``TOLERANCE`` from the fp32 weights'
Dice (issue 5). ``train`` normally checks this with one more pass over the validation cases; a deferred check
reuses the pass ``validate --choose-postprocess`` makes anyway: its Dice before clean-up, from the fp16 weights
in the card's training precision, against the card's ``dice_fp32``. That saves a whole validation pass
(~13 min for a Havaei cascade on this machine).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from .errors import InputError

TOLERANCE = 0.005
DEFERRED = (
    "deferred: `brain-tumor-seg validate --choose-postprocess --write` (the training precision, no mirroring) "
    "compares these fp16 weights' Dice before clean-up, read from the case files, with dice_fp32 (the fp32 weights on "
    f"the training cache) and refuses to write if any differs by more than {TOLERANCE}; until then `dice` is the fp32 "
    "weights' Dice, and the fp32 weights are <id>-fp32.safetensors in the training output folder"
)


def is_deferred(validation: dict) -> bool:
    """Whether a card's validation block still waits for its fp16 check."""
    return str(validation.get("fp16_check", "")).startswith("deferred")


def weights_dtype(path: Path) -> str:
    """``float16`` or ``float32``: the dtype of the floating-point tensors in a safetensors file (read from its header)."""
    with safe_open(str(path), framework="pt") as weights:
        dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}
    return "float32" if "F32" in dtypes else "float16"


NOT_NEEDED = {"weights_dtype": "float32", "fp16_check": "none needed: the weights are fp32"}


def resolve(validation: dict, weights: Path, dice_before_clean_up: dict[str, float]) -> dict[str, str]:
    """The validation fields that settle a deferred check, or an InputError naming the weights when fp16 moved a Dice
    by more than ``TOLERANCE`` (the card is then left as it is; the fp32 weights can replace the fp16 file)."""
    reference = validation["dice_fp32"]
    worst = max(abs(dice_before_clean_up[k] - reference[k]) for k in reference)
    measured = ", ".join(f"{k} {dice_before_clean_up[k]:.4f} vs {reference[k]:.4f}" for k in reference)
    if worst > TOLERANCE:
        raise InputError(
            weights,
            f"fp16 weights move a Dice before clean-up by {worst:.4f} (> {TOLERANCE}) from dice_fp32 ({measured}); "
            f"copy the run's {weights.stem}-fp32.safetensors over this file and validate again",
        )
    return {
        "weights_dtype": "float16",
        "fp16_check": f"passed in `brain-tumor-seg validate`: Dice before clean-up of the fp16 weights against "
        f"dice_fp32: {measured} (largest difference {worst:.4f} <= {TOLERANCE})",
    }
