"""Speed and memory of the inference engine on the full-size sample case (240x240x155), measured in one run.

Run by hand (not a test; figures depend on the machine):

    .venv/bin/python benchmarks/benchmark_segment.py [--model ID] [--repeats N] [--skip-segresnet]

Prints, each figure from this invocation on this machine:

- the whole CLI run (new process: imports, reading the four files, inference, writing all outputs),
  the same work in an already warm process (no interpreter start, no imports), the per-case time of a
  ``batch`` run over copies of the case (the model loaded once),
  and the network forward alone, and their ratio (what the pipeline around the network costs);
  targets (issue 4): whole run <= 10 s, ratio <= 1.3;
- the same forward on whole brain crops (slice-wise networks without the per-batch brain box), in the same run;
- the start-up alone (a new interpreter importing what ``segment`` imports, nothing run) and the whole run
  less it, as a ratio to the forward: how much of the whole-run ratio is interpreter and imports;
- peak memory (RSS) of a CLI run; target <= 3 GB;
- the shipped TwoPathCNN (Havaei 2017) evaluated densely on a 96x96 region around the tumor of the axial slice
  with the most tumor vs classifying every pixel's 33x33 patch one by one in batches (the way the seed Keras implementation
  works): ratio (target >= 100) and whether the labels are identical;
- the reference most Slicer users run today, MONAI Auto3DSeg's BraTS SegResNet (SegResNetDS, 32
  initial filters, blocks 1-2-2-4-4, instance norm), 3D sliding window 128^3, overlap 0.625, gaussian,
  on the same brain-cropped volume our forward gets, same threads (untrained weights: speed only), as a ratio
  to our default model's forward (an ensemble's: all its networks).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from BrainTumorSeg.allocator import keep_freed_memory
from BrainTumorSeg.case import MODALITIES, read_truth, resolve_inputs, truth_file
from BrainTumorSeg.device import autocast_dtype, cpu_has_bf16
from BrainTumorSeg.geometry import Reorientation
from BrainTumorSeg.models.card import get_model
from BrainTumorSeg.models.ensemble import member_cards
from BrainTumorSeg.models.havaei import TwoPathCNN, extract_patches
from BrainTumorSeg.pipeline import predict_with_card
from BrainTumorSeg.preprocess import prepare_oriented
from BrainTumorSeg.resources import sample_case_dir


@dataclass
class CliRun:
    """One ``segment --sample`` process: wall seconds from start to exit, its peak RSS (GB), Dice on the sample."""

    whole: float
    peak_gb: float
    dice: dict[str, float]


def time_cli(model: str | None, out: Path) -> CliRun:
    """One new ``brain-tumor-seg segment --sample`` process of ``model`` (default: the default model)."""
    arguments = ["segment", "--sample", "--out", str(out), "--progress", "json"] + (["--model", model] if model else [])
    lines, whole, peak_gb = run_cli(arguments)
    return CliRun(whole, peak_gb, json.loads(lines[-1])["dice"])


def run_cli(arguments: list[str]) -> tuple[list[str], float, float]:
    """One new ``brain-tumor-seg`` process run with ``arguments``: its stdout lines, wall seconds, and peak RSS (GB)."""
    command = [sys.executable, "-m", "BrainTumorSeg.cli", *arguments]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = process.stdout.read().splitlines()
    _, status, usage = os.wait4(process.pid, 0)  # this process's own peak RSS
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"brain-tumor-seg {' '.join(arguments)} exited with {os.waitstatus_to_exitcode(status)}")
    return lines, seconds, usage.ru_maxrss / 1024**2


def fine_grid_sample(folder: Path, spacing: tuple[float, float, float] = (0.5, 0.5, 1.0)) -> Path:
    """The sample's four sequences resampled (linearly) to ``spacing`` mm, the in-plane resolution of many clinical
    scans: 480 x 480 x 155 voxels, four times the full-size case."""
    import SimpleITK as sitk

    case = folder / "fine-grid"
    case.mkdir()
    for path in sample_case_dir().glob("*.nii.gz"):
        if path.name.endswith("_seg.nii.gz"):
            continue
        image = sitk.ReadImage(str(path))
        size = [round(n * old / new) for n, old, new in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)]
        resampled = sitk.Resample(
            image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing, image.GetDirection(), 0.0
        )
        sitk.WriteImage(resampled, str(case / path.name))
    return case


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


STARTUP_IMPORTS = "import BrainTumorSeg.cli, BrainTumorSeg.pipeline, BrainTumorSeg.models.registry"


def time_startup() -> float:
    """Seconds of a new interpreter that only imports what a ``segment`` run imports (CLI, pipeline, networks)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", STARTUP_IMPORTS], check=True)
    return time.perf_counter() - started


def time_in_process(model: str | None, out: Path) -> float:
    """Seconds of the CLI's own work in this already warm process: read the four files, load the weights, segment,
    clean up, write all outputs (what a long-lived caller, e.g. a server or a batch run, pays per case)."""
    from BrainTumorSeg.cli import main as cli_main

    arguments = ["segment", "--sample", "--out", str(out)] + (["--model", model] if model else [])
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cli_main(arguments)
    return time.perf_counter() - started


def time_batch(model: str | None, folder: Path, cases: int) -> list[float]:
    """Per-case seconds (the batch CSV's) of one `brain-tumor-seg batch` process over ``cases`` copies of the sample case."""
    cohort = folder / "cohort"
    for i in range(cases):
        case = cohort / f"copy{i}"
        case.mkdir(parents=True)
        for path in sample_case_dir().glob("*.nii.gz"):
            if not path.name.endswith("_seg.nii.gz"):
                (case / path.name.replace(sample_case_dir().name, case.name)).symlink_to(path)
    command = [sys.executable, "-m", "BrainTumorSeg.cli", "batch", "--input", str(cohort), "--out", str(folder / "out")]
    command += ["--model", model] if model else []
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with (folder / "out" / "cohort.csv").open() as table:
        return [float(row["seconds"]) for row in csv.DictReader(table)]


def prepared_sample() -> tuple[np.ndarray, np.ndarray]:
    """The sample case as the networks get it (canonical, cropped to the brain, normalised) and its ground truth
    (internal labels) on the same voxels."""
    case = resolve_inputs(sample_case_dir())
    orientation = Reorientation.of(case.reference)
    prepared = prepare_oriented(case.data, orientation)
    truth = read_truth(truth_file(sample_case_dir()), case.reference)
    return prepared.data, orientation.to_canonical(truth)[prepared.crop.slices]


def time_forward(model: str | None, volume: np.ndarray, whole_crop: bool = False) -> list[float]:
    """Seconds of each of the model's networks (an ensemble card's members) on the prepared volume; ``whole_crop``: the
    slice-wise networks on the whole brain crop (``inference.box_margin`` null) instead of each batch's brain box."""
    cards = member_cards(get_model(model))
    if whole_crop:
        cards = [replace(card, inference={**card.inference, "box_margin": None}) for card in cards]
    loaded = [(card, card.load()) for card in cards]
    device = torch.device("cpu")
    seconds = []
    for card, network in loaded:
        started = time.perf_counter()
        predict_with_card(card, network, volume, device, autocast_dtype(device))
        seconds.append(time.perf_counter() - started)
    return seconds


@torch.inference_mode()
def twopath_dense_vs_patches(
    volume: np.ndarray, truth: np.ndarray, size: int = 96, batch: int = 256
) -> tuple[float, float, bool, int]:
    """Seconds of dense and of per-pixel-patch evaluation by the shipped, trained TwoPathCNN of a ``size``-square
    region centred on the tumor of the axial slice with the most tumor, whether the labels are the same, and how
    many distinct labels the region has (a region of one label would make "same labels" easy)."""
    card = get_model("twopathcnn-axial")
    network = card.load()
    if not isinstance(network, TwoPathCNN):
        raise SystemExit(f"model {card.id} is not a TwoPathCNN")
    channels = volume[[MODALITIES.index(m) for m in card.modalities]]
    z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
    axial = torch.from_numpy(np.ascontiguousarray(channels[..., z]))  # (4, x, y)
    tumor = np.nonzero(truth[..., z])  # its x and y
    top, left = (int(np.clip(c.mean() - size // 2, 0, n - size)) for c, n in zip(tumor, axial.shape[1:], strict=True))
    started = time.perf_counter()
    dense = network(axial[None, :, top : top + size, left : left + size]).argmax(1)[0]
    dense_seconds = time.perf_counter() - started
    region = axial[:, top : top + size, left : left + size]
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.stack([rows.ravel(), cols.ravel()], dim=1)
    started = time.perf_counter()
    labels = [
        network.classify_patches(extract_patches(region, centres[i : i + batch], network.patch_size)).argmax(1)
        for i in range(0, len(centres), batch)
    ]
    patch_seconds = time.perf_counter() - started
    same = bool(torch.equal(torch.cat(labels).view(size, size), dense))
    return dense_seconds, patch_seconds, same, len(torch.unique(dense))


@torch.inference_mode()
def time_auto3dseg_segresnet(volume: np.ndarray) -> float:
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNetDS

    network = SegResNetDS(init_filters=32, in_channels=4, out_channels=3, blocks_down=(1, 2, 2, 4, 4), norm="instance").eval()
    image = torch.from_numpy(np.ascontiguousarray(volume))[None]
    started = time.perf_counter()
    sliding_window_inference(image, (128, 128, 128), 1, network, overlap=0.625, mode="gaussian")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model id (default: the default model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-segresnet", action="store_true", help="skip the MONAI SegResNet reference (minutes)")
    args = parser.parse_args()
    card = get_model(args.model)
    kept = keep_freed_memory()  # as the CLI does, so the forward here is timed with the CLI's allocator setting
    print(
        f"model {card.id}; {cpu_name()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; native bf16: {cpu_has_bf16()}; freed memory kept (glibc): {kept}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        runs = [time_cli(args.model, Path(tmp) / f"run{i}") for i in range(args.repeats)]
    cli = [run.whole for run in runs]
    volume, truth = prepared_sample()
    per_network = [time_forward(args.model, volume) for _ in range(args.repeats)]
    forward = [sum(times) for times in per_network]
    with tempfile.TemporaryDirectory() as tmp:
        time_in_process(args.model, Path(tmp) / "warm-up")
        in_process = [time_in_process(args.model, Path(tmp) / f"run{i}") for i in range(args.repeats)]
    whole, net, warm = statistics.median(cli), statistics.median(forward), statistics.median(in_process)
    print(f"whole CLI run (median of {args.repeats}):  {whole:7.2f} s   runs: {', '.join(f'{t:.2f}' for t in cli)}")
    print(f"network forward alone (median):      {net:7.2f} s   runs: {', '.join(f'{t:.2f}' for t in forward)}")
    if len(per_network[0]) > 1:
        medians = [statistics.median(times) for times in zip(*per_network, strict=True)]
        names = [card.id for card in member_cards(card)]
        print(f"  of which, per network (median):    {', '.join(f'{n} {t:.2f} s' for n, t in zip(names, medians, strict=True))}")
    print(f"whole run / forward:                 {whole / net:7.2f}   (target <= 1.3; whole run target <= 10 s)")
    uncropped = statistics.median(sum(time_forward(args.model, volume, whole_crop=True)) for _ in range(args.repeats))
    print(
        f"forward on whole brain crops instead of each batch's brain box: {uncropped:.2f} s "
        f"(the box saves {1 - net / uncropped:.0%})"
    )
    startup = statistics.median(time_startup() for _ in range(args.repeats))
    print(
        f"start-up alone (interpreter + imports): {startup:5.2f} s; (whole run - start-up) / forward: "
        f"{(whole - startup) / net:.2f}"
    )
    print(f"in a warm process (median):          {warm:7.2f} s   runs: {', '.join(f'{t:.2f}' for t in in_process)}")
    print(
        f"warm-process run / forward:          {warm / net:7.2f}   (target <= 1.3: reading the files to writing the outputs, "
        "without interpreter start and imports, about what `batch` pays per case)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cohort = time_batch(args.model, Path(tmp), args.repeats + 1)
    per_case = statistics.median(cohort[1:])  # the first case also waits for PyTorch's import
    print(
        f"batch, per case after the first:     {per_case:7.2f} s   cases: {', '.join(f'{t:.2f}' for t in cohort)}; "
        f"/ forward: {per_case / net:.2f}"
    )
    print(f"peak RSS of a CLI run:               {max(run.peak_gb for run in runs):7.2f} GB (target <= 3 GB)")
    with tempfile.TemporaryDirectory() as tmp:
        case = fine_grid_sample(Path(tmp))
        arguments = ["segment", "--input", str(case), "--out", str(Path(tmp) / "out"), "--probabilities"]
        _, _, fine = run_cli(arguments + (["--model", args.model] if args.model else []))
    print(f"peak RSS with --probabilities, the sample at 0.5 x 0.5 x 1 mm (480 x 480 x 155): {fine:.2f} GB")
    dense, patches, same, labels = twopath_dense_vs_patches(volume, truth)
    print(
        f"TwoPathCNN (shipped weights) 96x96 region around the tumor: dense {dense:.3f} s, patch by patch {patches:.2f} s, "
        f"ratio {patches / dense:.0f}x (target >= 100), same labels: {same} ({labels} distinct labels in the region)"
    )
    if not args.skip_segresnet:
        reference = time_auto3dseg_segresnet(volume)
        print(
            f"MONAI Auto3DSeg BraTS SegResNet, 128^3 window, overlap 0.625: {reference:.1f} s; "
            f"our default model's forward is {reference / net:.1f}x faster"
        )


if __name__ == "__main__":
    main()
