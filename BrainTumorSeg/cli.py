"""``brain-tumor-seg``: segment a case or a cohort, evaluate against ground truth, list models, train.

Bad input ends with one line on stderr naming the file and the problem, exit code
2, and no output files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import SimpleITK as sitk

from . import __version__
from .atomic import write_csv
from .batch import DONE, FAILED, SEGMENTED, ProgressBar, Shard, discover_cases, parse_shard, run_batch, terminate_as_exit
from .case import MODALITIES, NAME_SUFFIXES, image_extension, read_truth, resolve_inputs, truth_file
from .errors import InputError
from .evaluation import (
    AUTO,
    CONVENTION_CHOICES,
    CSV_COLUMNS,
    evaluate_pairs,
    find_label_files,
    format_summary,
    match_cases,
    summarize,
)
from .export import check_writable
from .labels import CONVENTIONS
from .metrics import region_dice
from .models.card import available_models, get_model
from .models.registry import ARCHITECTURES
from .pipeline import segment_to_folder
from .resources import sample_case_dir

log = logging.getLogger("brain_tumor_seg")


def case_id_of(input_path: str | None, t1ce: str | None) -> str:
    """A case id for output names: the input folder's name, or the T1ce/4D file name without extension and suffix."""
    if input_path and Path(input_path).is_dir():
        return Path(input_path).resolve().name
    path = Path(t1ce or input_path or "case")
    ext = image_extension(path) or ""
    stem = path.name[: len(path.name) - len(ext)] if ext else path.stem
    for suffix in NAME_SUFFIXES["t1ce"]:
        stem = stem.removesuffix(suffix)
    return stem or "case"


def _add_segment_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment one case", description="Segment the glioma sub-regions of one case.")
    source = p.add_argument_group("input (a folder, a 4D file, four files, or --sample)")
    source.add_argument("--input", metavar="PATH", help="BraTS-named case folder, or one 4D image (FLAIR, T1w, T1gd, T2w)")
    for modality in MODALITIES:
        source.add_argument(f"--{modality}", metavar="FILE", help=f"{modality.upper()} volume")
    source.add_argument("--sample", action="store_true", help="the bundled sample case (with its ground truth)")
    p.add_argument("--out", type=Path, help="output folder (default with --sample: ./brain-tumor-seg-output)")
    p.add_argument("--truth", metavar="FILE", help="ground-truth label map (BraTS 2017-2021 labels) to report Dice against")
    p.add_argument("--report", action="store_true", help="also write <case>_report.png: FLAIR and T1ce with segment outlines")
    _add_run_options(p)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of `segment` and `batch`: model, output labels, test-time mirroring, device, precision."""
    p.add_argument("--model", help="model id (default: the default model; see `brain-tumor-seg models`)")
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR", help="extra folder of model cards + weights")
    p.add_argument("--labels", choices=sorted(CONVENTIONS), default="brats2017", help="label values of the NIfTI output")
    p.add_argument(
        "--tta", choices=("none", "x", "xy"), help="test-time mirroring: none, left-right, all in-plane (default: model card's)"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16 on CPUs with native bf16, else fp32",
    )


def run_segment(args: argparse.Namespace) -> int:
    files = {m: getattr(args, m) for m in MODALITIES}
    input_path, truth, out = args.input, args.truth, args.out
    if args.sample:
        if input_path or any(files.values()):
            raise InputError("--sample", "the sample case cannot be combined with other inputs")
        folder = sample_case_dir()
        input_path = str(folder)
        truth = truth or str(truth_file(folder))
        out = out or Path("brain-tumor-seg-output")
    if out is None:
        raise InputError("--out", "an output folder is required")
    card = get_model(args.model, args.models_dir)
    started = time.perf_counter()
    case = resolve_inputs(input_path, **files)
    truth_labels = read_truth(truth, case.reference) if truth else None
    network = card.load()
    case_id = case_id_of(input_path, files["t1ce"])
    labels, paths = segment_to_folder(
        case, card, network, out, case_id, args.labels, args.device, args.precision, flips=args.tta, report=args.report
    )
    seconds = time.perf_counter() - started
    info = json.loads(paths["volumes"].read_text())
    print(f"Segmented {case_id} with model {card.id} in {seconds:.1f} s")
    for kind, path in paths.items():
        print(f"  {kind:<13} {path.resolve()}")
    print("Volumes (mL):")
    for key, value in info["volumes_ml"].items():
        print(f"  {key:<13} {value:9.2f}")
    if truth_labels is not None:
        scores = region_dice(labels, truth_labels)
        print("Dice against " + str(truth) + ": " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="BraTS metrics of predictions against ground truth",
        description="Dice, 95%% Hausdorff distance (mm), sensitivity and specificity of WT, TC and ET, per case and summarized. "
        "Empty regions: both empty gives Dice 1 and HD95 0; only one empty gives Dice 0 and HD95 374 (BraTS 2023 legacy).",
    )
    p.add_argument("--pred", required=True, metavar="PATH", help="predicted label map, or a folder of them (matched by case id)")
    p.add_argument("--truth", required=True, metavar="PATH", help="ground-truth label map, or a folder of them")
    p.add_argument("--csv", type=Path, default=Path("evaluation.csv"), help="per-case CSV to write (default: ./evaluation.csv)")
    choices = list(CONVENTION_CHOICES)
    p.add_argument("--pred-labels", choices=choices, default=AUTO, help="label convention of the predictions (default: detect)")
    p.add_argument("--truth-labels", choices=choices, default=AUTO, help="label convention of the ground truth (default: detect)")


def _check_csv_target(path: Path) -> None:
    if not path.parent.is_dir():
        raise InputError(path, "folder of the CSV file does not exist")
    if path.is_dir():
        raise InputError(path, "is a folder; expected a CSV file name")
    if not os.access(path.parent, os.W_OK):
        raise InputError(path, "folder of the CSV file cannot be written")


def _print_summary(rows: list[dict]) -> None:
    for line in format_summary(summarize(rows)):
        print(line)


def run_evaluate(args: argparse.Namespace) -> int:
    pairs, unmatched = match_cases(Path(args.pred), Path(args.truth))
    _check_csv_target(args.csv)
    rows = evaluate_pairs(pairs, args.pred_labels, args.truth_labels)
    write_csv(args.csv, rows, CSV_COLUMNS)
    conventions = {kind: sorted({row[f"{kind}_labels"] for row in rows}) for kind in ("prediction", "truth")}
    print(
        f"Evaluated {len(rows)} case{'s' if len(rows) != 1 else ''} "
        f"(labels: predictions {'/'.join(conventions['prediction'])}, ground truth {'/'.join(conventions['truth'])})"
    )
    _print_summary(rows)
    print("Empty regions: both empty -> Dice 1, HD95 0; one empty -> Dice 0, HD95 374 mm (BraTS 2023 legacy convention).")
    print(f"Per-case CSV: {args.csv}")
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        print(f"note: {len(unmatched)} ground-truth case(s) have no prediction and were not evaluated: {shown}", file=sys.stderr)
    return 0


def _add_batch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="segment every case of a cohort folder",
        description="Segment every case (subfolder) of a cohort into OUT/<case id>/; resumable, one failing case does not "
        "stop the others (exit code 1 if any failed), --shard splits the cohort across machines.",
    )
    p.add_argument("--input", required=True, type=Path, metavar="COHORT", help="folder with one subfolder per case")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (one subfolder per case + CSV)")
    p.add_argument("--truth", type=Path, metavar="FOLDER", help="ground-truth label maps matched by case id (may be COHORT)")
    p.add_argument("--shard", metavar="I/N", help="process only shard I of N (1-based; every machine must see the same cohort)")
    p.add_argument("--report", action="store_true", help="a PNG per case and an HTML page for the cohort (report.html)")
    _add_run_options(p)


def run_batch_command(args: argparse.Namespace) -> int:
    shard = parse_shard(args.shard) if args.shard else Shard()
    cases = discover_cases(args.input, exclude=args.out)
    truths = None
    if args.truth is not None:
        if not args.truth.is_dir():
            raise InputError(args.truth, "expected a folder of ground-truth label maps (matched by case id)")
        truths = find_label_files(args.truth)
        if not truths:
            raise InputError(args.truth, "no label maps found (in the folder or its subfolders)")
    card = get_model(args.model, args.models_dir)
    network = card.load()
    check_writable(args.out)

    def segment(case_id: str, folder: Path, out: Path, report: bool, progress: Callable[[int, int], None]) -> None:
        case = resolve_inputs(folder)
        segment_to_folder(case, card, network, out, case_id, args.labels, args.device, args.precision, args.tta, progress, report)

    selected = shard.select(list(cases))
    with terminate_as_exit():
        expect = {"model": card.id, "label_convention": args.labels}
        result = run_batch(cases, args.out, segment, truths, shard, args.report, ProgressBar(len(selected)), expect=expect)
    counts = {status: sum(row["status"] == status for row in result.rows) for status in (SEGMENTED, DONE, FAILED)}
    scope = f"shard {shard} ({len(selected)} of {len(cases)} cases)" if shard.count > 1 else f"{len(cases)} cases"
    done = f"{counts[SEGMENTED]} segmented, {counts[DONE]} already done, {counts[FAILED]} failed"
    print(f"Batch with model {card.id}, {scope}: {done}")
    print(f"CSV: {result.csv}")
    scored = [row for row in result.rows if row.get("dice_WT") not in (None, "")]
    if scored:
        print(f"Metrics against the ground truth ({len(scored)} cases):")
        _print_summary(scored)
    if args.report:
        from .report import write_cohort_report  # matplotlib only when asked for

        notes = [f"Model {card.id}; label convention {args.labels}; outputs in {args.out.resolve()}."]
        if shard.count > 1:
            notes.append(f"Shard {shard} of the cohort {args.input.resolve()}.")
        title = f"BrainTumorSeg: {args.input.resolve().name}"
        page = write_cohort_report(args.out / shard.report_name, result.rows, title, notes)
        print(f"Report: {page}")
    return 1 if result.failed else 0


def architecture_citation(architecture: object) -> str:
    """The paper an architecture class cites: its ``citation`` attribute, else its docstring's first line."""
    citation = getattr(architecture, "citation", "")
    return citation or ((architecture.__doc__ or "").strip().splitlines() or [""])[0]


def run_architectures(as_json: bool) -> int:
    """Every architecture a model card can name, its default configuration's parameter count, and its paper."""
    rows = []
    for name, architecture in ARCHITECTURES.items():
        parameters = sum(p.numel() for p in architecture().parameters())
        rows.append({"architecture": name, "parameters": parameters, "citation": architecture_citation(architecture)})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'architecture':<16} {'parameters':>11}  paper (default configuration)")
    for row in rows:
        print(f"{row['architecture']:<16} {row['parameters']:>11,}  {row['citation']}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    if args.architectures:
        return run_architectures(args.json)
    cards = available_models(args.models_dir)
    if args.json:
        print(json.dumps({k: c.to_json() | {"path": str(c.path)} for k, c in cards.items()}, indent=2))
        return 0
    print(f"{'id':<22} {'architecture':<12} {'WT':>6} {'TC':>6} {'ET':>6}  name")
    for card in cards.values():
        dice = card.validation.get("dice", {})
        scores = " ".join(f"{dice[k]:6.3f}" if k in dice else "     -" for k in ("WT", "TC", "ET"))
        mark = " (default)" if card.default else ""
        print(f"{card.id:<22} {card.architecture:<12} {scores}  {card.name}{mark}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brain-tumor-seg", description="Brain tumor (glioma) segmentation in T1, T1ce, T2 and FLAIR MRI."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment_parser(sub)
    _add_batch_parser(sub)
    _add_evaluate_parser(sub)
    models = sub.add_parser("models", help="list the available models")
    models.add_argument("--models-dir", action="append", default=[], metavar="DIR")
    models.add_argument("--json", action="store_true", help="print the full model cards")
    models.add_argument(
        "--architectures", action="store_true", help="list the network architectures, their default parameter counts and papers"
    )
    sub.add_parser("train", help="train a model (see `brain-tumor-seg train --help`)", add_help=False)
    sub.add_parser("validate", help="Dice of a model on its validation cases", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from .train import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["validate"]:
        from .validation import main as validate_main

        return validate_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
    # ITK prints its own warnings to stderr; problems reach the user as one InputError line instead.
    sitk.ProcessObject.SetGlobalWarningDisplay(args.verbose)
    try:
        commands = {"segment": run_segment, "batch": run_batch_command, "evaluate": run_evaluate, "models": run_models}
        return commands[args.command](args)
    except InputError as error:
        print(f"brain-tumor-seg: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
