"""Progress reports and cancellation for a segmentation run.

The engine calls :meth:`RunControl.report` at every step it can be stopped at (each batch of
slices or windows, each stage). A report goes to the callback as a :class:`ProgressEvent`;
when :meth:`RunControl.cancel` has been called (from any thread), the next report raises
:class:`Cancelled` instead, so the run stops within one batch and its staged outputs are discarded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

STAGES = ("load", "predict", "postprocess", "write", "done")


class Cancelled(Exception):
    """The run was cancelled through :meth:`RunControl.cancel`."""


@dataclass(frozen=True)
class ProgressEvent:
    """One report: ``done`` of ``total`` units of ``stage``, with a human-readable message and optional extras."""

    stage: str
    done: int
    total: int
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        fields = asdict(self)
        extra = fields.pop("extra")
        return json.dumps(fields | extra, separators=(",", ":"))


Callback = Callable[[ProgressEvent], None]


class RunControl:
    """Forwards progress to a callback and carries a thread-safe cancel request."""

    def __init__(self, callback: Callback | None = None) -> None:
        self.callback = callback
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` when cancellation was requested."""
        if self._cancel.is_set():
            raise Cancelled("cancelled")

    def report(self, stage: str, done: int, total: int, message: str = "", **extra: Any) -> None:
        """Report progress (raises :class:`Cancelled` first when cancellation was requested)."""
        self.check()
        self.notify(stage, done, total, message, **extra)

    def notify(self, stage: str, done: int, total: int, message: str = "", **extra: Any) -> None:
        """Report progress without honouring a cancel request: for what is already done and cannot be undone
        (the outputs are in place)."""
        if self.callback is not None:
            self.callback(ProgressEvent(stage, done, total, message, extra))

    def steps(self, stage: str, runs: int, label: Callable[[int], str]) -> Callable[[int], Callable[[int, int], None]]:
        """Progress of ``runs`` equal-weight passes (models x mirrorings) as one monotonic counter.

        Returns ``for_run(i)``, which gives the ``(done, total)`` callback of pass ``i``; pass ``i``
        at ``done/total`` reports ``i * 1000 + 1000 * done // total`` of ``runs * 1000``. A pass run again
        (the CPU fallback after a GPU ran out of memory) never moves the counter back: it reports the
        furthest point reached until it passes it.
        """
        scale = 1000
        reached = 0

        def for_run(index: int) -> Callable[[int, int], None]:
            def progress(done: int, total: int) -> None:
                nonlocal reached
                reached = max(reached, index * scale + scale * done // max(total, 1))
                self.report(stage, reached, runs * scale, f"{label(index)}: {done}/{total}")

            return progress

        return for_run


def json_lines(stream: TextIO) -> Callback:
    """A callback printing each event as one JSON object per line on ``stream``, flushed at once."""

    def write(event: ProgressEvent) -> None:
        stream.write(event.to_json() + "\n")
        stream.flush()

    return write
