"""``brain-tumor-seg``: segment a case, list models, train.

Bad input ends with one line on stderr naming the file and the problem, exit code
2, and no output files.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .case import MODALITIES, NAME_SUFFIXES, image_extension, read_image, resolve_inputs
from .errors import InputError
from .export import check_writable, write_outputs
from .labels import CONVENTIONS, from_convention
from .metrics import region_dice
from .models.registry import available_models, get_model
from .pipeline import segment_case
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
    p.add_argument("--model", help="model id (default: the default model; see `brain-tumor-seg models`)")
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR", help="extra folder of model cards + weights")
    p.add_argument("--labels", choices=sorted(CONVENTIONS), default="brats2017", help="label values of the NIfTI output")
    p.add_argument("--truth", metavar="FILE", help="ground-truth label map (BraTS 2017-2021 labels) to report Dice against")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16 on CPUs with native bf16, else fp32",
    )


def _truth_labels(path: str | Path, reference: sitk.Image) -> np.ndarray:
    image = read_image(path)
    if image.GetSize() != reference.GetSize():
        raise InputError(path, "ground truth is not on the T1ce grid")
    try:
        return from_convention(sitk.GetArrayFromImage(image).astype(np.int16), "brats2017")
    except ValueError as error:
        raise InputError(path, str(error)) from None


def run_segment(args: argparse.Namespace) -> int:
    files = {m: getattr(args, m) for m in MODALITIES}
    input_path, truth, out = args.input, args.truth, args.out
    if args.sample:
        if input_path or any(files.values()):
            raise InputError("--sample", "the sample case cannot be combined with other inputs")
        folder = sample_case_dir()
        input_path = str(folder)
        truth = truth or next((str(p) for p in sorted(folder.iterdir()) if "_seg." in p.name), None)
        out = out or Path("brain-tumor-seg-output")
    if out is None:
        raise InputError("--out", "an output folder is required")
    card = get_model(args.model, args.models_dir)
    started = time.perf_counter()
    case = resolve_inputs(input_path, **files)
    truth_labels = _truth_labels(truth, case.reference) if truth else None
    network = card.load()
    created = check_writable(out)
    try:
        labels = segment_case(case, card, network, device=args.device, precision=args.precision)
        case_id = case_id_of(input_path, files["t1ce"])
        paths = write_outputs(out, case_id, labels, case.reference, card.id, case.sources, args.labels)
    except BaseException:
        if created:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    seconds = time.perf_counter() - started
    info = json.loads(paths["volumes"].read_text())
    print(f"Segmented {case_id} with model {card.id} in {seconds:.1f} s")
    for kind, path in paths.items():
        print(f"  {kind:<13} {path}")
    print("Volumes (mL):")
    for key, value in info["volumes_ml"].items():
        print(f"  {key:<13} {value:9.2f}")
    if truth_labels is not None:
        scores = region_dice(labels, truth_labels)
        print("Dice against " + str(truth) + ": " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


def run_models(args: argparse.Namespace) -> int:
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
    models = sub.add_parser("models", help="list the available models")
    models.add_argument("--models-dir", action="append", default=[], metavar="DIR")
    models.add_argument("--json", action="store_true", help="print the full model cards")
    sub.add_parser("train", help="train a model (see `brain-tumor-seg train --help`)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from .train import main as train_main

        return train_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
    # ITK prints its own warnings to stderr; problems reach the user as one InputError line instead.
    sitk.ProcessObject.SetGlobalWarningDisplay(args.verbose)
    try:
        return run_segment(args) if args.command == "segment" else run_models(args)
    except InputError as error:
        print(f"brain-tumor-seg: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
