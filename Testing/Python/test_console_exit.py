"""The command's fast exit (no interpreter teardown) keeps its exit codes and everything it printed to pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess:
    """The command with block-buffered pipes (as a shell pipeline or a batch script gets it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    command = [sys.executable, "-m", "BrainTumorSeg.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_piped_output_is_complete_at_exit():
    result = run("models")  # a few short lines: they sit in the pipe's buffer until the exit flushes them
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("unet2d-axial ") for line in result.stdout.splitlines()), result.stdout


def test_error_exit_code_and_message_survive_the_fast_exit(tmp_path: Path):
    missing = tmp_path / "t1.nii.gz"
    result = run(
        "segment",
        "--t1",
        str(missing),
        "--t1ce",
        str(missing),
        "--t2",
        str(missing),
        "--flair",
        str(missing),
        "--out",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("brain-tumor-seg: error: ")
    assert str(missing) in result.stderr and not (tmp_path / "out").exists()


def test_a_reader_that_stops_early_gets_no_traceback():
    """`brain-tumor-seg models | head -1`: the pipe closes before the table is written; the command stops quietly."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    command = [sys.executable, "-m", "BrainTumorSeg.cli", "models"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    process.stdout.close()  # before the child has written anything
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141  # 128 + SIGPIPE, as a shell reports a command a pipe cut short
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_a_broken_pipe_other_than_stdout_is_an_error_with_its_traceback():
    """Only stdout's reader going away is a quiet 141; any other broken pipe (a socket, a child) is a real error."""
    probe = (
        "import sys\n"
        "from BrainTumorSeg import cli\n"
        "def main(argv, ends_process=False):\n"
        "    raise BrokenPipeError(32, 'Broken pipe', 'some socket')\n"
        "cli.main = main\n"
        "sys.argv = ['brain-tumor-seg', 'models']\n"
        "cli.console_main()\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "BrokenPipeError" in result.stderr.strip().splitlines()[-1], result.stderr
