"""The process runner the Slicer module uses drives the real CLI: progress, results, errors, and cancel.

These run ``python -m BrainTumorSeg.cli segment ... --progress json`` on the bundled sample case (cancel, bad input) or
on it cut around its tumor (a whole run) in a child process exactly as the module does (minus Slicer), polling like the
module's QTimer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nrrd
import pytest

from BrainTumorSeg.cli_events import STAGES, CliEvent
from BrainTumorSeg.cli_process import PACKAGE_PARENT, CliProcess, cli_environment, kill_process_tree, start_process
from BrainTumorSeg.labels import SEGMENTS
from BrainTumorSeg.segment_choices import Device, SegmentChoices, segment_arguments
from BrainTumorSeg.slicer_inputs import MODALITIES

POLL_SECONDS = 0.05


def sample_inputs(sample_dir: Path) -> dict[str, Path]:
    return {m: sample_dir / f"{sample_dir.name}_{m}.nii.gz" for m in MODALITIES}


def poll_until(process: CliProcess, stop, timeout: float = 600.0) -> tuple[list[CliEvent], float]:
    """Poll like the GUI timer until ``stop(events)`` or the process has finished; returns (events, longest poll in s)."""
    events: list[CliEvent] = []
    longest = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = time.perf_counter()
        new = process.poll()
        longest = max(longest, time.perf_counter() - started)
        events += new
        if stop(events) or process.finished:
            events += process.poll()
            return events, longest
        time.sleep(POLL_SECONDS)
    process.cancel()
    raise AssertionError(f"no end within {timeout} s; stderr: {process.stderr[-5:]}")


def leftovers(folder: Path) -> list[str]:
    """Every entry left in ``folder``, hidden ones (staging folders) included; [] if it does not exist."""
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def finished_run(tumor_block, tmp_path_factory):
    """The module's run of the sample cut around its tumor."""
    out = tmp_path_factory.mktemp("slicer-run") / "output"
    process = CliProcess(segment_arguments(sample_inputs(tumor_block), out, SegmentChoices(device=Device.CPU))).start()
    events, longest_poll = poll_until(process, lambda events: False)
    process.wait(30)
    return process, events, longest_poll, out


def test_run_ends_with_success_and_a_final_done_event(finished_run):
    process, events, _, _ = finished_run
    assert process.returncode == 0, process.stderr[-5:]
    assert events, "no progress events on stdout"
    assert events == process.events
    final = events[-1]
    assert final.finished and final.done == final.total
    assert [e for e in events if e.finished] == [final]
    assert process.result is final


def test_events_are_monotonic_and_cover_the_stages(finished_run):
    _, events, _, _ = finished_run
    orders = [e.order for e in events]
    assert orders == sorted(orders), "stage or done went backwards"
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0 and 0.0 <= fractions[0] < 0.1
    stages = [e.stage for e in events]
    assert stages[0] == "load"
    assert {"load", "predict", "write", "done"} <= set(stages)
    assert all(s in STAGES for s in stages)
    predict = [e for e in events if e.stage == "predict"]
    assert len(predict) >= 3, "prediction should report progress along the way"
    assert all(0 <= e.done <= e.total for e in events)


def test_polling_never_blocks(finished_run):
    _, _, longest_poll, _ = finished_run
    assert longest_poll < 0.05


def test_outputs_exist_and_match_the_final_event(finished_run):
    process, _, _, out = finished_run
    final = process.result
    assert set(final.outputs) == {"labels", "segmentation", "volumes"}
    for path in final.outputs.values():
        assert Path(path).is_file() and Path(path).parent.resolve() == out.resolve()
    assert not [name for name in leftovers(out) if name.startswith(".")], "staging leftovers"
    volumes = json.loads(Path(final.outputs["volumes"]).read_text())["volumes_ml"]
    assert volumes == pytest.approx(final.volumes_ml)
    assert {s.key for s in SEGMENTS} | {"WT", "TC", "ET"} <= set(final.volumes_ml)
    assert final.volumes_ml["WT"] == pytest.approx(sum(final.volumes_ml[s.key] for s in SEGMENTS), abs=0.01)
    assert final.volumes_ml["WT"] > 10  # the sample has a large tumor
    _, header = nrrd.read(final.outputs["segmentation"])
    names = [header[f"Segment{i}_Name"] for i in range(len(SEGMENTS))]
    assert names == [s.name for s in SEGMENTS]


def test_stdout_carries_only_events_and_the_log_goes_elsewhere(finished_run):
    process, _, _, _ = finished_run
    assert not [line for line in process.log_lines() if line.startswith("(stdout)")]


def test_cancel_after_first_predict_event_kills_the_tree_and_leaves_nothing(sample_dir, tmp_path):
    out = tmp_path / "output"
    process = CliProcess(segment_arguments(sample_inputs(sample_dir), out, SegmentChoices(device=Device.CPU))).start()
    events, _ = poll_until(process, lambda events: any(e.stage == "predict" for e in events), timeout=300)
    assert process.running, f"the run ended before it could be cancelled: {process.stderr[-3:]}"
    assert not any(e.finished for e in events)
    started = time.monotonic()
    process.cancel()
    assert time.monotonic() - started < 1.0
    assert not process.running and process.returncode is not None and process.returncode != 0
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(process.process.pid, 0)  # no process of the group is left
    time.sleep(0.5)
    assert leftovers(out) == []
    assert process.result is None


def test_cancel_kills_grandchildren_too(tmp_path):
    """A process started by the child dies with it (the CLI's own helpers would otherwise keep running)."""
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    process = start_process([sys.executable, "-c", script], None, tmp_path)
    grandchild = int(process.stdout.readline())
    assert _alive(grandchild)
    started = time.monotonic()
    kill_process_tree(process)
    process.wait(5)
    deadline = time.monotonic() + 1.0
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(grandchild)
    assert time.monotonic() - started < 1.0


def _alive(pid: int) -> bool:
    if os.name == "nt":
        result = subprocess.run(["tasklist", "/FI", f"PID eq {pid}"], capture_output=True, text=True, check=False)
        return str(pid) in result.stdout
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of an exited parent is reaped by init; until then it is a zombie, which counts as dead.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[-1].startswith("Z"))


def test_bad_input_gives_the_cli_one_line_error_and_no_output(sample_dir, tmp_path):
    inputs = sample_inputs(sample_dir) | {"t2": tmp_path / "missing_t2.nii.gz"}
    out = tmp_path / "output"
    process = CliProcess(segment_arguments(inputs, out, SegmentChoices(device=Device.CPU))).start()
    assert process.wait(300) == 2
    process.poll()
    message = process.error_message()
    assert "missing_t2.nii.gz" in message and "\n" not in message
    assert not message.startswith("brain-tumor-seg: error:")
    assert process.result is None
    assert leftovers(out) == []


def test_the_child_finds_the_package_through_pythonpath():
    """The module runs the CLI with Slicer's Python from Slicer's folder: PYTHONPATH must lead to the package."""
    env = cli_environment({"PYTHONPATH": os.pathsep.join(["/elsewhere", str(PACKAGE_PARENT)])})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PACKAGE_PARENT), "/elsewhere"]
    assert (Path(env["PYTHONPATH"].split(os.pathsep)[0]) / "BrainTumorSeg" / "cli.py").is_file()


def test_inputs_as_the_module_writes_them(tumor_block, tmp_path):
    """The module exports the volumes as ``case_<modality>.nrrd``; the result is ``case.seg.nrrd`` on the T1ce grid."""
    import SimpleITK as sitk

    files = {}
    for modality, path in sample_inputs(tumor_block).items():
        files[modality] = tmp_path / f"case_{modality}.nrrd"
        sitk.WriteImage(sitk.ReadImage(str(path)), str(files[modality]))
    process = CliProcess(segment_arguments(files, tmp_path / "output", SegmentChoices(device=Device.CPU))).start()
    assert process.wait(300) == 0, process.stderr[-3:]
    process.poll()
    segmentation = Path(process.result.outputs["segmentation"])
    assert segmentation.name == "case.seg.nrrd"
    result, t1ce = sitk.ReadImage(str(segmentation)), sitk.ReadImage(str(files["t1ce"]))
    assert result.GetSize() == t1ce.GetSize()
    assert result.GetOrigin() == pytest.approx(t1ce.GetOrigin())
    assert result.GetSpacing() == pytest.approx(t1ce.GetSpacing())
    assert result.GetDirection() == pytest.approx(t1ce.GetDirection())
