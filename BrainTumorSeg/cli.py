"""``brain-tumor-seg``: segment a case or a cohort, evaluate against ground truth, list models, train.

Bad input ends with one line on stderr naming the file and the problem, exit code
2, and no output files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import SimpleITK as sitk

from . import __version__
from .allocator import keep_freed_memory
from .atomic import write_csv
from .batch import DONE, FAILED, SEGMENTED, ProgressBar, Shard, discover_cases, parse_shard, run_batch, terminate_as_exit
from .case import MODALITIES, NAME_SUFFIXES, Case, image_extension, read_truth, resolve_inputs, truth_file
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
from .models.card import AXES, FLIPS, MODES, ModelCard, available_models, get_model
from .preprocess import Prepared, prepare_case
from .progress import Cancelled, RunControl, json_lines
from .resources import sample_case_dir

if TYPE_CHECKING:  # PyTorch is imported only by the commands that run a network (`models`, `evaluate` start fast)
    import numpy as np

    from .pipeline import Member, RunOptions

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
    p.add_argument(
        "--progress",
        choices=("none", "json"),
        default="none",
        help="json: one JSON object per line on stdout (stage, done, total, message; the last one has stage done, "
        "outputs and volumes_ml) and nothing else there",
    )
    _add_run_options(p)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of `segment` and `batch`: models, inference mode, clean-up, output labels, device, precision."""
    p.add_argument(
        "--model",
        help="model id, or several separated by commas for an ensemble that averages their probabilities "
        "(default: the default model; see `brain-tumor-seg models`)",
    )
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR", help="extra folder of model cards + weights")
    p.add_argument("--labels", choices=sorted(CONVENTIONS), default="brats2017", help="label values of the NIfTI output")
    mode = p.add_argument_group("inference (default: each model card's)")
    mode.add_argument(
        "--mode", choices=MODES, help="slices: whole 2D slices; dense: the same for patch classifiers; window: sliding window"
    )
    mode.add_argument("--axis", choices=tuple(AXES), help="slice axis of 2D models (anatomical, after reorientation)")
    mode.add_argument(
        "--window", type=int, nargs="+", metavar="N", help="window size for --mode window: 2 values (2D models) or 3 (3D models)"
    )
    mode.add_argument("--overlap", type=float, help="overlap of neighbouring windows, 0 to <1 (gaussian blending)")
    mode.add_argument(
        "--tta", choices=tuple(FLIPS), help="test-time mirroring: none, x (left-right), xy (all in-plane combinations)"
    )
    clean = p.add_argument_group("clean-up of the label map (default: each model card's measured choice)")
    clean.add_argument(
        "--postprocess", choices=("model", "none"), default="model", help="start from the model card's clean-up, or none"
    )
    clean.add_argument(
        "--keep-largest", action=argparse.BooleanOptionalAction, help="keep only the largest connected tumor component"
    )
    clean.add_argument("--min-component-ml", type=float, metavar="ML", help="drop tumor components smaller than this (0: off)")
    clean.add_argument("--closing", type=int, metavar="VOXELS", help="morphological closing radius of each region (0: off)")
    clean.add_argument(
        "--et-to-core-ml", type=float, metavar="ML", help="relabel enhancing tumor as core when it is smaller than this (0: off)"
    )
    p.add_argument(
        "--probabilities", action="store_true", help="also write class probabilities and an uncertainty (entropy) map, NIfTI"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16 on CPUs with native bf16, else fp32; GPUs: bf16 or fp16 (a CPU without native bf16 emulates it: slow)",
    )


def models_name(cards: Sequence[ModelCard]) -> str:
    """The model id recorded with the outputs: the named card's, or ``a+b`` for models named together."""
    return "+".join(card.id for card in cards)


def load_members(args: argparse.Namespace) -> tuple[list[ModelCard], list[Member]]:
    """The cards named by ``--model`` (comma-separated) and the networks they run, loaded (an ensemble card's members)."""
    from .models.ensemble import expand
    from .pipeline import Member

    ids = [m.strip() for m in args.model.split(",")] if args.model else [None]
    if "" in ids:
        raise InputError("--model", f"empty model id in {args.model!r}")
    cards = [get_model(model_id, args.models_dir) for model_id in ids]
    return cards, [Member(card, card.load()) for card in expand(cards, args.models_dir)]


def run_options(args: argparse.Namespace, cards: list[ModelCard], members: list[Member]) -> RunOptions:
    """Run options from the command line (clean-up: the first named card's); checks every network's inference settings."""
    from .pipeline import InferenceOptions, RunOptions, inference_settings, postprocess_options
    from .postprocess import PostprocessOptions

    inference = InferenceOptions(
        mode=args.mode, axis=args.axis, window=tuple(args.window) if args.window else None, overlap=args.overlap, flips=args.tta
    )
    base = PostprocessOptions() if args.postprocess == "none" else postprocess_options(cards, None)
    changes = {
        "keep_largest": args.keep_largest,
        "min_component_ml": args.min_component_ml,
        "closing": args.closing,
        "et_to_core_ml": args.et_to_core_ml,
    }
    for name, value in changes.items():
        if value is not None and not isinstance(value, bool) and value < 0:
            raise InputError(f"--{name.replace('_', '-')}", "must not be negative")
    clean_up = replace(base, **{k: v for k, v in changes.items() if v is not None})
    modes = {inference_settings(member.card, inference)["mode"] for member in members}
    for flag, value in (("--window", args.window), ("--overlap", args.overlap)):
        if value is not None and "window" not in modes:
            raise InputError(flag, "applies to window mode only, and no model here runs in it (add --mode window)")
    from .device import resolve_device, warn_if_emulated

    warn_if_emulated(resolve_device(args.device), args.precision)
    return RunOptions(args.device, args.precision, inference, clean_up, args.probabilities)


def require_named_gpu(device: str) -> None:
    """A GPU named by ``--device`` (cuda, mps) must be there: checked before any input is read (InputError otherwise).
    ``auto`` and ``cpu`` need no check here, so they do not import PyTorch before the inputs are being read."""
    if device in ("cuda", "mps"):
        from .device import resolve_device

        resolve_device(device)


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
    require_named_gpu(args.device)
    as_json = args.progress == "json"
    control = RunControl(json_lines(sys.stdout) if as_json else None)
    started = time.perf_counter()
    control.report("load", 0, 1, "reading the model(s) and the four volumes")

    # The volumes (and the ground truth) are read and prepared for the networks (I/O, decompression and numpy,
    # which release the GIL) while PyTorch is imported and the model loaded; errors still surface in the order:
    # model, then inputs.
    def read_inputs() -> tuple[Case, np.ndarray | None, Prepared]:
        case = resolve_inputs(input_path, **files)
        return case, (read_truth(truth, case.reference) if truth else None), prepare_case(case)

    with ThreadPoolExecutor(max_workers=1) as pool:
        reading = pool.submit(read_inputs)
        try:
            cards, members = load_members(args)
            options = run_options(args, cards, members)
        except BaseException:
            reading.cancel()
            raise
        case, truth_labels, prepared = reading.result()
    control.report("load", 1, 1, "read the model(s) and the four volumes")
    case_id = case_id_of(input_path, files["t1ce"])
    from .pipeline import segment_to_folder

    with terminate_as_exit():
        model_id = models_name(cards)
        result, paths = segment_to_folder(
            case, members, out, case_id, args.labels, options, control, args.report, model_id=model_id, prepared=prepared
        )
    seconds = time.perf_counter() - started
    volumes = json.loads(paths["volumes"].read_text())["volumes_ml"]
    scores = region_dice(result.labels, truth_labels) if truth_labels is not None else None
    if as_json:
        outputs = {kind: str(path.resolve()) for kind, path in paths.items()}
        extra = {"outputs": outputs, "volumes_ml": volumes, "seconds": round(seconds, 2)} | ({"dice": scores} if scores else {})
        control.report("done", 1, 1, f"segmented {case_id} with {models_name(cards)}", **extra)
        return 0
    print(f"Segmented {case_id} with model {models_name(cards)} in {seconds:.1f} s")
    for kind, path in paths.items():
        print(f"  {kind:<13} {path.resolve()}")
    print("Volumes (mL):")
    for key, value in volumes.items():
        print(f"  {key:<13} {value:9.2f}")
    if scores is not None:
        print("Dice against " + str(truth) + ": " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="BraTS metrics of predictions against ground truth",
        description="Dice, 95% Hausdorff distance (mm), sensitivity and specificity of WT, TC and ET, per case and summarized. "
        "Empty regions: both empty gives Dice 1 and HD95 0; only one empty gives Dice 0 and HD95 374 (BraTS 2023 legacy).",
    )
    p.add_argument("--pred", required=True, metavar="PATH", help="predicted label map, or a folder of them (matched by case id)")
    p.add_argument("--truth", required=True, metavar="PATH", help="ground-truth label map, or a folder of them")
    p.add_argument("--csv", type=Path, default=Path("evaluation.csv"), help="per-case CSV to write (default: ./evaluation.csv)")
    choices = list(CONVENTION_CHOICES)
    detect = "(default: detect; a 3 without a 4 reads as brats2023, so name msd for Decathlon labels)"
    p.add_argument("--pred-labels", choices=choices, default=AUTO, help=f"label convention of the predictions {detect}")
    p.add_argument("--truth-labels", choices=choices, default=AUTO, help=f"label convention of the ground truth {detect}")


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


def batch_expectation(model_id: str, labels: str, options: RunOptions, members: list[Member]) -> dict:
    """What a finished case's volumes JSON must say to count as done in this run: the same model, label values,
    clean-up and inference settings (not device or precision, so a cohort can resume on other hardware)."""
    from .pipeline import inference_record

    return {
        "model": model_id,
        "label_convention": labels,
        "postprocess": options.postprocess.to_dict() if options.postprocess else None,
        "inference": inference_record([m.card for m in members], options.inference),
    }


def run_batch_command(args: argparse.Namespace) -> int:
    shard = parse_shard(args.shard) if args.shard else Shard()
    require_named_gpu(args.device)
    cases = discover_cases(args.input, exclude=args.out)
    selected = shard.select(list(cases))
    truths = None
    if args.truth is not None:
        if not args.truth.is_dir():
            raise InputError(args.truth, "expected a folder of ground-truth label maps (matched by case id)")
        truths = find_label_files(args.truth)
        if not truths:
            raise InputError(args.truth, "no label maps found (in the folder or its subfolders)")
        if not set(cases) & set(truths):
            raise InputError(args.truth, "no ground truth for any case of the cohort (label maps are matched by case id)")
        without = [case_id for case_id in selected if case_id not in truths]
        if without:
            shown = ", ".join(without[:5]) + (f" and {len(without) - 5} more" if len(without) > 5 else "")
            print(f"brain-tumor-seg: warning: no ground truth in {args.truth} for {shown}", file=sys.stderr)
    cards, members = load_members(args)
    options = run_options(args, cards, members)
    model_id = models_name(cards)
    check_writable(args.out)
    from .pipeline import InferenceOptions, segment_to_folder

    def segment(case_id: str, folder: Path, out: Path, report: bool, progress: Callable[[int, int], None]) -> None:
        case = resolve_inputs(folder)
        control = RunControl(lambda event: progress(event.done, event.total) if event.stage == "predict" else None)
        segment_to_folder(case, members, out, case_id, args.labels, options, control, report, model_id=model_id)

    with terminate_as_exit():
        expect = batch_expectation(model_id, args.labels, options, members)
        wanted = ("probabilities", "uncertainty") if options.probabilities else ()
        # older volumes JSONs do not record the inference settings: taken as the cards' own when this run keeps them
        unrecorded_ok = ("inference",) if options.inference == InferenceOptions() else ()
        bar = ProgressBar(len(selected))
        result = run_batch(
            cases, args.out, segment, truths, shard, args.report, bar, expect=expect, wanted=wanted, unrecorded_ok=unrecorded_ok
        )
    counts = {status: sum(row["status"] == status for row in result.rows) for status in (SEGMENTED, DONE, FAILED)}
    counted = f"{len(cases)} case" + ("s" if len(cases) != 1 else "")
    scope = f"shard {shard} ({len(selected)} of {counted})" if shard.count > 1 else counted
    done = f"{counts[SEGMENTED]} segmented, {counts[DONE]} already done, {counts[FAILED]} failed"
    print(f"Batch with model {model_id}, {scope}: {done}")
    print(f"CSV: {result.csv}")
    scored = [row for row in result.rows if row.get("dice_WT") not in (None, "")]
    if scored:
        print(f"Metrics against the ground truth ({len(scored)} cases):")
        _print_summary(scored)
    if args.report:
        from .report import write_cohort_report  # matplotlib only when asked for

        notes = [f"Model {model_id}; label convention {args.labels}; outputs in {args.out.resolve()}."]
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
    from .models.registry import ARCHITECTURES

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
    wide = max([len("id"), *(len(card.id) for card in cards.values())])  # columns as wide as their longest entry
    kind = max([len("architecture"), *(len(card.architecture) for card in cards.values())])
    print(f"{'id':<{wide}} {'architecture':<{kind}} {'WT':>6} {'TC':>6} {'ET':>6}  name")
    for card in cards.values():
        dice = card.validation.get("dice", {})
        scores = " ".join(f"{dice[k]:6.3f}" if k in dice else "     -" for k in ("WT", "TC", "ET"))
        mark = " (default)" if card.default else ""
        print(f"{card.id:<{wide}} {card.architecture:<{kind}} {scores}  {card.name}{mark}")
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


def main(argv: Sequence[str] | None = None, ends_process: bool = False) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from .train import main as train_main

        return train_main(argv[1:], ends_process)
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
    except (Cancelled, KeyboardInterrupt):
        print("brain-tumor-seg: cancelled; no outputs were written", file=sys.stderr)
        return 130


def console_main() -> None:
    """The ``brain-tumor-seg`` command: :func:`main`, then exit without the interpreter's teardown.

    Every output is written, renamed into place and closed before :func:`main` returns, so the only work left
    at exit is freeing PyTorch's and ITK's modules one by one, about 0.3 s of a 6 s run. Training keeps the
    normal exit (its process group and checkpoints close in their own code, but torchrun watches the exit).
    """
    argv = sys.argv[1:]
    keep_freed_memory()
    try:
        code = main(argv, ends_process=True)
        if argv[:1] == ["train"]:
            raise SystemExit(code)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # stdout closed early (`brain-tumor-seg models | head`): stop quietly, as Unix tools do
        if not stdout_reader_gone():
            raise  # another pipe or socket broke: that is an error, with its traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + 13  # SIGPIPE
    os._exit(code)


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on its write end, Linux, or a
    hang-up, macOS); where poll cannot tell (Windows), a broken pipe is taken to be stdout's."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


if __name__ == "__main__":
    console_main()
