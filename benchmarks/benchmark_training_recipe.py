"""Seconds per training step of each architecture's recipe as `brain-tumor-seg train` runs it, and seconds per validation case.

A step here is the trainer's whole step: sampling from cached cases, augmentation, forward, loss, backward, optimizer
(and Havaei's L1 and max-norm). Validation is one case through the trainer's evaluation (the card's inference mode).
Run by hand, on an otherwise idle machine, after the cases are cached (any training run caches them):

    .venv/bin/python benchmarks/benchmark_training_recipe.py --cache /work/cache --data ../shared/data/brats \
        [--architectures twopathcnn segresnet] [--steps 4] [--validate]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from BrainTumorSeg.allocator import keep_freed_memory
from BrainTumorSeg.havaei_training import load_first_cnn
from BrainTumorSeg.losses import Loss
from BrainTumorSeg.models.card import ARCHITECTURE_NAMES, ModelCard
from BrainTumorSeg.models.registry import save_weights
from BrainTumorSeg.recipes import CASCADES, Recipe, default_template
from BrainTumorSeg.train import Phase, evaluate, make_batch, make_optimizer, make_sampler, optimize, training_view
from BrainTumorSeg.training_data import load_training_case

ROOT = Path(__file__).resolve().parents[1]


def card_of(architecture: str) -> tuple[ModelCard, Recipe]:
    template = default_template(architecture)
    recipe = Recipe.from_dict(template.pop("training"))
    return ModelCard(**template), recipe


def step_seconds(architecture: str, cases: list, steps: int, tmp: Path) -> tuple[float, torch.nn.Module, ModelCard]:
    """Median seconds of ``steps`` trainer steps after one warm-up step."""
    card, recipe = card_of(architecture)
    torch.manual_seed(0)
    network = card.build()
    if architecture in CASCADES:  # a random first CNN of the same configuration stands in for the trained one
        first = tmp / "first.safetensors"
        save_weights(ModelCard(**{**card.to_json(), "architecture": "twopathcnn", "config": twopath_config(card)}).build(), first)
        load_first_cnn(network, first)
    three_d = recipe.sampler == "blocks"
    memory_format = torch.contiguous_format if three_d else torch.channels_last
    network = network.to(memory_format=memory_format).train()
    model = training_view(network, recipe)
    parameters = [p for p in network.parameters() if p.requires_grad]
    optimizer, schedule = make_optimizer(recipe, parameters, 1000)
    loss_fn = Loss(recipe.loss, card.outputs["type"])
    sampler = make_sampler(recipe, card, network, cases, Phase("phase 1", 1000, recipe.balance, False), seed=0)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        x, target = make_batch(recipe, sampler, card.outputs["type"], generator)
        x = x if three_d else x.contiguous(memory_format=memory_format)
        optimize(loss_fn(model(x), target), network, optimizer, schedule, recipe)
        times.append(time.perf_counter() - started)
    times = sorted(times[1:])
    return times[len(times) // 2], network, card


def twopath_config(card: ModelCard) -> dict:
    return {k: v for k, v in card.config.items() if k != "freeze_first"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "brats")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--split", type=Path, default=ROOT / "training" / "split.json")
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURE_NAMES), choices=ARCHITECTURE_NAMES)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cases", type=int, default=4, help="training cases to sample from")
    parser.add_argument("--validate", action="store_true", help="also time one validation case")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    kept = keep_freed_memory()  # as `brain-tumor-seg train` does
    split = json.loads(args.split.read_text())
    cases = [load_training_case(args.data / c, args.cache, "brats2017") for c in split["train"][: args.cases]]
    validation = load_training_case(args.data / split["validation"][0], args.cache, "brats2017")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; freed memory kept (glibc): {kept}")
    for architecture in args.architectures:
        seconds, network, card = step_seconds(architecture, cases, args.steps, args.tmp)
        _, recipe = card_of(architecture)
        parameters = sum(p.numel() for p in network.parameters())
        line = f"{architecture:<16} {parameters / 1e6:6.2f} M  batch {recipe.batch:>3}  {seconds:6.2f} s/step"
        if args.validate:
            started = time.perf_counter()
            evaluate(network.eval(), card, [validation], torch.device("cpu"), None)
            line += f"  validation {time.perf_counter() - started:6.1f} s/case ({validation.case_id})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
