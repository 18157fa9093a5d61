"""One case from loaded volumes to a label map (and probabilities) on the reference grid.

reorient to canonical RAS -> mask, crop, z-score -> every model of the ensemble in its own
inference mode (with test-time mirroring) -> mean probabilities -> labels -> clean-up -> undo
the crop and the reorientation. Results are indexed exactly like
``sitk.GetArrayFromImage(case.reference)``: same grid as the T1ce input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .case import MODALITIES, Case
from .device import autocast_dtype, precision_name, resolve_device
from .errors import InputError
from .export import check_writable, make_folder, output_name, remove_folders, write_outputs, write_probabilities
from .geometry import Reorientation
from .inference import Progress, predict_slices, predict_window, predict_with_flips
from .models.card import AXES, FLIPS, MODES, ModelCard
from .models.ensemble import member_cards
from .models.registry import ARCHITECTURES
from .network_grid import canonical_spacing, canonical_to_case, needs_resampling, network_spacing, resample_case
from .postprocess import PostprocessOptions, postprocess, probabilities_to_labels
from .preprocess import Prepared, prepare_case
from .probabilities import as_classes, average
from .progress import RunControl

log = logging.getLogger("brain_tumor_seg")

# Pixels around each batch's brain that slice-wise modes run on (a card's ``inference.box_margin``; null: the whole brain
# crop; a network class's ``default_box_margin`` when the card says nothing): on a 2-core AVX2 CPU 14-20% less time for
# the default model, validation Dice of the U-Nets within 0.0006 (README, Inference options).
BOX_MARGIN = 16


def network_trait(card: ModelCard, name: str, default: Any) -> Any:
    """A class attribute of ``card``'s network that says how inference treats it (``default_box_margin``: the brain box
    margin when the card names none; ``brain_box_exact``: the box cannot change its result inside the brain)."""
    return getattr(ARCHITECTURES.get(card.architecture), name, default)


@dataclass(frozen=True)
class InferenceOptions:
    """Overrides of a model card's ``inference`` block; ``None`` keeps the card's value.

    ``mode``: ``slices`` (2D, slices along ``axis``, batched on their brain's box), ``dense`` (the same for Havaei's patch
    classifiers: every pixel's patch in one pass), ``window`` (sliding ``window`` of 2 values for a
    2D network on each slice, 3 for a 3D network, ``overlap`` between windows, gaussian blending).
    ``flips``: test-time mirroring, ``none``, ``x`` or ``xy``. ``batch_size``: slices (or windows) per forward; with
    the card's brain box (``inference.box_margin``, see :func:`inference.predict_slices`) it is also how many slices
    share one box, so it can move a U-Net's probabilities slightly.
    """

    mode: str | None = None
    axis: str | None = None
    window: tuple[int, ...] | None = None
    overlap: float | None = None
    flips: str | None = None
    batch_size: int | None = None


def inference_settings(card: ModelCard, options: InferenceOptions | None = None) -> dict:
    """The card's inference block with ``options`` applied, checked; InputError naming the problem."""
    overrides = {k: v for k, v in asdict(options or InferenceOptions()).items() if v is not None}
    margin = network_trait(card, "default_box_margin", BOX_MARGIN)
    defaults = {"axis": "axial", "overlap": 0.5, "flips": "none", "box_margin": margin}
    settings = {**defaults, **card.inference, **overrides}
    dims = int(card.inference.get("spatial_dims", 2))
    mode = settings.get("mode")
    if mode not in MODES:
        raise InputError(card.path or card.id, f"inference mode {mode!r} is not supported; choose {', '.join(MODES)}")
    if mode != "window" and dims == 3:
        raise InputError("--mode", f"model {card.id} is a 3D network and runs in window mode only")
    if settings["axis"] not in AXES:
        raise InputError("--axis", f"unknown slice axis {settings['axis']!r}; choose {', '.join(AXES)}")
    if settings["flips"] not in FLIPS:
        raise InputError("--tta", f"unknown mirroring {settings['flips']!r}; choose {', '.join(FLIPS)}")
    if not 0 <= float(settings["overlap"]) < 1:
        raise InputError("--overlap", "overlap must be at least 0 and below 1")
    margin = settings["box_margin"]
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int) or margin < 0):
        message = f"inference.box_margin must be a number of pixels (0 or more) or null, not {margin!r}"
        raise InputError(card.path or card.id, message)
    if mode == "window":
        window = settings.get("window") or (128,) * dims
        if len(window) != dims or min(window) < 1:
            raise InputError("--window", f"model {card.id} is a {dims}D network; the window needs {dims} positive sizes")
        settings["window"] = tuple(int(w) for w in window)
    return settings


RECORDED_INFERENCE: tuple[str, ...] = ("mode", "axis", "window", "overlap", "flips", "box_margin")


def settings_record(card: ModelCard, settings: dict) -> dict:
    """How one network ran (the :func:`inference_settings` that decide its labels besides its weights), in JSON types."""
    values = {key: settings.get(key) for key in RECORDED_INFERENCE}
    windowed = settings["mode"] == "window"  # window and overlap mean nothing to the other modes
    values["window"] = list(values["window"]) if windowed else None
    values["overlap"] = float(values["overlap"]) if windowed else None
    # Recorded where it can change the labels (slice-wise modes, networks not exact on the box): an earlier volumes JSON
    # without it (whole brain crops) then matches every network that the box leaves as it was.
    values["box_margin"] = values["box_margin"] if not windowed and not network_trait(card, "brain_box_exact", False) else None
    return {"model": card.id, **values}


def inference_record(cards: Sequence[ModelCard], options: InferenceOptions | None = None) -> list[dict]:
    """How each network runs with ``options``, as the volumes JSON records it; ``batch`` compares a finished case's
    record with this run's."""
    return [settings_record(card, inference_settings(card, options)) for card in cards]


def predict_with_card(
    card: ModelCard,
    network: nn.Module,
    volume: np.ndarray,
    device: torch.device,
    dtype: torch.dtype | None,
    progress: Progress | None = None,
    options: InferenceOptions | None = None,
) -> np.ndarray:
    """Probabilities of a prepared canonical volume, run in the card's inference mode (no mirroring)."""
    settings = inference_settings(card, options)
    common = {
        "axis": settings["axis"],
        "context": card.context_slices,
        "output_type": card.outputs["type"],
        "device": device,
        "dtype": dtype,
        "progress": progress,
    }
    if settings["mode"] == "window":
        batch_size = int(settings.get("batch_size", 4 if len(settings["window"]) == 2 else 1))
        return predict_window(network, volume, settings["window"], float(settings["overlap"]), batch_size=batch_size, **common)
    batch_size = int(settings.get("batch_size", 16))
    return predict_slices(network, volume, batch_size=batch_size, box_margin=settings["box_margin"], **common)


def is_out_of_memory(error: BaseException) -> bool:
    """True for a GPU out-of-memory error (CUDA's own type, or MPS's RuntimeError)."""
    return isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


def with_cpu_fallback(run: Callable[[torch.device], np.ndarray], device: torch.device) -> tuple[np.ndarray, torch.device]:
    """``run(device)`` and the device it ran on; when a GPU runs out of memory, a warning and ``run(cpu)`` instead."""
    try:
        return run(device), device
    except Exception as error:
        if device.type == "cpu" or not is_out_of_memory(error):
            raise
    log.warning("brain-tumor-seg: the %s device ran out of memory; continuing on the CPU (slower)", device.type)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    cpu = torch.device("cpu")
    return run(cpu), cpu


@dataclass
class Member:
    """One model of an ensemble: its card and its loaded network."""

    card: ModelCard
    network: nn.Module


@dataclass(frozen=True)
class RunOptions:
    """How to run: device, precision, inference overrides, clean-up (``None``: the first card's), probabilities."""

    device: str = "auto"
    precision: str = "auto"
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    postprocess: PostprocessOptions | None = None
    probabilities: bool = False


@dataclass
class Segmentation:
    """Internal labels on the reference grid; with ``RunOptions.probabilities`` also class probabilities ``(4, k, j, i)``."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    models: list[str]
    postprocess: PostprocessOptions
    inference: list[dict] = field(default_factory=list)  # inference_record of the members
    device: str = "cpu"  # where the last network ran (the CPU after a GPU ran out of memory)
    precision: str = "fp32"  # the autocast precision there (device.precision_name)
    network_spacing: list[float] = field(default_factory=list)  # mm (canonical x, y, z) of the grid the networks saw


def postprocess_options(cards: Sequence[ModelCard], options: PostprocessOptions | None) -> PostprocessOptions:
    """Clean-up to apply: the given options, else the first card's ``postprocess`` block (its measured defaults)."""
    if options is not None:
        return options
    try:
        return PostprocessOptions.from_dict(cards[0].postprocess)
    except (TypeError, ValueError) as error:
        raise InputError(cards[0].path or cards[0].id, f"invalid postprocess block ({error})") from None


def predict_member(
    member: Member, settings: dict, volume: np.ndarray, device: torch.device, precision: str, progress: Callable[[int], Progress]
) -> tuple[np.ndarray, torch.device]:
    """One model's probabilities, averaged over its mirrorings, and the device they were computed on (the CPU after a
    GPU ran out of memory); ``progress(i)`` is the callback of its ``i``-th pass."""
    overrides = InferenceOptions(**{k: settings.get(k) for k in ("mode", "axis", "window", "overlap", "batch_size")})

    def run(device: torch.device) -> np.ndarray:
        dtype = autocast_dtype(device, precision)
        passes = iter(range(1 + len(FLIPS[settings["flips"]])))  # restarts when the CPU fallback runs again

        def predict(mirrored: np.ndarray) -> np.ndarray:
            return predict_with_card(member.card, member.network, mirrored, device, dtype, progress(next(passes)), overrides)

        return predict_with_flips(predict, volume, settings["flips"])

    return with_cpu_fallback(run, device)


def _offset_progress(for_pass: Callable[[int], Progress], offset: int, index: int) -> Progress:
    return for_pass(offset + index)


def segment(
    case: Case,
    members: Sequence[Member],
    options: RunOptions | None = None,
    control: RunControl | None = None,
    prepared: Prepared | None = None,
) -> Segmentation:
    """Segment ``case`` with one model or the mean of several; reports progress and honours cancel through ``control``.
    ``prepared`` is :func:`preprocess.prepare_case` of this case when it was made ahead (made here otherwise)."""
    options = options or RunOptions()
    control = control or RunControl()
    cards = [m.card for m in members]
    settings = [inference_settings(card, options.inference) for card in cards]  # checks every member before any work
    clean_up = postprocess_options(cards, options.postprocess)
    torch_device = resolve_device(options.device)
    orientation = Reorientation.of(case.reference)
    spacing = network_spacing(cards)

    names = [
        f"model {card.id}" + (f", mirror {f} of {len(FLIPS[s['flips']])}" if f else "")
        for card, s in zip(cards, settings, strict=True)
        for f in range(1 + len(FLIPS[s["flips"]]))
    ]
    for_pass = control.steps("predict", len(names), lambda i: names[i])
    canonical_shape = tuple(case.data.shape[1 + a] for a in orientation.source_axis)
    if prepared is not None and (prepared.source is not case.data or prepared.crop.full_shape != canonical_shape):
        raise ValueError("the prepared input was not made from this case's volumes (preprocess.prepare_case)")
    resampling = needs_resampling(case.reference, spacing)  # the networks run at their training spacing (network_grid)
    at = f" at {' x '.join(f'{v:.3g}' for v in spacing)} mm" if resampling else ""  # type: ignore[union-attr]
    control.report("predict", 0, len(names) * 1000, f"running {len(members)} model(s) on {torch_device.type}{at}")
    prepared = prepared if prepared is not None else prepare_case(case)  # channels in MODALITIES order; one brain mask and crop
    network_case, network_input = case, prepared
    if resampling:
        log.info(
            "the case's voxels (%s mm) are resampled to the models' training spacing (%s mm) and their probabilities back",
            " x ".join(f"{v:.3g}" for v in canonical_spacing(case.reference)),
            " x ".join(f"{v:.3g}" for v in spacing),  # type: ignore[union-attr]
        )
        network_case = resample_case(case, spacing, control.check)  # type: ignore[arg-type]
        network_input = prepare_case(network_case)
    outputs, first_pass = [], 0
    for member, setting in zip(members, settings, strict=True):
        order = [MODALITIES.index(m) for m in member.card.modalities]
        data = network_input.data
        channels = data if order == list(range(len(MODALITIES))) else data[order]  # no copy when in order
        probabilities, torch_device = predict_member(  # after a GPU ran out of memory the other members stay on the CPU
            member, setting, channels, torch_device, options.precision, partial(_offset_progress, for_pass, first_pass)
        )
        outputs.append((probabilities, member.card.outputs))
        first_pass += 1 + len(FLIPS[setting["flips"]])

    control.report("postprocess", 0, 1, "labels and clean-up")
    mean, decision = average(outputs)
    mask, crop = prepared.mask, prepared.crop
    if network_case is not case:  # the mean probabilities back on the case's grid, cropped as the case's own input
        mean = canonical_to_case(mean, network_case, network_input.crop, case, crop, control.check)
    labels = probabilities_to_labels(mean, decision, mask)
    if clean_up.active:
        labels = postprocess(labels, clean_up, case.voxel_volume_ml, mask)
    labels = orientation.from_canonical(crop.paste(labels))
    classes = None
    if options.probabilities:
        cropped = as_classes(mean, decision)  # the models' mean before clean-up; certain background outside the brain
        del mean
        cropped[:, ~mask] = 0
        cropped[0, ~mask] = 1
        classes = np.zeros((len(cropped), *case.data.shape[1:]), np.float32)  # on the case's grid, filled in place
        classes[0] = 1
        orientation.canonical_view(classes)[(slice(None), *crop.slices)] = cropped
    control.report("postprocess", 1, 1, "labels and clean-up")
    precision = precision_name(autocast_dtype(torch_device, options.precision))
    record = [settings_record(card, setting) for card, setting in zip(cards, settings, strict=True)]
    seen = canonical_spacing(network_case.reference).round(4).tolist()
    return Segmentation(labels, classes, [c.id for c in cards], clean_up, record, torch_device.type, precision, seen)


def segment_case(
    case: Case,
    card: ModelCard,
    network: nn.Module | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: Progress | None = None,
    flips: str | None = None,
) -> np.ndarray:
    """Internal labels (0 background, 1 NCR/NET, 2 ED, 3 ET) of one model on the case's reference grid, cleaned up as
    its card says.

    ``card`` may be an ensemble card (its members are loaded; ``network`` is then not given). ``flips`` (test-time
    mirroring, see :func:`inference.predict_with_flips`) defaults to the card's ``inference.flips``.
    ``progress(done, total)`` follows the network passes.
    """
    control = RunControl(lambda event: progress(event.done, event.total) if progress and event.stage == "predict" else None)
    options = RunOptions(device, precision, InferenceOptions(flips=flips), postprocess_options([card], None))
    if network is not None:
        members = [Member(card, network)]
    else:
        members = [Member(member, member.load()) for member in member_cards(card)]
    return segment(case, members, options, control).labels


def run_details(result: Segmentation) -> dict:
    """What the volumes JSON records of how a case was segmented, beside the model id and the inputs."""
    return {
        "models": result.models,
        "postprocess": result.postprocess.to_dict(),
        "inference": result.inference,
        "device": result.device,
        "precision": result.precision,
        "network_spacing_mm": result.network_spacing,
        "version": __version__,
    }


def segment_to_folder(
    case: Case,
    members: Sequence[Member],
    out: Path,
    case_id: str,
    convention: str = "brats2017",
    options: RunOptions | None = None,
    control: RunControl | None = None,
    report: bool = False,
    model_id: str | None = None,
    prepared: Prepared | None = None,
) -> tuple[Segmentation, dict[str, Path]]:
    """Segment a case and write its outputs (:func:`export.write_outputs`) into ``out``; returns the result and paths.

    Nothing is created before the outputs are complete: ``out`` is only checked at the start, so a
    failed, cancelled or killed run leaves nothing behind. With ``report`` a PNG of the result
    (:func:`report.write_case_report`) is written with the other outputs; with
    ``options.probabilities`` the class probabilities and an uncertainty map. ``model_id`` is recorded
    with the outputs (default: the networks' ids joined by ``+``; an ensemble card passes its own). ``prepared``:
    as for :func:`segment`.
    """
    control = control or RunControl()
    check_writable(out, keep=False)
    result = segment(case, members, options, control, prepared)
    control.report("write", 0, 1, f"writing outputs to {out}")
    extras: dict[str, tuple[str, Callable[[Path], None]]] = {}
    model_id = model_id or "+".join(result.models)
    if report:
        from .report import write_case_report  # matplotlib only when asked for

        def write_report(path: Path) -> None:
            write_case_report(path, case, result.labels, case_id, model_id)

        extras["report"] = (output_name(case_id, "report"), write_report)
    if result.probabilities is not None:
        probabilities = result.probabilities
        extras["probabilities"] = (
            output_name(case_id, "probabilities"),
            lambda path: write_probabilities(path, probabilities, case.reference),
        )
        extras["uncertainty"] = (
            output_name(case_id, "uncertainty"),
            lambda path: write_probabilities(path, probabilities, case.reference, uncertainty=True),
        )
    created = make_folder(out)
    try:
        paths = write_outputs(
            out, case_id, result.labels, case.reference, model_id, case.sources, convention, extras,
            details=run_details(result) | {
                "resampled": {m: round(f, 3) for m, f in case.coverage.items()},
                "warnings": case.warnings,
            },
            before_commit=control.check,
        )  # fmt: skip
    except BaseException:
        remove_folders(created)
        raise
    control.notify("write", 1, 1, f"wrote outputs to {out}")  # the outputs are in place: too late to cancel
    return result, paths
