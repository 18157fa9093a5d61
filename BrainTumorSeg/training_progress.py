"""Training progress on stderr: a one-line bar redrawn in place on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TrainingProgress:
    """``update(step, loss, lr)`` after every step; a bar on a TTY, one line every ``every`` steps elsewhere (logs)."""

    def __init__(self, total: int, start: int, every: int = 20, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.start, self.every = total, start, max(1, every)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.time()

    def seconds_per_step(self, step: int) -> float:
        return (time.time() - self.started) / max(1, step - self.start)

    def update(self, step: int, loss: float, lr: float, phase: str = "") -> None:
        if not self.enabled:
            return
        rate = self.seconds_per_step(step)
        left = format_seconds(rate * (self.total - step))
        label = f"{phase} " if phase else ""
        if self.tty:
            width = 30
            filled = int(width * step / max(1, self.total))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r{label}[{bar}] {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {rate:.2f} s/step, {left} left ")
            self.stream.flush()
        elif step % self.every == 0 or step == self.total:
            self.stream.write(f"{label}step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} ({rate:.2f} s/step, {left} left)\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (validation results); on a TTY it starts below the bar."""
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()
