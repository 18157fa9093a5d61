"""Seconds per training step (forward, backward, AdamW) of model-card templates on random input, to plan training runs.

Run by hand:

    .venv/bin/python benchmarks/benchmark_training_step.py training/pspnet-axial.json [...] [--batch 16 --crop 160 192]

Data sampling and augmentation are not included (they add about 0.5-1 s per step in `brain-tumor-seg train`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from BrainTumorSeg.models.card import ModelCard


def step_seconds(card: ModelCard, batch: int, crop: tuple[int, int], steps: int = 4) -> float:
    """Fastest of ``steps`` training steps after the first (which warms up the allocator)."""
    network = card.build().train()
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    x = torch.randn(batch, int(card.config.get("in_channels", 4)), *crop)
    y = (torch.rand(batch, int(card.config.get("out_channels", 3)), *crop) > 0.5).float()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(network(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cards", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, nargs=2, default=(160, 192))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, crop {args.crop[0]}x{args.crop[1]}")
    for path in args.cards:
        card = ModelCard.read(path)
        parameters = sum(p.numel() for p in card.build().parameters())
        seconds = step_seconds(card, args.batch, tuple(args.crop))
        print(f"{card.id:<24} {parameters / 1e6:6.2f} M parameters  {seconds:6.2f} s/step")


if __name__ == "__main__":
    main()
