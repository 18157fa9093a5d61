"""Read the CLI's machine-readable progress: one JSON object per stdout line (``--progress json``).

Each line is ``{"stage", "done", "total", "message"}``; the last has stage ``"done"`` and also
``"outputs"`` (labels, segmentation, volumes paths) and ``"volumes_ml"``. This module is the
reading side of :class:`BrainTumorSeg.progress.ProgressEvent`: it turns a line into a
:class:`CliEvent`, maps it onto one overall 0-1 fraction for a progress bar, and lays out the
volumes for a table. Standard library only: the Slicer module imports it before any of the
package's dependencies are installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .progress import STAGES

# Share of the overall progress bar each stage covers (start, end); prediction dominates the run time.
STAGE_SPANS: dict[str, tuple[float, float]] = {
    "load": (0.0, 0.05),
    "predict": (0.05, 0.85),
    "postprocess": (0.85, 0.9),
    "write": (0.9, 1.0),
    "done": (1.0, 1.0),
}

REGION_NAMES: dict[str, str] = {"WT": "Whole tumor (WT)", "TC": "Tumor core (TC)", "ET": "Enhancing tumor region (ET)"}


class ProgressLineError(ValueError):
    """A stdout line that is not a progress event of the CLI contract."""


@dataclass(frozen=True)
class CliEvent:
    """One progress report of the CLI: ``done`` of ``total`` units of ``stage``."""

    stage: str
    done: int
    total: int
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.stage == "done"

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1]: the stage's span, filled by ``done / total``."""
        start, end = STAGE_SPANS[self.stage]
        inside = min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else 0.0
        return start + (end - start) * inside

    @property
    def order(self) -> tuple[int, float]:
        """Sort key of the run's timeline: stage index, then fraction of the stage done."""
        return STAGES.index(self.stage), (self.done / self.total if self.total > 0 else 0.0)


def parse_progress_line(line: str) -> CliEvent:
    """The event of one stdout line; :class:`ProgressLineError` when the line breaks the contract."""
    try:
        raw = json.loads(line)
    except ValueError:
        raise ProgressLineError(f"not JSON: {line.strip()[:200]!r}") from None
    if not isinstance(raw, dict):
        raise ProgressLineError(f"not a JSON object: {line.strip()[:200]!r}")
    stage, done, total = raw.get("stage"), raw.get("done"), raw.get("total")
    if stage not in STAGES:
        raise ProgressLineError(f"unknown stage {stage!r}")
    if not _is_int(done) or not _is_int(total) or total < 0 or done < 0:
        raise ProgressLineError(f"done/total must be non-negative integers, got {done!r}/{total!r}")
    outputs = raw.get("outputs") or {}
    volumes = raw.get("volumes_ml") or {}
    if not isinstance(outputs, dict) or not isinstance(volumes, dict):
        raise ProgressLineError("outputs and volumes_ml must be JSON objects")
    return CliEvent(
        stage=stage,
        done=done,
        total=total,
        message=str(raw.get("message", "")),
        outputs={str(k): str(v) for k, v in outputs.items()},
        volumes_ml={str(k): float(v) for k, v in volumes.items()},
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def volume_rows(volumes_ml: dict[str, float], segment_names: dict[str, str]) -> list[tuple[str, float]]:
    """(label, mL) rows for a results table: the segments (by display name) first, then the BraTS regions.

    ``segment_names`` maps a segment key (as in ``volumes_ml``) to its display name.
    """
    rows = [(name, volumes_ml[key]) for key, name in segment_names.items() if key in volumes_ml]
    rows += [(label, volumes_ml[key]) for key, label in REGION_NAMES.items() if key in volumes_ml]
    return rows
