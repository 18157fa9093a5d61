"""Segmenting a cohort: discovery, sharding, resume, per-case isolation, the cohort CSV.

A cohort folder holds one subfolder per case (any input ``segment --input`` takes: BraTS-named
files, or one 4D image); the subfolder's name is the case id. Hidden folders and the output
folder itself are skipped. Outputs of a case go to ``OUT/<case id>/`` (the files ``segment``
writes), so every case's staging, outputs and metrics cache stay together and ``evaluate``
finds the label maps by case id.

- Isolation: a case that fails is reported (stderr, and the CSV's ``error`` column) and the
  others go on; the run exits 1 when any case failed.
- Resume: a case is finished when its volumes JSON exists; it is written last and atomically
  (:func:`export.write_outputs`), so a run killed at any moment leaves each case either
  finished or without visible outputs, and a new run skips finished cases. Hidden staging
  folders and temporary files a killed run left behind are removed when the case is met again.
- Sharding: ``--shard i/n`` takes the cases whose position in the sorted list of case ids is
  ``i - 1`` modulo ``n``; every machine must see the same cohort.
- CSV: one row per case of the shard processed so far, rewritten atomically after every case.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .atomic import TEMP_SUFFIX, write_atomic, write_csv
from .errors import InputError
from .evaluation import check_same_grid, metric_columns, metric_row, read_labels, volume_columns
from .export import STAGING_PREFIX, output_name
from .labels import REGIONS, SEGMENTS

CASE_COLUMNS: list[str] = ["case_id", "status", "seconds", "error", "warnings"]
VOLUME_COLUMNS: list[str] = [f"{key}_ml" for key in (*(s.key for s in SEGMENTS), *REGIONS)]
SEGMENTED, DONE, FAILED = "segmented", "done", "failed"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int = 1
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        """File-name suffix of this shard's CSV and report; empty for the whole cohort."""
        return "" if self.count == 1 else f"-shard-{self.index}-of-{self.count}"

    @property
    def csv_name(self) -> str:
        return f"cohort{self.suffix}.csv"

    @property
    def report_name(self) -> str:
        return f"report{self.suffix}.html"

    def select(self, case_ids: Sequence[str]) -> list[str]:
        """This shard's case ids: every ``count``-th of the sorted ids, starting at position ``index - 1``."""
        return [case_id for position, case_id in enumerate(sorted(case_ids)) if position % self.count == self.index - 1]


def parse_shard(text: str) -> Shard:
    """``"i/n"`` with 1 <= i <= n -> Shard; InputError naming ``--shard`` otherwise."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise InputError("--shard", f"expected i/n such as 1/4, got {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise InputError("--shard", f"expected i/n with 1 <= i <= n, got {text!r}")
    return Shard(index, count)


def discover_cases(cohort: Path, exclude: Path | None = None) -> dict[str, Path]:
    """Case folders of a cohort by case id (folder name), sorted; InputError when there are none."""
    if not cohort.is_dir():
        raise InputError(cohort, "cohort folder not found" if not cohort.exists() else "not a folder")
    skip = exclude.resolve() if exclude is not None and exclude.exists() else None
    cases = {
        p.name: p
        for p in sorted(cohort.iterdir())
        if p.is_dir() and not p.name.startswith(".") and (skip is None or p.resolve() != skip)
    }
    if not cases:
        raise InputError(cohort, "no case folders found (a cohort folder holds one subfolder per case)")
    return cases


def volumes_json(out: Path, case_id: str) -> Path:
    """The file whose presence marks a case as finished."""
    return out / case_id / output_name(case_id, "volumes")


def labels_file(out: Path, case_id: str) -> Path:
    """A finished case's label map, found where batch writes it (not by the path in its volumes JSON, so a moved
    output folder still works)."""
    return out / case_id / output_name(case_id, "labels")


def metrics_json(out: Path, case_id: str) -> Path:
    """Cache of a case's metrics against its ground truth."""
    return out / case_id / f"{case_id}_metrics.json"


def report_png(out: Path, case_id: str) -> Path:
    return out / case_id / output_name(case_id, "report")


def finished_by(out: Path, case_id: str) -> dict[str, Any] | None:
    """The volumes JSON of a finished case (model, label convention, volumes), or None when it is not finished."""
    try:
        return json.loads(volumes_json(out, case_id).read_text())
    except FileNotFoundError:
        return None


def remove_leftovers(folder: Path, names: Sequence[str] | None = None) -> None:
    """Remove hidden staging folders and temporary files a killed run left in ``folder``.

    With ``names``, only the temporary files of those file names (other shards may be writing theirs).
    """
    if not folder.is_dir():
        return
    for item in folder.iterdir():
        if names is None and item.name.startswith(STAGING_PREFIX) and item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        elif item.name.startswith(".") and item.name.endswith(TEMP_SUFFIX) and item.is_file():
            if names is None or any(item.name.startswith(f".{name}.") for name in names):
                item.unlink(missing_ok=True)


SETTING_NAMES = {
    "model": "another model",
    "label_convention": "other label values",
    "postprocess": "another clean-up",
    "inference": "other inference settings",
}


# Inference settings that volumes JSONs record since a later version, with the value the versions before ran with.
LATER_INFERENCE_SETTINGS: dict[str, Any] = {"box_margin": None}  # None: whole brain crops


def recorded_value(earlier: Mapping[str, Any], key: str) -> Any:
    """``earlier[key]``; for ``inference``, each network's record completed with what older versions did not record."""
    value = earlier.get(key)
    if key == "inference" and isinstance(value, list):
        return [{**LATER_INFERENCE_SETTINGS, **entry} if isinstance(entry, dict) else entry for entry in value]
    return value


def reasons_to_redo(
    earlier: Mapping[str, Any], expect: Mapping[str, Any], wanted: Sequence[str], unrecorded_ok: Sequence[str] = ()
) -> str:
    """Why a finished case (its volumes JSON ``earlier``) must be segmented again, or "" when it need not be.

    A key of ``unrecorded_ok`` that ``earlier`` lacks (a JSON from a version that did not record it) is taken to match:
    e.g. the inference settings when this run keeps every card's own."""
    reasons = []
    for key, value in expect.items():
        if key in unrecorded_ok and key not in earlier:
            continue
        before = recorded_value(earlier, key)
        if before != value:
            what = SETTING_NAMES.get(key, f"another {key}")
            reasons.append(what + (f" ({before})" if isinstance(before, str) else " (not recorded)" if before is None else ""))
    missing = [kind for kind in wanted if kind not in earlier.get("outputs", {})]
    if missing:
        reasons.append(f"no {' or '.join(missing)}")
    return ", ".join(reasons)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def case_metrics(out: Path, case_id: str, truth: Path) -> dict[str, Any]:
    """Metric columns of a finished case against ``truth``, from the cache or computed from its label map (and cached)."""
    cache = metrics_json(out, case_id)
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("truth") == str(truth):
                return dict(cached["metrics"])
        except (OSError, ValueError, KeyError):
            pass  # recompute
    info = json.loads(volumes_json(out, case_id).read_text())
    labels_path = labels_file(out, case_id)
    prediction, pred_image, _ = read_labels(labels_path, info.get("label_convention", "brats2017"))
    reference, truth_image, _ = read_labels(truth)
    check_same_grid(pred_image, labels_path, truth_image, truth)
    metrics = metric_row(prediction, reference, truth_image)
    row = {k: v for k, v in metrics.items() if not k.startswith("pred_")}
    write_atomic(cache, json.dumps({"truth": str(truth), "metrics": row}, indent=2) + "\n")
    return row


class ProgressBar:
    """Cohort progress on a stream: a redrawn bar on a terminal, one line per finished case otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 28) -> None:
        self.total, self.width = total, width
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.started = time.monotonic()
        self.case_seconds: list[float] = []

    def _eta(self, fraction_of_current: float) -> str:
        if not self.case_seconds:
            return "--:--"
        remaining = (self.total - self.done - fraction_of_current) * (sum(self.case_seconds) / len(self.case_seconds))
        minutes, seconds = divmod(int(max(remaining, 0)), 60)
        return f"{minutes:d}:{seconds:02d}"

    def update(self, case_id: str, step: int = 0, steps: int = 0) -> None:
        """Show progress inside the current case (``step`` of ``steps``); drawn only on a terminal."""
        if not self.live:
            return
        fraction = step / steps if steps else 0.0
        filled = int(self.width * (self.done + fraction) / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        line = f"\r[{bar}] {self.done}/{self.total} {case_id[:32]:<32} ETA {self._eta(fraction)}"
        self.stream.write(line)
        self.stream.flush()

    def clear(self) -> None:
        """Erase the bar's line (on a terminal) so that another message starts on a clean line."""
        if self.live:
            self.stream.write("\r" + " " * (self.width + 80) + "\r")
            self.stream.flush()

    def finish_case(self, case_id: str, status: str, seconds: float) -> None:
        self.done += 1
        if status == SEGMENTED:
            self.case_seconds.append(seconds)
        text = f"[{self.done}/{self.total}] {case_id} {status}" + (f" in {seconds:.1f} s" if status == SEGMENTED else "")
        if self.live:
            self.stream.write("\r" + text.ljust(self.width + 80) + "\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# segment(case_id, case folder, output folder, report, progress(step, steps)) writes the case's outputs.
SegmentFunction = Callable[[str, Path, Path, bool, Callable[[int, int], None]], None]


@dataclass
class BatchResult:
    """The rows of a run (one per case of the shard) and where the CSV is."""

    rows: list[dict[str, Any]]
    csv: Path

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["status"] == FAILED]


def csv_columns(with_truth: bool) -> list[str]:
    columns = CASE_COLUMNS + VOLUME_COLUMNS
    if with_truth:
        columns += ["truth", *metric_columns(), *volume_columns("truth")]
    return columns


def run_batch(
    cases: Mapping[str, Path],
    out: Path,
    segment: SegmentFunction,
    truths: Mapping[str, Path] | None = None,
    shard: Shard = Shard(),
    report: bool = False,
    progress: ProgressBar | None = None,
    log: TextIO | None = None,
    expect: Mapping[str, Any] | None = None,
    wanted: Sequence[str] = (),
    unrecorded_ok: Sequence[str] = (),
) -> BatchResult:
    """Segment this shard's cases into ``out/<case id>/``, skipping finished ones; write the CSV after every case.

    ``truths`` (case id -> ground-truth label map) adds metric columns; a case without ground
    truth gets empty metrics and a note in ``error``. ``expect`` (e.g. ``{"model": id,
    "label_convention": "brats2017"}``): a finished case whose volumes JSON says otherwise was
    made with other settings and is segmented again; so is one without an output kind of ``wanted``
    (e.g. ``probabilities``, asked for now but not then). ``unrecorded_ok``: see :func:`reasons_to_redo`.
    """
    log = log if log is not None else sys.stderr
    selected = shard.select(list(cases))
    csv_path = out / shard.csv_name
    columns = csv_columns(truths is not None)
    bar = progress or ProgressBar(len(selected))
    remove_leftovers(out, names=(shard.csv_name, shard.report_name))
    rows: list[dict[str, Any]] = []
    for case_id in selected:
        folder = out / case_id
        remove_leftovers(folder)
        row: dict[str, Any] = {"case_id": case_id, "status": DONE, "seconds": None, "error": None}
        started = time.monotonic()
        try:
            earlier = finished_by(out, case_id)
            stale = earlier is not None and reasons_to_redo(earlier, expect or {}, wanted, unrecorded_ok)
            if stale:
                bar.clear()
                log.write(f"brain-tumor-seg: {case_id}: segmented earlier with {stale}; segmenting again\n")
            if earlier is None or stale:
                metrics_json(out, case_id).unlink(missing_ok=True)  # it belonged to an older segmentation
                bar.update(case_id)
                segment(case_id, cases[case_id], folder, report, lambda step, steps, c=case_id: bar.update(c, step, steps))
                row["status"] = SEGMENTED
            elif report and not report_png(out, case_id).is_file():
                _report_finished_case(out, case_id, cases[case_id])
            info = json.loads(volumes_json(out, case_id).read_text())
            row.update({f"{key}_ml": value for key, value in info["volumes_ml"].items()})
            row["warnings"] = "; ".join(info.get("warnings", [])) or None  # about the inputs (not skull-stripped, ...)
            row["report"] = str(report_png(out, case_id))
        except Exception as error:  # isolation: one case's failure never stops the cohort
            row.update(status=FAILED, error=_first_line(error))
            bar.clear()
            log.write(f"brain-tumor-seg: {case_id}: {row['error']}\n")
        if truths is not None and row["status"] != FAILED:
            truth = truths.get(case_id)
            if truth is None:
                row["error"] = "no ground truth for this case"
            else:
                row["truth"] = str(truth)
                try:
                    row.update(case_metrics(out, case_id, truth))
                except Exception as error:
                    row["error"] = f"metrics: {_first_line(error)}"
                    bar.clear()
                    log.write(f"brain-tumor-seg: {case_id}: {row['error']}\n")
        if row["status"] == SEGMENTED:
            row["seconds"] = round(time.monotonic() - started, 2)  # segmentation, report and metrics of the case
        rows.append(row)
        bar.finish_case(case_id, row["status"], time.monotonic() - started)
        write_csv(csv_path, rows, columns)
    if not selected:
        write_csv(csv_path, rows, columns)
    return BatchResult(rows, csv_path)


def _report_finished_case(out: Path, case_id: str, case_folder: Path) -> None:
    """The report PNG of a case finished by an earlier run without ``--report``."""
    from .case import resolve_inputs
    from .report import write_case_report

    info = json.loads(volumes_json(out, case_id).read_text())
    labels, _, _ = read_labels(labels_file(out, case_id), info.get("label_convention", "brats2017"))
    write_case_report(report_png(out, case_id), resolve_inputs(case_folder), labels, case_id, info.get("model", ""))


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """While active, SIGTERM raises SystemExit(143) so cleanup (staging folders) runs as on Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
