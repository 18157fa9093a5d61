"""Stopping a training run on Ctrl-C or SIGTERM at a step boundary, so that what it checkpoints is consistent.

A signal that interrupted Python code anywhere could land between the optimizer's update and the step counter, in
the middle of a validation or while a file is written. Instead the first SIGINT or SIGTERM during the training loop
only asks the loop to stop: it finishes the step in hand (and its validation, if one is due), checkpoints it and
ends. Further signals (torchrun forwards the one a cluster sends to the whole job) are ignored meanwhile, and, when
the run ends its process (the command line), until the process exits: a repeat that arrives after the save must not
turn the exit code 143 into a death by SIGTERM. Before the loop (while cases load) a signal stops the run at once, as
usual: there is nothing to save yet.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class GracefulStop:
    """A context manager (signal handlers can only be set in the main thread; elsewhere it does nothing)."""

    def __init__(self, ends_process: bool = False) -> None:
        self.ends_process = ends_process
        self.requested = False
        self.in_loop = False
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if self.requested and self.ends_process else handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            return  # the loop is already finishing its step and saving it
        self.signum = signum
        if not self.in_loop:
            raise KeyboardInterrupt
        self.requested = True

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a command a signal ended (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + (self.signum or signal.SIGINT)
