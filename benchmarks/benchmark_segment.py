"""Time the whole CLI run on the full-size sample case (240x240x155) and the network forward alone.

Run by hand: `.venv/bin/python benchmarks/benchmark_segment.py [--model ID] [--repeats N]`.
Both figures come from the same invocation on the same machine; the ratio says what the
pipeline around the network (reading, resampling, cropping, writing) costs.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from BrainTumorSeg.case import resolve_inputs
from BrainTumorSeg.device import autocast_dtype, cpu_has_bf16
from BrainTumorSeg.geometry import Reorientation
from BrainTumorSeg.models.card import get_model
from BrainTumorSeg.pipeline import predict_with_card
from BrainTumorSeg.preprocess import prepare
from BrainTumorSeg.resources import sample_case_dir


def time_cli(model: str | None, out: Path) -> float:
    command = [sys.executable, "-m", "BrainTumorSeg.cli", "segment", "--sample", "--out", str(out)]
    if model:
        command += ["--model", model]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def time_forward(model: str | None) -> float:
    card = get_model(model)
    network = card.load()
    case = resolve_inputs(sample_case_dir())
    prepared = prepare(Reorientation.of(case.reference).to_canonical(case.data))
    device = torch.device("cpu")
    started = time.perf_counter()
    predict_with_card(card, network, prepared.data, device, autocast_dtype(device))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model id (default: the default model)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    card = get_model(args.model)
    print(
        f"model {card.id}; {platform.processor() or platform.machine()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; native bf16: {cpu_has_bf16()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cli = [time_cli(args.model, Path(tmp) / f"run{i}") for i in range(args.repeats)]
    forward = [time_forward(args.model) for _ in range(args.repeats)]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    whole, net = statistics.median(cli), statistics.median(forward)
    print(f"whole CLI run (median of {args.repeats}): {whole:6.2f} s   runs: {', '.join(f'{t:.2f}' for t in cli)}")
    print(f"network forward alone (median):     {net:6.2f} s   runs: {', '.join(f'{t:.2f}' for t in forward)}")
    print(f"whole run / forward:                {whole / net:6.2f}")
    print(f"peak RSS of a CLI run:              {peak_gb:6.2f} GB")


if __name__ == "__main__":
    main()
