"""CPU time of every model on the full-size sample case (240x240x155), all measured in one run on one machine.

Run by hand (not a test; figures depend on the machine):

    .venv/bin/python benchmarks/benchmark_models.py [--model ID [ID ...]] [--repeats N]

For each model (default: every model `brain-tumor-seg models` lists; ``a,b`` is the ensemble of a and b),
``--repeats`` new processes of ``brain-tumor-seg segment --sample --model ID --progress json``, and per model
the median of:

- whole: the process from start to exit (interpreter, imports, reading the four files, inference,
  clean-up, writing all outputs): what one `segment` command costs;
- peak RSS of the process;
- Dice on the sample case against its ground truth (one case, for a check, not a validation figure).

Prints a Markdown table for the README's model table, with the machine, threads and precision, and the
start-up alone (a new interpreter importing what ``segment`` imports, as in benchmark_segment.py), which every
whole run includes: a long-lived process (``batch``) saves about that much per case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from benchmark_segment import cpu_name, time_cli, time_startup

from BrainTumorSeg.device import cpu_has_bf16
from BrainTumorSeg.models.card import available_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", help="model ids, or a,b for an ensemble (default: every model)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    ids = args.model or list(available_models())
    print(
        f"{cpu_name()}; {os.cpu_count()} CPUs; native bf16: {cpu_has_bf16()} "
        f"(the networks run in {'bf16' if cpu_has_bf16() else 'fp32'}); median of {args.repeats} new processes"
    )
    startup = statistics.median(time_startup() for _ in range(3))
    print(f"start-up alone (interpreter + imports, median of 3): {startup:.2f} s")
    print("| id | whole CLI run | peak RSS | sample Dice WT / TC / ET |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in ids:
            runs = [time_cli(model, Path(tmp) / f"{model}-{i}") for i in range(args.repeats)]
            dice = runs[-1].dice
            print(
                f"| `{model}` | {statistics.median(r.whole for r in runs):.1f} s "
                f"| {max(r.peak_gb for r in runs):.2f} GB "
                f"| {' / '.join(f'{dice[k]:.3f}' for k in ('WT', 'TC', 'ET'))} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
