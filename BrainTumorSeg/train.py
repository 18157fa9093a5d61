"""``brain-tumor-seg train``: train any registered architecture on BraTS-style cases; write weights and a complete model card.

The model-card template (``--card``, or the architecture's default from :mod:`recipes` with
``--architecture``) says what the network is and how it runs at inference; its ``training`` block
(the recipe, overridden by flags) says how it trains. The architecture decides the sampler
(:mod:`training_data`): 2D slice networks on slices, Havaei et al.'s patch classifiers on patches in
the paper's two phases (arXiv:1505.03540; :mod:`havaei_training`), SegResNet on 3D blocks. Losses
from :mod:`losses`; fixed seeds; autocast as ``--precision`` says (auto: bf16 on CPUs with native bf16,
else fp32; bf16 or else fp16 on GPUs), fp16 with loss scaling (``torch.amp.GradScaler``);
validation with BraTS WT/TC/ET Dice through the real inference path
(:func:`pipeline.predict_with_card` + :func:`postprocess.probabilities_to_labels`); checkpoints and
resume; DistributedDataParallel under ``torchrun`` (:mod:`distributed`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed
from .augmentation import augment, from_one_hot, one_hot, rotate_scale_blocks
from .case import MODALITIES
from .device import autocast, autocast_dtype, precision_name, resolve_device
from .errors import InputError
from .export import check_writable
from .fp16_check import DEFERRED, TOLERANCE
from .havaei_training import (
    PatchClassification,
    ValidSlices,
    apply_max_norm,
    is_window_classifier,
    l1_penalty,
    load_first_cnn,
    output_layer,
)
from .labels import CONVENTIONS, region_masks
from .losses import LOSSES, Loss
from .metrics import mean_region_dice, region_dice
from .models.card import ARCHITECTURE_NAMES, ModelCard, is_model_card
from .models.registry import build_network, load_weights, save_weights
from .pipeline import predict_with_card
from .postprocess import probabilities_to_labels
from .recipes import CASCADES, HAVAEI, Recipe, default_template, keras_variant
from .resources import resources_dir
from .training_data import CLASSES, BlockSampler, CachedCase, PatchSampler, SliceSampler, load_training_case, shard
from .training_progress import TrainingProgress
from .training_stop import GracefulStop

log = logging.getLogger("brain_tumor_seg.train")

# Test hook: each rank writes its final fp32 weights as rank<r>.safetensors and its training case ids as
# rank<r>-cases.json into this folder.
RANK_WEIGHTS_ENV = "BRAIN_TUMOR_SEG_RANK_WEIGHTS"
AUGMENTATION = {
    "slices": "flips (both in-plane axes), rotation +-15 deg and scale 0.85-1.15 (p 0.7), per-sequence gain/shift, noise (p 0.2)",
    "patches": "flips, rotation +-15 deg and scale 0.85-1.15 about the centre pixel (p 0.7), per-sequence gain/shift, noise",
    "blocks": "MONAI RandFlipd on 3 axes (p 0.5 each), RandScaleIntensityd 0.1 and RandShiftIntensityd 0.1 per sequence",
}


def augmentation_description(recipe: Recipe) -> str:
    """What the recipe's augmentation does, for the model card."""
    if not recipe.augment:
        return "none"
    rotation = "; rotation +-15 deg about the superior axis and scale 0.85-1.15 (p 0.7)" if recipe.rotate_blocks else ""
    return AUGMENTATION[recipe.sampler] + rotation


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def region_targets(labels: torch.Tensor) -> torch.Tensor:
    """Internal labels ``(B, ...)`` -> float WT/TC/ET targets ``(B, 3, ...)``."""
    masks = region_masks(labels.numpy())
    return torch.from_numpy(np.stack([masks[k] for k in ("WT", "TC", "ET")], axis=1).astype(np.float32))


def evaluate(
    network: nn.Module, card: ModelCard, cases: list[CachedCase], device: torch.device, dtype: torch.dtype | None
) -> dict:
    """Mean and per-case BraTS region Dice on whole cases through the real inference path, and the mean seconds
    per case of that path (cached, cropped input: no file reading)."""
    per_case, started = {}, time.perf_counter()
    for case in cases:
        probabilities = predict_with_card(card, network, case.data.astype(np.float32), device, dtype)
        brain = np.any(case.data != 0, axis=0)
        prediction = probabilities_to_labels(probabilities, card.outputs, brain)
        per_case[case.case_id] = {k: round(v, 4) for k, v in region_dice(prediction, case.labels).items()}
    mean = mean_region_dice(per_case)
    seconds = (time.perf_counter() - started) / max(1, len(cases))
    return {"dice": mean, "per_case": per_case, "seconds_per_case": round(seconds, 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="brain-tumor-seg train", description=__doc__.splitlines()[0])
    what = p.add_argument_group("what to train (a template, an architecture's default template, or both)")
    what.add_argument("--card", type=Path, help="model-card template (architecture, config, inputs, outputs, inference, recipe)")
    what.add_argument("--architecture", choices=ARCHITECTURE_NAMES, help="the architecture's default template (recipes.py)")
    what.add_argument("--config", help="JSON object or JSON file merged into the template's network configuration")
    what.add_argument("--id", help="model id (default: the template's)")
    what.add_argument(
        "--havaei-variant",
        choices=("paper", "keras"),
        default="paper",
        help="Havaei CNNs: the paper's procedure or the Keras one",
    )
    what.add_argument("--first-cnn", type=Path, help="cascades: weights (safetensors) of a trained TwoPathCNN, kept fixed")
    what.add_argument(
        "--init",
        type=Path,
        help="start from these weights (safetensors of the same architecture and configuration): continue a finished "
        "run with a new schedule, or fine-tune a model on your own cases",
    )
    p.add_argument("--data", required=True, type=Path, help="folder of BraTS-named case folders")
    p.add_argument("--split", required=True, type=Path, help='JSON {"train": [ids], "validation": [ids]}')
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "brain-tumor-seg")
    recipe = p.add_argument_group("recipe overrides (default: the template's training block)")
    recipe.add_argument("--steps", type=int, help="steps of phase 1 (the only phase unless --phase2-steps)")
    recipe.add_argument("--phase2-steps", type=int, help="Havaei phase 2: steps training only the output layer, natural labels")
    recipe.add_argument("--batch", type=int)
    recipe.add_argument("--crop", type=int, nargs=2, help="slice crop size")
    recipe.add_argument("--block", type=int, nargs=3, help="3D block size")
    recipe.add_argument("--loss", choices=LOSSES)
    recipe.add_argument("--optimizer", choices=("adamw", "sgd"))
    recipe.add_argument("--lr", type=float)
    recipe.add_argument("--tumor-fraction", type=float)
    recipe.add_argument("--validate-every", type=int)
    recipe.add_argument("--seed", type=int)
    recipe.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    recipe.add_argument(
        "--rotate-blocks",
        action="store_true",
        default=None,
        help="3D blocks: also rotate (+-15 deg about the superior axis) and scale (0.85-1.15), p 0.7, as slices are",
    )
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (also written at validation)")
    p.add_argument(
        "--defer-fp16-check",
        action="store_true",
        help="write fp16 weights (and <id>-fp32.safetensors) without a second validation pass; "
        "`brain-tumor-seg validate --choose-postprocess --write` then checks them against the fp32 Dice",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--convention", default="brats2017", choices=CONVENTIONS, help="label convention of the ground-truth files")
    p.add_argument("--quiet", action="store_true", help="no progress bar or step lines")
    args = p.parse_args(argv)
    if not args.card and not args.architecture:
        p.error("give --card TEMPLATE or --architecture NAME")
    return args


def read_split(path: Path) -> dict[str, list[str]]:
    """The split file: ``{"train": [ids], "validation": [ids]}``, both non-empty, no id twice; InputError naming the file."""
    try:
        split = json.loads(path.read_text())
    except OSError as error:
        raise InputError(path, f"split file cannot be read ({error.strerror or error})") from None
    except ValueError as error:
        raise InputError(path, f"split file is not JSON ({error})") from None
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "validation")):
        raise InputError(path, 'a split file is a JSON object {"train": [case ids], "validation": [case ids]}')
    for part in ("train", "validation"):
        ids = split[part]
        if not ids or not all(isinstance(i, str) and i for i in ids):
            raise InputError(path, f'"{part}" must be a non-empty list of case ids (strings)')
        if twice := sorted({i for i in ids if ids.count(i) > 1}):
            raise InputError(path, f'"{part}" lists {", ".join(twice)} more than once')
    if both := sorted(set(split["train"]) & set(split["validation"])):
        raise InputError(path, f"{', '.join(both[:5])} {'is' if len(both) == 1 else 'are'} in both train and validation")
    return {"train": list(split["train"]), "validation": list(split["validation"])}


def check_recipe_numbers(recipe: Recipe) -> None:
    """InputError for sizes and rates that cannot train (zero or negative), naming the flag."""
    if recipe.steps < 0 or recipe.phase2_steps < 0 or recipe.steps + recipe.phase2_steps == 0:
        raise InputError("--steps", "nothing to train: give a positive number of steps (or of --phase2-steps)")
    for flag, value in (("--batch", recipe.batch), ("--validate-every", recipe.validate_every)):
        if value <= 0:
            raise InputError(flag, f"must be positive, not {value}")
    if recipe.lr < 0:
        raise InputError("--lr", f"must not be negative, not {recipe.lr}")
    for flag, sizes in (("--crop", recipe.crop), ("--block", recipe.block)):
        if min(sizes) < 8:
            raise InputError(flag, f"sizes of at least 8 voxels, not {' '.join(map(str, sizes))}")


def read_json_argument(value: str) -> dict[str, Any]:
    """A JSON object given inline or as a file name."""
    inline = value.lstrip()[:1] in ("{", "[")
    try:
        parsed = json.loads(value if inline else Path(value).read_text())
    except OSError as error:
        raise InputError("--config", f"neither JSON nor a readable file ({error.strerror})") from None
    except ValueError as error:
        raise InputError("--config", f"not JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise InputError("--config", "must be a JSON object")
    return parsed


def build_template(args: argparse.Namespace) -> tuple[ModelCard, Recipe]:
    """The card to train and its recipe: template (or the architecture's default), variant, --config and flag overrides."""
    if args.card:
        try:
            template = json.loads(args.card.read_text())
        except OSError as error:
            raise InputError(args.card, f"template cannot be read ({error.strerror or error})") from None
        except ValueError as error:
            raise InputError(args.card, f"template is not JSON ({error})") from None
        if not isinstance(template, dict):
            raise InputError(args.card, "a template is a JSON object (a model card with a training block)")
        if args.architecture and template.get("architecture") != args.architecture:
            raise InputError(args.card, f"is a {template.get('architecture')} template, not {args.architecture}")
    else:
        template = default_template(args.architecture)
    architecture = template.get("architecture")
    if architecture not in ARCHITECTURE_NAMES:
        raise InputError(args.card or "--architecture", f"unknown architecture {architecture!r}")
    if args.havaei_variant == "keras":
        if architecture not in HAVAEI:
            raise InputError("--havaei-variant", f"the Keras variant is for Havaei's CNNs, not {architecture}")
        template = keras_variant(template)
    if args.config:
        template["config"] = {**template["config"], **read_json_argument(args.config)}
    if args.id:
        template["id"] = args.id
    # a template's own recipe, else (e.g. a template written before recipes) the architecture's default recipe
    raw = template.get("training") or default_template(architecture)["training"]
    recipe = Recipe.from_dict({k: v for k, v in raw.items() if not (k == "loss" and v not in LOSSES)})
    for name in ("steps", "phase2_steps", "batch", "crop", "block", "loss", "optimizer", "lr", "tumor_fraction"):
        if getattr(args, name) is not None:
            setattr(recipe, name, list(getattr(args, name)) if name in ("crop", "block") else getattr(args, name))
    for name in ("validate_every", "seed", "augment", "rotate_blocks"):
        if getattr(args, name) is not None:
            setattr(recipe, name, getattr(args, name))
    known = {k: v for k, v in template.items() if k in ModelCard.__dataclass_fields__ and k not in ("path", "training")}
    card = ModelCard(**known)
    card.training, card.validation, card.weights = {}, {}, ""
    source = args.card or "--architecture"
    missing = [
        f"{block}.{key}" for block, key in (("inputs", "modalities"), ("outputs", "type")) if key not in getattr(card, block)
    ]
    if missing:
        raise InputError(source, f"the template lacks {', '.join(missing)}")
    try:
        recipe.check(architecture, card.outputs["type"])
    except ValueError as error:
        raise InputError(source, str(error)) from None
    check_recipe_numbers(recipe)
    return card, recipe


@dataclass
class Phase:
    """A stretch of training: up to global step ``end``, on ``balance``-sampled data, all layers or the output layer only."""

    name: str
    end: int
    balance: str
    output_only: bool

    def describe(self, steps: int, fixed_first_cnn: bool = False) -> dict[str, Any]:
        """The card's record of this phase; ``fixed_first_cnn``: a cascade trained around a fixed TwoPathCNN."""
        trained = "all layers but the fixed first CNN" if fixed_first_cnn else "all layers"
        trained = "output layer only (others fixed)" if self.output_only else trained
        return {"name": self.name, "steps": steps, "labels": self.balance, "trained": trained}


def plan_phases(recipe: Recipe) -> list[Phase]:
    if recipe.sampler != "patches":
        return [Phase("training", recipe.steps, "tumor fraction", False)]
    phases = [Phase("phase 1", recipe.steps, recipe.balance, False)]
    if recipe.phase2_steps:
        phases.append(Phase("phase 2", recipe.steps + recipe.phase2_steps, "natural", True))
    return phases


def training_spacing(spacings: dict[str, tuple[float, float, float]], warn: bool = True) -> list[float]:
    """The voxel spacing (mm, x, y, z) the network learns at: the median of the training cases' (by case id; inference
    resamples a case at another spacing to it, see network_grid); a warning names cases more than 10% away from it."""
    spacing = np.median(np.array(list(spacings.values())), axis=0)
    if warn:
        away = [case for case, s in spacings.items() if np.any(np.abs(np.array(s) - spacing) > 0.1 * spacing)]
        if away:
            log.warning(
                "%d training case(s) are not at the median spacing %s mm (%s): the network learns at one voxel size, "
                "resample them first", len(away), [round(float(v), 3) for v in spacing], ", ".join(away[:5]),
            )  # fmt: skip
    return [round(float(v), 4) for v in spacing]


def make_sampler(recipe: Recipe, card: ModelCard, network: nn.Module, cases: list[CachedCase], phase: Phase, seed: int):
    axis = card.inference.get("axis", "axial")
    if recipe.sampler == "patches":
        return PatchSampler(cases, axis, network.patch_size, phase.balance, seed)
    if recipe.sampler == "blocks":
        return BlockSampler(cases, tuple(recipe.block), recipe.block_ratios, seed, augment=recipe.augment)
    window = network.patch_size if is_window_classifier(network) else 1  # context for every scored pixel
    margin = (window // 2, window - 1 - window // 2)
    return SliceSampler(cases, axis, card.context_slices, tuple(recipe.crop), recipe.tumor_fraction, seed, margin)


def start_from(network: nn.Module, path: Path, model_id: str) -> dict[str, Any]:
    """Load ``path``'s weights into ``network`` (every key must match) for training to start from; returns what the
    card records: the file, its sha256 and, when that model's card lies beside it, its id, training minutes and
    validation Dice (so the new card tells the whole history)."""
    if not path.is_file():
        raise InputError(path, "weights to start from (--init) not found")
    load_weights(network, path, model_id)
    record: dict[str, Any] = {"weights": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    beside = path.with_suffix(".json")
    if beside.is_file() and is_model_card(beside):
        earlier = ModelCard.read(beside)
        record.update(model=earlier.id, minutes=earlier.training.get("minutes"), dice=earlier.validation.get("dice"))
        if "seed" in earlier.training:
            record["seed"] = earlier.training["seed"]
    return record


def run_identity(card: ModelCard, recipe: Recipe, init: dict[str, Any], first_cnn: dict[str, str]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed, in JSON types: the model id, architecture, configuration, recipe
    (with Havaei's ``phase2_steps`` beside it, which a resumed run may add, and without the validation interval) and
    the weights it started from (``--init``, a cascade's ``--first-cnn``)."""
    recipe_fields = {k: v for k, v in recipe.to_dict().items() if k not in ("phase2_steps", "validate_every")}
    identity = {"id": card.id, "architecture": card.architecture, "config": card.config, "recipe": recipe_fields}
    identity |= {"init": init.get("sha256"), "first_cnn": first_cnn.get("sha256"), "phase2_steps": recipe.phase2_steps}
    return json.loads(json.dumps(identity))


def check_same_run(checkpoint: Path, state: dict[str, Any], identity: dict[str, Any]) -> None:
    """InputError when ``checkpoint`` (loaded as ``state``) belongs to another run than this command's: only what
    it recorded is compared (checkpoints of older versions record less, or nothing). ``--phase2-steps`` may change
    while the run has not passed phase 1, so phase 2 can be added by resuming; for a longer run, start a new one from
    the weights (``--init``)."""
    recorded = state.get("run")
    if recorded is None:
        return
    differing = [k for k in ("id", "architecture", "config", "init", "first_cnn") if k in recorded and recorded[k] != identity[k]]
    before, now = recorded.get("recipe", {}), identity["recipe"]
    differing += sorted(k for k in before if before[k] != now.get(k))
    phase1_steps, phase2_steps = identity["recipe"]["steps"], identity["phase2_steps"]
    if int(state["step"]) > phase1_steps and recorded.get("phase2_steps", phase2_steps) != phase2_steps:
        differing.append("phase2_steps (phase 2 has begun)")
    if differing:
        names = {"init": "--init weights", "first_cnn": "--first-cnn weights"}
        what = ", ".join(names.get(k, k) for k in differing)
        advice = "run the command that started it to resume, or give another --out"
        raise InputError(checkpoint, f"holds a run with another {what}; {advice}")


def bundled_model_ids() -> set[str]:
    """Ids of the models shipped in the package's Resources/Models, read from their cards."""
    return {ModelCard.read(path).id for path in (resources_dir() / "Models").glob("*.json") if is_model_card(path)}


def warn_if_replaying(init: dict[str, Any], seed: int) -> None:
    """Samples are drawn from ``seed + step``, so a continuation with its starting run's seed sees that run's
    batches again, in the same order and with the same augmentation: warn, so the user can give ``--seed``."""
    if init.get("seed") == seed:
        log.warning(
            "--init %s: its run used seed %d too, so this run draws the same samples in the same order; "
            "give --seed N for new ones",
            init["weights"],
            seed,
        )


def keep_logged_steps(losses_log: Path, last: int) -> None:
    """Drop the per-step losses logged after step ``last`` (the checkpoint a run resumes from; 0 for a fresh run), which
    this run logs again, and a line a killed run left half-written; a missing log stays missing."""
    if losses_log.is_file():
        kept = []
        for line in losses_log.read_text().splitlines(keepends=True):
            try:
                if json.loads(line)["step"] <= last:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        losses_log.write_text("".join(kept))


def training_view(network: nn.Module, recipe: Recipe) -> nn.Module:
    """What the loss sees: centre-pixel scores of patches, valid-only scores of slice crops (Havaei's CNNs), or the
    network itself."""
    if recipe.sampler == "patches":
        return PatchClassification(network)
    return ValidSlices(network) if is_window_classifier(network) else network


def make_batch(recipe: Recipe, sampler: Any, output_type: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented batch: inputs, and targets as the loss wants them (region masks, or int64 labels)."""
    x, labels = sampler.sample(recipe.batch)
    if recipe.sampler == "patches":
        if recipe.augment:
            x, _ = augment(x, None, generator, len(MODALITIES))
        return sampler.trim(x), labels.long()
    if recipe.sampler == "blocks":  # flips and intensities: the sampler's MONAI transforms
        if recipe.rotate_blocks:
            x, labels = rotate_scale_blocks(x, labels, generator)
        return x, region_targets(labels) if output_type == "regions" else labels.long()
    masks = region_targets(labels) if output_type == "regions" else one_hot(labels, CLASSES)
    if recipe.augment:
        x, masks = augment(x, masks, generator, len(MODALITIES), exclusive=output_type != "regions")
    masks = sampler.trim_target(masks)
    return x, masks if output_type == "regions" else from_one_hot(masks).long()


def make_optimizer(recipe: Recipe, parameters: list[nn.Parameter], steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """The recipe's optimizer over ``parameters`` with linear warm-up then cosine decay over ``steps``."""
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum[0], weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay)
    warmup = max(1, min(100, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))),
    )
    return optimizer, schedule


def set_momentum(optimizer: torch.optim.Optimizer, recipe: Recipe, fraction: float) -> None:
    """SGD momentum ramped linearly from ``momentum[0]`` to ``momentum[1]`` over phase 1 (Havaei: 0.5 -> 0.9)."""
    if recipe.optimizer == "sgd":
        start, end = recipe.momentum
        for group in optimizer.param_groups:
            group["momentum"] = start + (end - start) * min(1.0, fraction)


def loss_scaler(device: torch.device, dtype: torch.dtype | None) -> Any:
    """A ``torch.amp.GradScaler`` for fp16 autocast (whose small gradients underflow without one), else None: bf16
    has fp32's range. None with a warning where this PyTorch has none for the device (before 2.3, or an old MPS)."""
    if dtype is not torch.float16:
        return None
    try:
        return torch.amp.GradScaler(device.type)
    except (AttributeError, RuntimeError, ValueError) as error:
        log.warning("fp16 training without loss scaling (no GradScaler for %s: %s); small gradients may vanish", device, error)
        return None


def optimize(
    loss: torch.Tensor, network: nn.Module, optimizer: Any, schedule: Any, recipe: Recipe, scaler: Any = None
) -> torch.Tensor:
    """One optimizer step on ``loss`` plus the recipe's L1 penalty, then the schedule and max-norm (Havaei); returns
    the penalised loss. ``scaler`` (:func:`loss_scaler`) scales the loss for fp16 so small gradients do not
    underflow; a step whose gradients overflowed is then skipped and the scale lowered."""
    if recipe.l1:
        loss = loss + recipe.l1 * l1_penalty(network)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    schedule.step()
    if recipe.max_norm:
        apply_max_norm(network, recipe.max_norm)
    return loss


def set_trainable(network: nn.Module, phase: Phase) -> list[nn.Parameter]:
    """Freeze what the phase does not train; returns the trained parameters (a cascade's frozen first CNN never trains)."""
    frozen_first = getattr(network, "freeze_first", False)
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(not (frozen_first and name.startswith("first.")))
    if phase.output_only:
        network.requires_grad_(False)
        output_layer(network).requires_grad_(True)
    return [p for p in network.parameters() if p.requires_grad]


def train_mode(network: nn.Module, phase: Phase) -> None:
    """Training mode; in an output-only phase, batch statistics of the fixed layers stay as they are."""
    network.train()
    if phase.output_only:
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def checkpoint_state(network: nn.Module, optimizer: Any, schedule: Any, scaler: Any, step: int, phase: int, extra: dict) -> dict:
    return {
        "network": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        **({"scaler": scaler.state_dict()} if scaler is not None else {}),  # fp16 only
        "step": step,
        "phase": phase,
        **extra,
    }


def main(argv: list[str] | None = None, ends_process: bool = False) -> int:
    """``brain-tumor-seg train``; ``ends_process``: the process exits after it (repeated stop signals stay ignored)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        card, recipe = build_template(args)
    except InputError as error:
        print(f"brain-tumor-seg train: error: {error}", file=sys.stderr)
        return 2
    context = distributed.start(resolve_device(args.device))
    with GracefulStop(ends_process) as stop:
        try:
            return train(args, card, recipe, context, argv, stop)
        except InputError as error:
            print(f"brain-tumor-seg train: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("brain-tumor-seg train: interrupted", file=sys.stderr)
            return stop.exit_code
        finally:
            context.shutdown()


def train(
    args: argparse.Namespace,
    card: ModelCard,
    recipe: Recipe,
    context: distributed.Distributed,
    argv: list[str] | None,
    stop: GracefulStop | None = None,
) -> int:
    """Train ``card`` with ``recipe`` (see the module docstring); ``stop`` ends the loop at a step boundary."""
    stop = stop or GracefulStop()
    device, main_rank = context.device, context.is_main
    dtype = autocast_dtype(device, args.precision)
    if not main_rank:
        logging.getLogger().setLevel(logging.WARNING)
    torch.manual_seed(recipe.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    split = read_split(args.split)
    if main_rank:  # before minutes of case loading; the folder is made once they have loaded (one rank: no race)
        check_writable(args.out, keep=False)
    started_at = datetime.now(timezone.utc)
    started = time.time()
    try:
        network = build_network(card.architecture, card.config)  # a wrong file fails before minutes of case loading
    except ValueError as error:
        raise InputError("--config", f"not a valid {card.architecture} configuration {card.config} ({error})") from None
    if main_rank and card.id in bundled_model_ids():
        log.warning(
            "model id %s is a bundled model's: in a models folder this model replaces it, also inside ensembles; "
            "give --id to name yours",
            card.id,
        )
    init = start_from(network, args.init, card.id) if args.init else {}
    if main_rank:
        warn_if_replaying(init, recipe.seed)
    first_cnn: dict[str, str] = {}  # loaded after --init: a cascade's recorded first CNN is the one it trains with
    if card.architecture in CASCADES and card.config.get("freeze_first"):
        if args.first_cnn is None:
            raise InputError("--first-cnn", f"{card.architecture} trains with a fixed first CNN: give trained TwoPathCNN weights")
        first_cnn = {"weights": args.first_cnn.name, "sha256": load_first_cnn(network, args.first_cnn)}
    train_ids = shard(list(split["train"]), context.rank, context.world_size)
    train_cases = [load_training_case(args.data / c, args.cache, args.convention) for c in train_ids]
    val_cases = [load_training_case(args.data / c, args.cache, args.convention) for c in split["validation"]] if main_rank else []
    args.out.mkdir(parents=True, exist_ok=True)  # only once the inputs are known good: a failed start leaves no folder
    log.info("loaded %d training and %d validation cases in %.0f s", len(train_cases), len(val_cases), time.time() - started)
    spacings = dict(context.gather([(c.case_id, c.spacing) for c in train_cases]))  # every rank's share of the cases
    card.inputs["spacing_mm"] = training_spacing(spacings, main_rank)

    spatial_3d = recipe.sampler == "blocks"
    memory_format = torch.channels_last if device.type == "cpu" and not spatial_3d else torch.contiguous_format
    network = network.to(device).to(memory_format=memory_format)
    loss_fn = Loss(recipe.loss, card.outputs["type"])
    phases = plan_phases(recipe)
    total = phases[-1].end

    checkpoint = args.out / "checkpoint.pt"
    step, resumed_phase, history, elapsed, state = 0, 0, [], 0.0, None
    # the validation at the last step, for a deferred fp16 check: only a CPU pass in fp32 or bf16 is one that
    # `validate` (CPU, --precision fp32|bf16) can repeat with the fp16 weights
    deferrable = device.type == "cpu" and dtype in (None, torch.bfloat16)
    final_evaluation: dict | None = None
    identity = run_identity(card, recipe, init, first_cnn)
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True, map_location="cpu")
        check_same_run(checkpoint, state, identity)
        network.load_state_dict(state["network"])
        step, resumed_phase = int(state["step"]), int(state["phase"])
        history, elapsed = list(state.get("history", [])), float(state.get("minutes", 0.0))
        log.info("resumed at step %d", step)
    losses_log = args.out / "losses.jsonl"
    if main_rank:
        keep_logged_steps(losses_log, step)
    progress = TrainingProgress(total, step, enabled=main_rank and not args.quiet)
    optimizer = schedule = scaler = None
    running = None

    def save(step: int, phase_index: int) -> None:
        if main_rank:
            minutes = elapsed + (time.time() - started) / 60
            extra = {"history": history, "minutes": minutes, "run": identity}
            partial = checkpoint.with_suffix(".partial")
            torch.save(checkpoint_state(network, optimizer, schedule, scaler, step, phase_index, extra), partial)
            partial.replace(checkpoint)

    stop.in_loop = True
    for phase_index, phase in enumerate(phases):
        begin = phases[phase_index - 1].end if phase_index else 0
        if step >= phase.end:
            continue
        model = None  # release the previous phase's DDP wrapper (and its gradient hooks) first
        parameters = set_trainable(network, phase)
        model = context.wrap(training_view(network, recipe))
        optimizer, schedule = make_optimizer(recipe, parameters, phase.end - begin)
        scaler = loss_scaler(device, dtype)
        if state is not None and resumed_phase == phase_index and step > begin:
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        seed = recipe.seed + step + 1_000_003 * context.rank  # each rank (and each resumption) draws its own share
        sampler = make_sampler(recipe, card, network, train_cases, phase, seed)
        generator = torch.Generator().manual_seed(seed)
        while step < phase.end:
            train_mode(network, phase)
            x, target = make_batch(recipe, sampler, card.outputs["type"], generator)
            x = x.to(device).contiguous(memory_format=memory_format) if not spatial_3d else x.to(device)
            target = target.to(device)
            if not phase.output_only:
                set_momentum(optimizer, recipe, (step - begin) / max(1, phase.end - begin))
            with autocast(device, dtype):
                logits = model(x)
            loss = optimize(loss_fn(logits, target), network, optimizer, schedule, recipe, scaler)
            step += 1
            value, stop_now = context.mean_and_any(float(loss.detach()), stop.requested)  # every rank stops at one step
            running = value if running is None else 0.95 * running + 0.05 * value
            lr = schedule.get_last_lr()[0]
            if main_rank:
                with losses_log.open("a") as f:
                    f.write(json.dumps({"step": step, "phase": phase.name, "loss": round(value, 6), "lr": lr}) + "\n")
            progress.update(step, running, lr, phase.name if len(phases) > 1 else "")
            if main_rank and step == phase.end and phase is not phases[-1]:
                # written before any checkpoint past this phase (a resumed run skips the phase); they let a later
                # phase be redone alone (--init ... --steps 0) after the checkpoint has moved on
                phase_end = args.out / f"{card.id}-{phase.name.replace(' ', '')}.safetensors"
                save_weights(network, phase_end, dtype=torch.float32)
                log.info("wrote %s (the weights at the end of %s)", phase_end, phase.name)
            at_end = step == total  # the end of the last phase; earlier phases only on the validate_every grid
            if step % recipe.validate_every == 0 or at_end:
                context.sync_buffers(network)
                if main_rank:
                    network.eval()
                    result = evaluate(network, card, val_cases, device, dtype)
                    final_evaluation = result if at_end and deferrable else None
                    minutes = round(elapsed + (time.time() - started) / 60, 1)
                    history.append(
                        {"step": step, "phase": phase.name, "loss": round(running, 4), "minutes": minutes, **result["dice"]}
                    )
                    progress.message(f"validation at step {step}: {result['dice']}")
                save(step, phase_index)
                context.barrier()
            elif step % args.checkpoint_every == 0:
                save(step, phase_index)
            if stop_now and step < total:  # Ctrl-C or SIGTERM (training_stop): this step is finished, validated if due
                save(step, phase_index)
                if main_rank:
                    log.warning("stopped after step %d; saved %s: run the same command to resume", step, checkpoint)
                raise KeyboardInterrupt
    stop.in_loop = False

    rank_weights = os.environ.get(RANK_WEIGHTS_ENV)
    if rank_weights:
        save_weights(network.cpu(), Path(rank_weights) / f"rank{context.rank}.safetensors", dtype=torch.float32)
        (Path(rank_weights) / f"rank{context.rank}-cases.json").write_text(json.dumps(train_ids))
    if not main_rank:
        return 0
    minutes = elapsed + (time.time() - started) / 60
    extra = {"first_cnn": first_cnn} if first_cnn else {}
    extra.update({"init": init} if init else {})
    write_card(
        args,
        card,
        recipe,
        network,
        phases,
        val_cases,
        history,
        extra,
        argv,
        minutes,
        started_at,
        context,
        dtype,
        final_evaluation,
    )
    return 0


def write_card(
    args: argparse.Namespace,
    card: ModelCard,
    recipe: Recipe,
    network: nn.Module,
    phases: list[Phase],
    val_cases: list[CachedCase],
    history: list[dict],
    extra: dict[str, dict],
    argv: list[str] | None,
    minutes: float,
    started_at: datetime,
    context: distributed.Distributed,
    dtype: torch.dtype | None,
    final_evaluation: dict | None = None,
) -> None:
    """Write ``<id>.safetensors`` (fp16 unless that moves a validation Dice by more than ``TOLERANCE``) and the card.

    With ``--defer-fp16-check`` and the last step's validation at hand (``final_evaluation``), the fp16 weights are
    not evaluated here: the card says so (:mod:`fp16_check`) and the fp32 weights are kept beside them."""
    network = network.cpu().eval()
    weights = args.out / f"{card.id}.safetensors"
    card.path = args.out / f"{card.id}.json"
    card.weights = weights.name
    save_weights(network, weights, dtype=torch.float16)
    cpu = torch.device("cpu")
    deferred = args.defer_fp16_check and final_evaluation is not None
    if args.defer_fp16_check and not deferred:
        log.info("--defer-fp16-check: no last-step validation on the CPU in fp32 or bf16 to defer to; checking fp16 here")
    if deferred:
        save_weights(network, args.out / f"{card.id}-fp32.safetensors", dtype=torch.float32)
        final = final_evaluation
    else:
        final = evaluate(card.load(), card, val_cases, cpu, autocast_dtype(cpu, args.precision))
    weights_dtype = "float16"
    fp32 = {k: history[-1][k] for k in ("WT", "TC", "ET")} if history else final["dice"]
    if not deferred and any(abs(final["dice"][k] - fp32[k]) > TOLERANCE for k in fp32):
        save_weights(network, weights, dtype=torch.float32)
        final = evaluate(card.load(), card, val_cases, cpu, autocast_dtype(cpu, args.precision))
        weights_dtype = "float32"
    phase_steps = [p.end - (phases[i - 1].end if i else 0) for i, p in enumerate(phases)]
    command = argv if argv is not None else sys.argv[1:]
    prefix = f"torchrun --nproc_per_node {context.world_size} " if context.enabled else ""
    card.training = {
        "command": prefix + "brain-tumor-seg train " + " ".join(shlex.quote(str(a)) for a in command),
        "architecture": card.architecture,
        "data": str(args.data.name),
        "label_convention": args.convention,
        "split": {"train": list(json.loads(args.split.read_text())["train"]), "validation": [c.case_id for c in val_cases]},
        **recipe.to_dict(),
        "loss_description": {
            "ce": "cross-entropy",
            "weighted-ce": "class-weighted cross-entropy",
            "dice-ce": "soft Dice + cross-entropy",
        }[recipe.loss]
        + (" on WT/TC/ET (sigmoid)" if card.outputs["type"] == "regions" else " over labels 0-3 (softmax)"),
        "phases": [p.describe(n, "first_cnn" in extra) for p, n in zip(phases, phase_steps, strict=True)],
        "augmentation": augmentation_description(recipe),
        **extra,  # the fixed first CNN of a cascade, the weights training started from
        "started": started_at.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "minutes": round(minutes, 1),
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "precision": precision_name(dtype),
        "processes": context.world_size,
        "history": history,
    }
    card.validation = {
        "cases": len(val_cases),
        "method": "BrainTumorSeg.train.evaluate: pipeline.predict_with_card + postprocess.probabilities_to_labels "
        "+ metrics.region_dice on the cached, cropped validation cases; seconds_per_case: that path without file "
        "reading (`brain-tumor-seg validate --write` replaces it with read + segment + clean-up)",
        "weights_dtype": weights_dtype,
        "dice_fp32": fp32,
        **({"fp16_check": DEFERRED} if deferred else {}),
        **final,
    }
    card.write(card.path)
    log.info("wrote %s and %s; validation Dice %s", weights, card.path, final["dice"])


if __name__ == "__main__":
    raise SystemExit(main())
