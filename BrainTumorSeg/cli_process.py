"""Run ``brain-tumor-seg`` in a child process, read its progress without blocking, cancel it.

A GUI (the Slicer module) starts a :class:`CliProcess`, polls it from a timer and stays
responsive: two reader threads move stdout events and stderr lines into queues, and
:meth:`CliProcess.poll` only drains them. :meth:`CliProcess.cancel` kills the whole process
tree (the CLI and anything it started): on POSIX the child leads its own session and the
group gets SIGKILL; on Windows it starts in a new process group and ``taskkill /T /F`` ends
the tree. Standard library only.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .cli_events import CliEvent, ProgressLineError, parse_progress_line

ERROR_PREFIX = "brain-tumor-seg: error: "
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def cli_command(python: str | None = None) -> list[str]:
    """The command that runs the CLI with ``python`` (default: this interpreter)."""
    return [python or sys.executable, "-m", "BrainTumorSeg.cli"]


def cli_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the package's folder first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    paths = [str(PACKAGE_PARENT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def kill_process_tree(process: subprocess.Popen) -> None:
    """Kill ``process`` and every process it started (it must have been started by :func:`start_process`)."""
    if process.poll() is not None:
        return
    if os.name == "nt":
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False, creationflags=flags)
        if process.poll() is None:
            process.kill()
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the child leads its own session: pgid == pid
        except ProcessLookupError:
            pass


def start_process(command: Sequence[str], env: Mapping[str, str] | None, cwd: str | Path | None) -> subprocess.Popen:
    """Start ``command`` in its own process group (so it can be killed as a tree), stdout/stderr piped as text."""
    options: dict = {}
    if os.name == "nt":
        options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        options["start_new_session"] = True
    return subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=None if env is None else dict(env),
        cwd=None if cwd is None else str(cwd),
        **options,
    )


class CliProcess:
    """One CLI run in a child process: non-blocking progress, log lines, result and cancel."""

    def __init__(
        self,
        arguments: Sequence[str],
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.command = [*cli_command(python), *arguments]
        self.env = cli_environment(env)
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.cancelled = False
        self.events: list[CliEvent] = []
        self.stderr: list[str] = []
        self._events: queue.Queue[CliEvent] = queue.Queue()
        self._log: queue.Queue[str] = queue.Queue()
        self._readers: list[threading.Thread] = []

    def start(self) -> CliProcess:
        self.process = start_process(self.command, self.env, self.cwd)
        for stream, handle in ((self.process.stdout, self._read_stdout), (self.process.stderr, self._read_stderr)):
            reader = threading.Thread(target=handle, args=(stream,), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def _read_stdout(self, stream) -> None:
        for line in stream:
            if not line.strip():
                continue
            try:
                self._events.put(parse_progress_line(line))
            except ProgressLineError as error:
                self._log.put(f"(stdout) {error}")

    def _read_stderr(self, stream) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if line:
                self.stderr.append(line)
                self._log.put(line)

    def poll(self) -> list[CliEvent]:
        """Progress events that arrived since the last call (never blocks)."""
        new = _drain(self._events)
        self.events.extend(new)
        return new

    def log_lines(self) -> list[str]:
        """Log lines (stderr, and stdout lines that are not events) that arrived since the last call."""
        return _drain(self._log)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def finished(self) -> bool:
        """The process has ended and everything it wrote has been read."""
        return self.returncode is not None and not any(reader.is_alive() for reader in self._readers)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process and its output; returns the exit code (TimeoutExpired after ``timeout`` s)."""
        if self.process is None:
            raise RuntimeError("not started")
        code = self.process.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in self._readers:
            reader.join(None if deadline is None else max(deadline - time.monotonic(), 0.1))
        return code

    def cancel(self, timeout: float = 5.0) -> None:
        """Kill the whole process tree and wait (up to ``timeout`` s) until it is gone."""
        self.cancelled = True
        if self.process is None:
            return
        kill_process_tree(self.process)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for stream in (self.process.stdout, self.process.stderr):
            try:
                if stream is not None:
                    stream.close()
            except (OSError, ValueError):
                pass  # a reader thread may be closing it at the same time

    @property
    def result(self) -> CliEvent | None:
        """The final ``done`` event, if the run got that far."""
        return next((event for event in reversed(self.events) if event.finished), None)

    def error_message(self) -> str:
        """The CLI's one-line error (without its prefix), else its last stderr line, else the exit code."""
        lines = list(self.stderr)
        for line in reversed(lines):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX) :]
        if lines:
            return lines[-1]
        return f"brain-tumor-seg ended with exit code {self.returncode}"


def _drain(items: queue.Queue) -> list:
    out = []
    while True:
        try:
            out.append(items.get_nowait())
        except queue.Empty:
            return out
