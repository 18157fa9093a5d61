"""Training a slice-wise 2D network on BraTS-style cases, writing weights and a complete model card.

Cases are read with the same code as inference (:mod:`case`, :mod:`geometry`,
:mod:`preprocess`) and cached as float16 canonical arrays. Each step samples
axial slices (a chosen fraction containing tumor), crops them to a fixed size,
and augments the batch on the fly (flips, rotation, scaling, per-sequence
intensity scale and shift, noise). Region outputs (WT, TC, ET as overlapping
sigmoid channels) train with soft Dice + binary cross-entropy. Validation runs
the real inference path on whole validation cases and reports BraTS region Dice.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .case import MODALITIES, read_image, resolve_inputs, truth_file
from .device import autocast, autocast_dtype, resolve_device
from .geometry import Reorientation
from .inference import AXES, context_stack
from .labels import from_convention, region_masks
from .metrics import mean_region_dice, region_dice
from .models.card import ModelCard
from .models.registry import save_weights
from .pipeline import predict_with_card
from .postprocess import probabilities_to_labels
from .preprocess import prepare

log = logging.getLogger("brain_tumor_seg.train")


@dataclass
class CachedCase:
    """One training case: normalised channels ``(4, x, y, z)`` float16 and internal labels ``(x, y, z)``."""

    case_id: str
    data: np.ndarray
    labels: np.ndarray


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def load_training_case(folder: Path, cache: Path, convention: str) -> CachedCase:
    """Read, reorient, crop and normalise one case with its labels; cached as .npz."""
    cached = cache / f"{folder.name}.npz"
    if cached.is_file():
        with np.load(cached) as z:
            return CachedCase(folder.name, z["data"], z["labels"])
    case = resolve_inputs(folder)
    orientation = Reorientation.of(case.reference)
    truth = sitk.GetArrayFromImage(read_image(truth_file(folder))).astype(np.int16)  # labels checked after the crop
    prepared = prepare(orientation.to_canonical(case.data))
    labels = from_convention(orientation.to_canonical(truth)[prepared.crop.slices], convention)
    cache.mkdir(parents=True, exist_ok=True)
    data = prepared.data.astype(np.float16)
    np.savez(cached, data=data, labels=labels)
    return CachedCase(folder.name, data, labels)


def region_targets(labels: torch.Tensor) -> torch.Tensor:
    """Internal labels ``(B, H, W)`` -> float WT/TC/ET targets ``(B, 3, H, W)``."""
    masks = region_masks(labels.numpy())
    return torch.from_numpy(np.stack([masks[k] for k in ("WT", "TC", "ET")], axis=1).astype(np.float32))


class SliceSampler:
    """Random 2.5D slices along one axis, a fraction of them through tumor, cropped or padded to ``size``."""

    def __init__(self, cases: list[CachedCase], axis: str, context: int, size: tuple[int, int], tumor_fraction: float, seed: int):
        self.axis = AXES[axis]
        self.context = context
        self.size = size
        self.tumor_fraction = tumor_fraction
        self.rng = np.random.default_rng(seed)
        self.slices = [torch.from_numpy(c.data).movedim(1 + self.axis, 0) for c in cases]  # (S, C, H, W) views
        self.labels = [torch.from_numpy(c.labels).movedim(self.axis, 0) for c in cases]
        self.tumor_index = [np.flatnonzero(lab.flatten(1).any(dim=1).numpy()) for lab in self.labels]

    def _window(self, length: int, want: int, centre: int | None) -> tuple[int, int]:
        """Start in the array and offset in the output for a window of ``want`` along an axis of ``length``."""
        if length >= want:
            if centre is None:
                start = int(self.rng.integers(0, length - want + 1))
            else:
                start = int(np.clip(centre - want // 2 + self.rng.integers(-want // 4, want // 4 + 1), 0, length - want))
            return start, 0
        return 0, int(self.rng.integers(0, want - length + 1))

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = [], []
        for _ in range(batch):
            c = int(self.rng.integers(len(self.slices)))
            slices, lab = self.slices[c], self.labels[c]
            tumor = self.rng.random() < self.tumor_fraction and len(self.tumor_index[c])
            s = int(self.rng.choice(self.tumor_index[c])) if tumor else int(self.rng.integers(slices.shape[0]))
            x = context_stack(slices, torch.tensor([s]), self.context)[0].float()
            y = lab[s]
            centre = None
            if tumor:
                points = torch.nonzero(y)
                centre = points[int(self.rng.integers(len(points)))].tolist()
            out_x = torch.zeros((x.shape[0], *self.size))
            out_y = torch.zeros(self.size, dtype=torch.uint8)
            src, dst = [], []
            for a in range(2):
                start, offset = self._window(y.shape[a], self.size[a], None if centre is None else centre[a])
                n = min(y.shape[a], self.size[a])
                src.append(slice(start, start + n))
                dst.append(slice(offset, offset + n))
            out_x[:, dst[0], dst[1]] = x[:, src[0], src[1]]
            out_y[dst[0], dst[1]] = y[src[0], src[1]]
            inputs.append(out_x)
            labels.append(out_y)
        return torch.stack(inputs), torch.stack(labels)


def augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch augmentation: flips, rotation +-15 deg and scale 0.85-1.15 (p 0.7), per-sequence intensity scale/shift, noise."""
    b = x.shape[0]
    for dim in (2, 3):
        flip = torch.rand(b, generator=generator) < 0.5
        x[flip] = x[flip].flip(dim)
        y[flip] = y[flip].flip(dim)
    apply = (torch.rand(b, generator=generator) < 0.7).float()
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(15) * apply
    scale = 1 + (torch.rand(b, generator=generator) * 0.3 - 0.15) * apply
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    brain = (x != 0).float()
    groups = x.view(b, -1, sequences, *x.shape[2:])  # (B, slices, sequences, H, W)
    gain = 1 + 0.1 * torch.randn(b, 1, sequences, 1, 1, generator=generator)
    shift = 0.1 * torch.randn(b, 1, sequences, 1, 1, generator=generator)
    x = (groups * gain + shift).view_as(x) * brain
    noisy = (torch.rand(b, 1, 1, 1, generator=generator) < 0.2).float()
    x = x + noisy * 0.05 * torch.randn(x.shape, generator=generator) * brain
    return x, y


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per output channel over the whole batch, averaged over channels."""
    prob = torch.sigmoid(logits)
    dims = (0, 2, 3)
    inter = (prob * target).sum(dims)
    return (1 - (2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)).mean()


def evaluate(
    network: torch.nn.Module, card: ModelCard, cases: list[CachedCase], device: torch.device, dtype: torch.dtype | None
) -> dict:
    """Mean and per-case BraTS region Dice on whole cases through the real inference path."""
    per_case = {}
    for case in cases:
        probabilities = predict_with_card(card, network, case.data.astype(np.float32), device, dtype)
        brain = np.any(case.data != 0, axis=0)
        prediction = probabilities_to_labels(probabilities, card.outputs, brain)
        per_case[case.case_id] = {k: round(v, 4) for k, v in region_dice(prediction, case.labels).items()}
    mean = mean_region_dice(per_case)
    return {"dice": mean, "per_case": per_case}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="brain-tumor-seg train", description=__doc__.splitlines()[0])
    p.add_argument(
        "--card", required=True, type=Path, help="model card template (architecture, config, inputs, outputs, inference)"
    )
    p.add_argument("--data", required=True, type=Path, help="folder of BraTS-named case folders")
    p.add_argument("--split", required=True, type=Path, help='JSON {"train": [ids], "validation": [ids]}')
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "brain-tumor-seg")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, nargs=2, default=(160, 192))
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tumor-fraction", type=float, default=0.7)
    p.add_argument("--validate-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--convention", default="brats2017", help="label convention of the ground-truth files")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    dtype = autocast_dtype(device)
    card = ModelCard.read(args.card)
    split = json.loads(args.split.read_text())
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    train_cases = [load_training_case(args.data / c, args.cache, args.convention) for c in split["train"]]
    val_cases = [load_training_case(args.data / c, args.cache, args.convention) for c in split["validation"]]
    log.info("loaded %d training and %d validation cases in %.0f s", len(train_cases), len(val_cases), time.time() - started)

    network = card.build().to(device)
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = min(100, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, args.steps - warmup))),
    )
    checkpoint = args.out / "checkpoint.pt"
    step = 0
    history: list[dict] = []
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step = int(state["step"])
        history = json.loads((args.out / "history.json").read_text()) if (args.out / "history.json").is_file() else []
        log.info("resumed at step %d", step)

    sampler = SliceSampler(
        train_cases, card.inference["axis"], card.context_slices, tuple(args.crop), args.tumor_fraction, args.seed + step
    )
    generator = torch.Generator().manual_seed(args.seed + step)
    train_started, first_step = time.time(), step
    running = 0.0
    while step < args.steps:
        network.train()
        x, labels = sampler.sample(args.batch)
        y = region_targets(labels)
        x, y = augment(x, y, generator, len(MODALITIES))
        x = x.contiguous(memory_format=memory_format).to(device)
        y = y.to(device)
        with autocast(device, dtype):
            logits = network(x)
        logits = logits.float()
        loss = F.binary_cross_entropy_with_logits(logits, y) + soft_dice_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step > 1 else value
        if step % 20 == 0:
            rate = (time.time() - train_started) / (step - first_step)
            log.info("step %d/%d loss %.4f lr %.2e (%.2f s/step)", step, args.steps, running, schedule.get_last_lr()[0], rate)
        if step % args.validate_every == 0 or step == args.steps:
            network.eval()
            result = evaluate(network, card, val_cases, device, dtype)
            history.append(
                {"step": step, "loss": round(running, 4), "minutes": round((time.time() - started) / 60, 1), **result["dice"]}
            )
            log.info("validation at step %d: %s", step, result["dice"])
            torch.save(
                {
                    "network": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "step": step,
                },
                checkpoint,
            )
            (args.out / "history.json").write_text(json.dumps(history, indent=1))

    minutes = (time.time() - started) / 60
    weights = args.out / f"{card.id}.safetensors"
    save_weights(network.cpu(), weights)
    card.path = args.out / f"{card.id}.json"
    card.weights = weights.name
    shipped = card.load()
    final = evaluate(shipped, card, val_cases, torch.device("cpu"), autocast_dtype(torch.device("cpu")))
    card.training = {
        "command": "brain-tumor-seg train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "data": str(args.data.name),
        "split": {"train": split["train"], "validation": split["validation"]},
        "steps": args.steps,
        "batch": args.batch,
        "crop": list(args.crop),
        "learning_rate": args.lr,
        "tumor_fraction": args.tumor_fraction,
        "loss": "soft Dice + binary cross-entropy on WT/TC/ET",
        "augmentation": (
            "flips (both in-plane axes), rotation +-15 deg and scale 0.85-1.15 (p 0.7), per-sequence gain/shift, noise (p 0.2)"
        ),
        "optimizer": "AdamW, weight decay 1e-4, linear warm-up then cosine decay",
        "seed": args.seed,
        "minutes": round(minutes, 1),
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, precision {dtype or 'fp32'}",
        "history": history,
    }
    card.validation = {"cases": len(val_cases), "weights_dtype": "float16", **final}
    card.write(card.path)
    log.info("wrote %s and %s; validation Dice %s", weights, card.path, final["dice"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
