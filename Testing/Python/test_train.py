"""The training command runs end to end on real (cropped) cases, resumes, and writes weights plus a complete model card."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file
from train_support import ROOT, TRAIN, needs_brats, tiny_data

from BrainTumorSeg import train
from BrainTumorSeg.augmentation import augment, from_one_hot, one_hot, rotate_scale_blocks
from BrainTumorSeg.cli import main
from BrainTumorSeg.device import autocast_dtype
from BrainTumorSeg.fp16_check import DEFERRED
from BrainTumorSeg.models.card import ARCHITECTURE_NAMES, MODELS_ENV, ModelCard
from BrainTumorSeg.recipes import Recipe, default_template, keras_variant
from BrainTumorSeg.resources import resources_dir
from BrainTumorSeg.train import evaluate, training_spacing
from BrainTumorSeg.training_data import BlockSampler, PatchSampler, SliceSampler, load_training_case
from BrainTumorSeg.training_progress import TrainingProgress
from BrainTumorSeg.training_stop import GracefulStop
from BrainTumorSeg.validation import main as validate_main


@pytest.fixture(scope="module")
def data(tmp_path_factory, crop_case):
    return tiny_data(tmp_path_factory, crop_case)


@pytest.fixture(scope="module")
def cases(data):
    return [load_training_case(data.data / c, data.cache, "brats2017") for c in json.loads(data.split.read_text())["train"]]


def interrupt_at(monkeypatch, step: int) -> None:
    """Send this process SIGINT (Ctrl-C) while training step ``step`` runs, as a user would."""
    real_optimize, calls = train.optimize, []

    def optimize(*arguments):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real_optimize(*arguments)

    monkeypatch.setattr(train, "optimize", optimize)


def steps_logged(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "losses.jsonl").read_text().splitlines()]


@needs_brats
def test_train_writes_weights_and_a_complete_card_that_lists_as_a_model(data, tmp_path, capsys, monkeypatch):
    template = json.loads((ROOT / "training" / "unet2d-axial.json").read_text())
    template.update(id="tiny-unet", default=False, config={**template["config"], "features": [4, 8]})
    card_path = tmp_path / "tiny.json"
    card_path.write_text(json.dumps(template))
    out = tmp_path / "run"
    args = ["train", "--card", str(card_path), *data.args(out), "--quiet"]
    args += ["--steps", "3", "--batch", "2", "--crop", "64", "64", "--loss", "ce"]
    assert main(args) == 0
    card = ModelCard.read(out / "tiny-unet.json")
    assert card.weights_path.is_file()
    training = card.training
    assert training["split"] == json.loads(data.split.read_text())
    assert training["command"].startswith("brain-tumor-seg train --card")
    assert training["architecture"] == "unet2d" and training["sampler"] == "slices"
    assert training["label_convention"] == "brats2017"
    assert card.inputs["spacing_mm"] == [1.0, 1.0, 1.0]  # the training cases' (segment resamples other spacings to it)
    assert training["loss"] == "ce" and "cross-entropy" in training["loss_description"]
    assert training["steps"] == 3 and training["batch"] == 2 and training["crop"] == [64, 64]
    native = autocast_dtype(torch.device("cpu"))  # --precision auto: bf16 on CPUs with native bf16, else fp32
    assert training["minutes"] >= 0 and training["machine"] and training["precision"] == ("bfloat16" if native else "fp32")
    assert training["started"] <= training["finished"]
    assert [h["step"] for h in training["history"]] == [3]
    assert set(card.validation["dice"]) == {"WT", "TC", "ET"}
    assert set(card.validation["per_case"]) == {"Brats18_CBICA_ARZ_1"} and card.validation["seconds_per_case"] > 0
    assert card.validation["weights_dtype"] in ("float16", "float32")
    card.load()  # the written weights fit the card's architecture
    capsys.readouterr()
    assert main(["models", "--models-dir", str(out)]) == 0
    assert "tiny-unet" in capsys.readouterr().out
    monkeypatch.setenv(MODELS_ENV, str(out))  # or the environment variable names the run's folder
    assert main(["models"]) == 0
    assert "tiny-unet" in capsys.readouterr().out
    assert main(["segment", "--sample", "--model", "tiny-unet", "--out", str(tmp_path / "seg"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "seg" / "Brats18_CBICA_AQP_1_volumes.json").read_text())["model"] == "tiny-unet"


@needs_brats
def test_an_interrupted_run_resumes_from_its_checkpoint(data, tmp_path, capsys, monkeypatch):
    """Ctrl-C finishes the step in hand and checkpoints it (whatever --checkpoint-every says); the same command resumes
    there, and drops what a killed run logged after its checkpoint."""
    out = tmp_path / "run"
    command = ["train", "--architecture", "unet2d", "--config", '{"features": [4, 8]}', *data.args(out), "--quiet"]
    command += ["--batch", "2", "--crop", "48", "48", "--validate-every", "100", "--checkpoint-every", "100", "--steps", "4"]
    interrupt_at(monkeypatch, 2)
    assert main(command) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "brain-tumor-seg train: interrupted"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.undo()
    with (out / "losses.jsonl").open("a") as log:  # logged by a killed run after its checkpoint, then a half-written line
        log.write(json.dumps({"step": 3, "phase": "training", "loss": 1.0, "lr": 0.0}) + '\n{"step": 4, "pha')
    assert main(command) == 0  # picks up at step 2, not from scratch
    assert steps_logged(out) == [1, 2, 3, 4]
    assert [h["step"] for h in ModelCard.read(out / "unet2d-axial.json").training["history"]] == [4]


@needs_brats
def test_sigterm_twice_still_checkpoints_the_step_in_hand(data, tmp_path):
    """A cluster's time limit: SIGTERM to the job, and again from the launcher. The run saves its last finished step
    once and ends with 143; the second signal does not cut the save short."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "BrainTumorSeg.cli", "train", "--architecture", "unet2d", *data.args(out), "--quiet"]
    command += ["--config", '{"features": [4, 8]}', "--batch", "2", "--crop", "48", "48", "--steps", "5000"]
    command += ["--checkpoint-every", "5000", "--validate-every", "5000"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out / "losses.jsonl").is_file() and len(steps_logged(out)) >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "brain-tumor-seg train: interrupted"
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= saved == steps_logged(out)[-1]  # the last step logged is the one saved


@pytest.mark.parametrize("ends_process", [True, False])
def test_a_stopped_run_ignores_repeats_until_its_process_exits(ends_process):
    """The repeat of a stop signal can land after the save (CI saw a tiny run saved within the 20 ms between two
    SIGTERMs, then killed by the second): a run that ends its process leaves the signals ignored, with no moment in
    between when the default handler is back; a run inside a longer-lived process gives them back as they were."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with GracefulStop(ends_process) as stop:
            stop.in_loop = True
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # ignored while the step in hand finishes
            assert stop.requested and stop.exit_code == 143
        for signum, handler in previous.items():
            assert signal.getsignal(signum) == (signal.SIG_IGN if ends_process else handler)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_fp16_training_scales_the_loss_so_small_gradients_do_not_vanish():
    """In fp16 a gradient below 6e-8 is zero; the loss scaler keeps it, and the step uses it unscaled."""
    recipe = Recipe.from_dict({**default_template("unet2d")["training"], "l1": 0.0, "max_norm": None})
    moved = {}
    for scaled in (False, True):
        torch.manual_seed(0)
        network = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        before = network[0].weight.detach().clone()
        optimizer = torch.optim.SGD(network.parameters(), lr=1e8)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = network(torch.randn(4, 8)).float().mean() * 1e-9
        scaler = train.loss_scaler(torch.device("cpu"), torch.float16) if scaled else None
        train.optimize(loss, network, optimizer, schedule, recipe, scaler)
        moved[scaled] = float((network[0].weight.detach() - before).abs().max())
    assert moved[False] == 0.0  # the fp16 gradient underflowed
    assert 1e-3 < moved[True] < 1.0  # lr 1e8 x a gradient of about 1e-10: the scale was taken out again


@needs_brats
def test_an_fp16_run_resumes_with_its_loss_scale(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    common = ["train", "--architecture", "unet2d", "--config", '{"features": [4, 8]}', *data.args(out), "--quiet"]
    common += ["--batch", "2", "--crop", "48", "48", "--precision", "fp16", "--steps", "4"]
    interrupt_at(monkeypatch, 2)
    assert main(common) == 130
    monkeypatch.undo()
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 2 and checkpoint["scaler"]["scale"] == 65536.0  # fresh, unless a step overflowed
    checkpoint["scaler"]["scale"] = 128.0  # as if the run had lowered it
    torch.save(checkpoint, out / "checkpoint.pt")
    assert main(common) == 0
    resumed = torch.load(out / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == 4 and resumed["scaler"]["scale"] <= 128.0  # went on from 128, not from a fresh 65536
    assert ModelCard.read(out / "unet2d-axial.json").training["precision"] == "float16"
    bf16 = [*common[:-4], "--steps", "2", "--precision", "bf16", "--out", str(tmp_path / "bf16")]
    assert main(bf16) == 0
    assert "scaler" not in torch.load(tmp_path / "bf16" / "checkpoint.pt", weights_only=True)  # bf16 needs none


@needs_brats
def test_a_checkpoint_of_another_run_is_not_resumed(data, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "--architecture", "unet2d", "--config", '{"features": [4, 8]}', *data.args(out), "--quiet"]
    common += ["--batch", "2", "--crop", "48", "48", "--steps", "2"]
    assert main(common) == 0
    capsys.readouterr()
    checkpoint = out / "checkpoint.pt"
    advice = "run the command that started it to resume, or give another --out"
    for change, what in ((["--id", "other-model", "--lr", "0.1"], "id, lr"), (["--steps", "3"], "steps")):
        assert main([*common, *change]) == 2
        expected = f"{checkpoint}: holds a run with another {what}; {advice}"
        assert capsys.readouterr().err.strip() == f"brain-tumor-seg train: error: {expected}"
    assert not (out / "other-model.json").exists()
    assert main([*common, "--validate-every", "7"]) == 0  # the same run: only how often it validates differs


@needs_brats
def test_init_starts_from_given_weights_and_records_them(data, tmp_path, capsys, caplog):
    common = ["train", "--architecture", "unet2d", "--config", '{"features": [4, 8]}', "--quiet"]
    common += ["--batch", "2", "--crop", "48", "48", "--steps", "2"]
    first = tmp_path / "first"
    assert main([*common, *data.args(first)]) == 0
    weights = first / "unet2d-axial.safetensors"
    second = tmp_path / "second"
    caplog.clear()
    assert main([*common, *data.args(second), "--init", str(weights), "--lr", "0"]) == 0  # no step moves a weight
    replay = "--init unet2d-axial.safetensors: its run used seed 0 too, so this run draws the same samples in the same order"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    bundled = "model id unet2d-axial is a bundled model's: in a models folder this model replaces it, also inside ensembles"
    assert warnings == [bundled + "; give --id to name yours", replay + "; give --seed N for new ones"]
    before, after = load_file(str(weights)), load_file(str(second / "unet2d-axial.safetensors"))
    parameters = [k for k in before if "running_" not in k and "num_batches" not in k]  # not batch statistics
    assert len(parameters) > 10 and all(torch.equal(before[k], after[k]) for k in parameters)
    init = ModelCard.read(second / "unet2d-axial.json").training["init"]
    assert init["weights"] == weights.name and init["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert init["model"] == "unet2d-axial" and init["dice"] == ModelCard.read(first / "unet2d-axial.json").validation["dice"]
    caplog.clear()
    assert main([*common, *data.args(tmp_path / "new-seed"), "--init", str(weights), "--seed", "1"]) == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [bundled + "; give --id to name yours"]
    capsys.readouterr()
    default = resources_dir() / "Models" / "unet2d-axial.safetensors"  # the shipped U-Net: other feature widths
    assert main([*common, *data.args(tmp_path / "third"), "--init", str(default)]) == 2
    error = capsys.readouterr().err.strip()
    expected = f"brain-tumor-seg train: error: {default}: weights do not match the card's architecture (Unexpected key(s)"
    assert error.startswith(expected)
    assert len(error.splitlines()) == 1 and not (tmp_path / "third").exists()


@needs_brats
def test_a_deferred_fp16_check_skips_the_second_pass_and_validate_settles_it(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["train", "--architecture", "unet2d", "--config", '{"features": [4, 8]}', *data.args(out), "--quiet"]
    passes = []
    monkeypatch.setattr(train, "evaluate", lambda *a: passes.append(a) or evaluate(*a))
    assert main([*args, "--batch", "2", "--crop", "48", "48", "--steps", "2", "--defer-fp16-check"]) == 0
    assert len(passes) == 1  # the last step's validation only
    card = ModelCard.read(out / "unet2d-axial.json")
    assert card.validation["fp16_check"] == DEFERRED and card.validation["weights_dtype"] == "float16"
    last = {k: card.training["history"][-1][k] for k in ("WT", "TC", "ET")}
    assert card.validation["dice"] == card.validation["dice_fp32"] == last  # the last step's pass, not a new one
    fp16, fp32 = load_file(str(card.weights_path)), load_file(str(out / "unet2d-axial-fp32.safetensors"))
    assert {t.dtype for t in fp32.values() if t.is_floating_point()} == {torch.float32}
    assert all(torch.equal(fp16[k], fp32[k].to(fp16[k].dtype)) for k in fp16)
    precision = "bf16" if card.training["precision"] == "bfloat16" else "fp32"
    arguments = ["--model", card.id, "--models-dir", str(out), "--data", str(data.data), "--precision", precision]
    capsys.readouterr()
    assert validate_main([*arguments, "--choose-postprocess", "--write"]) == 0  # files + fp16 weights == cache + fp32
    assert ModelCard.read(card.path).validation["fp16_check"].startswith("passed in `brain-tumor-seg validate`")


@needs_brats
def test_template_errors_are_one_line_exit_2(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--architecture", "unet2d", "--havaei-variant", "keras", *data.args(out)]) == 2
    assert main(["train", "--architecture", "pspnet", "--phase2-steps", "5", *data.args(out)]) == 2
    assert main(["train", "--architecture", "unet2d", "--config", "[1]", *data.args(out)]) == 2
    assert main(["train", "--architecture", "unet2d", "--rotate-blocks", *data.args(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 4
    assert "rotating blocks is an augmentation of 3D blocks (slices and patches rotate whenever augmented)" in err


def _split(root, content: str):
    path = root / "split.json"
    path.write_text(content)
    return path


NO_STEPS = "--steps: nothing to train: give a positive number of steps (or of --phase2-steps)"
BAD_TRAINING_INPUTS = {
    "split not found": (
        lambda root: ["--split", str(root / "nope.json")],
        "{root}/nope.json: split file cannot be read (No such file or directory)",
    ),
    "split not JSON": (
        lambda root: ["--split", str(_split(root, '{"train": [],'))],
        "{root}/split.json: split file is not JSON (",
    ),
    "split without validation": (
        lambda root: ["--split", str(_split(root, '{"train": ["a"], "val": ["b"]}'))],
        '{root}/split.json: a split file is a JSON object {"train": [case ids], "validation": [case ids]}',
    ),
    "empty validation": (
        lambda root: ["--split", str(_split(root, '{"train": ["a"], "validation": []}'))],
        '{root}/split.json: "validation" must be a non-empty list of case ids (strings)',
    ),
    "a case twice": (
        lambda root: ["--split", str(_split(root, '{"train": ["a", "a"], "validation": ["b"]}'))],
        '{root}/split.json: "train" lists a more than once',
    ),
    "train and validation overlap": (
        lambda root: ["--split", str(_split(root, '{"train": ["a", "b"], "validation": ["b"]}'))],
        "{root}/split.json: b is in both train and validation",
    ),
    "a case not in --data": (lambda root: ["--data", str(root)], "{root}/" + TRAIN[0] + ": case folder not found"),
    "unknown config key": (lambda root: ["--config", '{"featurs": 3}'], "--config: not a valid unet2d configuration"),
    "no network levels": (lambda root: ["--config", '{"features": []}'], "--config: not a valid unet2d configuration"),
    "no steps": (lambda root: ["--steps", "0"], NO_STEPS),
    "batch 0": (lambda root: ["--batch", "0"], "--batch: must be positive, not 0"),
    "negative lr": (lambda root: ["--lr", "-1"], "--lr: must not be negative, not -1.0"),
    "tiny crop": (lambda root: ["--crop", "5", "5"], "--crop: sizes of at least 8 voxels, not 5 5"),
}


@needs_brats
@pytest.mark.parametrize("kind", list(BAD_TRAINING_INPUTS))
def test_bad_training_inputs_are_one_line_errors_and_leave_no_output(kind, data, tmp_path, capsys):
    make, expected = BAD_TRAINING_INPUTS[kind]
    out = tmp_path / "run"
    arguments = ["train", "--architecture", "unet2d", *data.args(out), "--quiet", "--steps", "2", "--crop", "48", "48"]
    arguments += make(tmp_path)  # later flags win
    capsys.readouterr()
    assert main(arguments) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "brain-tumor-seg train: error: " + expected.replace("{root}", str(tmp_path))
    ), lines
    assert not out.exists()


@needs_brats
def test_the_case_cache_is_never_read_for_other_files_or_another_convention_and_drops_stale_entries(data, tmp_path):
    case = tmp_path / "data" / TRAIN[0]
    shutil.copytree(data.data / TRAIN[0], case)
    cache = tmp_path / "cache"
    first = load_training_case(case, cache, "brats2017")
    assert load_training_case(case, cache, "brats2017").labels.tobytes() == first.labels.tobytes()
    assert len(list(cache.glob("*.npz"))) == 1  # read back, not made again
    truth = next(case.glob("*_seg.nii.gz"))
    labels = sitk.ReadImage(str(truth))
    sitk.WriteImage(labels == 2, str(truth))  # the same case id, other labels (edema only, as label 1)
    changed = load_training_case(case, cache, "brats2017")
    assert set(np.unique(changed.labels)) == {0, 1}
    assert len(list(cache.glob("*.npz"))) == 1  # the entry of the old files is gone: nothing could read it again
    load_training_case(case, cache, "brats2023")
    assert len(list(cache.glob("*.npz"))) == 2  # another convention's entry is another valid entry
    with pytest.raises(ValueError, match="unknown label convention 'foo'"):
        load_training_case(case, cache, "foo")


@needs_brats
def test_an_output_path_that_is_a_file_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("a file\n")
    assert main(["train", "--architecture", "unet2d", *data.args(out), "--quiet", "--steps", "2"]) == 2
    assert capsys.readouterr().err.strip() == f"brain-tumor-seg train: error: {out}: output folder is a file, not a folder"
    assert out.read_text() == "a file\n"


@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_every_architecture_has_a_consistent_default_template(architecture):
    """Each default template builds its network, its recipe fits it, and training/<id>.json holds the same template."""
    template = default_template(architecture)
    recipe = Recipe.from_dict(template["training"])
    recipe.check(architecture, template["outputs"]["type"])
    expected_mode = {"patches": "dense", "slices": "slices", "blocks": "window"}[recipe.sampler]
    assert template["inference"]["mode"] == expected_mode
    if recipe.sampler == "blocks":
        assert template["inference"]["spatial_dims"] == 3 and len(template["inference"]["window"]) == 3
    if recipe.sampler == "patches":
        assert template["outputs"] == {"type": "classes", "labels": [0, 1, 2, 3]}
        assert template["config"]["num_classes"] == 4 and recipe.phase2_steps > 0
    card = ModelCard(**{k: v for k, v in template.items() if k != "training"})
    card.build()
    assert card.config["in_channels"] == len(card.modalities) * (2 * card.context_slices + 1)
    on_disk = json.loads((ROOT / "training" / f"{template['id']}.json").read_text())
    assert on_disk == template, f"training/{template['id']}.json differs from recipes.TEMPLATES[{architecture!r}]"
    if architecture == "twopathcnn":
        keras = keras_variant(template)
        assert json.loads((ROOT / "training" / f"{keras['id']}.json").read_text()) == keras


def test_every_training_template_file_reads_as_a_card():
    for path in sorted((ROOT / "training").glob("*.json")):
        if path.name != "split.json":
            card = ModelCard.read(path)
            Recipe.from_dict(card.training).check(card.architecture, card.outputs["type"]) if card.training else None


@needs_brats
def test_sampler_and_augmentation_keep_image_and_target_aligned(cases):
    """A flipped/rotated batch still has tumor targets only where the image has brain."""
    sampler = SliceSampler(cases[:1], "axial", 1, (96, 96), tumor_fraction=1.0, seed=0)
    x, labels = sampler.sample(4)
    assert x.shape == (4, 12, 96, 96) and labels.shape == (4, 96, 96)
    assert all(lab.any() for lab in labels)  # tumor_fraction 1: every slice has tumor
    y = torch.stack([(labels > 0), (labels == 1) | (labels == 3), labels == 3], 1).float()
    xa, ya = augment(x.clone(), y.clone(), torch.Generator().manual_seed(0), 4)
    brain = (xa != 0).any(dim=1)
    assert ya[:, 0].bool().any()
    assert (ya[:, 0].bool() & ~brain).float().mean() < 0.01


def test_warped_classes_leave_no_background_holes_where_labels_meet():
    """Where three tumor labels meet, a rotated one-hot has no class above 0.5; the pixel must keep a tumor label."""
    labels = torch.full((32, 64, 64), 1)
    labels[:, 32:, :32], labels[:, 32:, 32:] = 2, 3
    x, y = augment(torch.ones(32, 4, 64, 64), one_hot(labels, 4), torch.Generator().manual_seed(0), 4, exclusive=True)
    assert (y.sum(dim=1) == 1).all()
    warped = from_one_hot(y)
    assert not (warped == 0)[x[:, 0] != 0].any()  # background only where the image was rotated out of view
    assert (warped == 0).any() and set(warped.unique().tolist()) == {0, 1, 2, 3}


@needs_brats
def test_patch_sampler_balances_labels_in_phase_1_and_follows_nature_in_phase_2(cases):
    uniform = PatchSampler(cases, "axial", 33, "uniform", seed=0)
    patches, labels = uniform.sample(800)
    assert patches.shape == (800, 4, 33, 33) and labels.dtype == torch.int64
    share = np.bincount(labels.numpy(), minlength=4) / 800
    assert np.all(np.abs(share - 0.25) < 0.06), share
    # the target is the label of the centre pixel, and the centre pixel's intensities are that pixel's
    case = cases[0]
    one = PatchSampler([case], "axial", 33, "uniform", seed=1)
    for _ in range(20):
        c, index = one._pixel()
        s, row, col = np.unravel_index(index, one.labels[c].shape)
        patch, label = one.patch(c, index)
        assert label == case.labels[row, col, s]
        assert np.allclose(patch[:, 16, 16], case.data[:, row, col, s].astype(np.float32))
    natural = PatchSampler(cases, "axial", 33, "natural", seed=0)
    _, labels = natural.sample(400)
    assert (labels == 0).float().mean() > 0.7  # mostly healthy brain, as in the data


@needs_brats
def test_augmenting_even_patches_keeps_the_labelled_pixel_in_place(cases):
    """LocalCascadeCNN's 56x56 patch is labelled by its pixel 28: flips, rotation and scale must keep that pixel there."""
    sampler = PatchSampler(cases[:1], "axial", 56, "uniform", seed=0)
    c, index = sampler._pixel()
    s, row, col = np.unravel_index(index, sampler.labels[c].shape)
    patch, _ = sampler.patch(c, index)
    assert np.allclose(patch[:, 28, 28], cases[0].data[:, row, col, s].astype(np.float32))
    x, _ = sampler.sample(64)
    x[:] = 1.0
    x[:, :, 28, 28] = 10.0
    augmented = sampler.trim(augment(x, None, torch.Generator().manual_seed(0), 4)[0])
    assert augmented.shape == (64, 4, 56, 56)
    assert (augmented[:, 0].flatten(1).argmax(1) == 28 * 56 + 28).all()


@needs_brats
def test_block_sampler_draws_full_blocks_with_tumor(cases):
    sampler = BlockSampler(cases, (32, 32, 32), [0.0, 1.0, 1.0, 1.0], seed=0)
    x, labels = sampler.sample(3)
    assert x.shape == (3, 4, 32, 32, 32) and labels.shape == (3, 32, 32, 32)
    assert all(lab.any() for lab in labels)  # every block is centred on a tumor voxel
    assert not np.isin(x[0, 0].numpy(), cases[0].data[0]).all()  # intensities are rescaled and shifted


@needs_brats
def test_block_sampler_without_augmentation_copies_the_case(cases):
    x, _ = BlockSampler(cases[:1], (32, 32, 32), [0.0, 1.0, 1.0, 1.0], seed=0, augment=False).sample(2)
    assert np.isin(x.numpy(), cases[0].data.astype(np.float32)).all()  # --no-augment: voxel values as cached


def test_rotated_blocks_turn_about_the_superior_axis_only():
    """Labels layered along z (canonical superior axis) stay layered: rotation about z and an isotropic scale about the
    block centre move no voxel into another layer's z range; the image moves with its labels."""
    labels = torch.zeros(16, 32, 32, 32, dtype=torch.uint8)
    labels[..., :16], labels[..., 16:] = 1, 2
    labels[:, 8:24, 8:24, 14:18] = 3  # a slab in the middle, off the layer boundary only in z
    x = labels[:, None].float().repeat(1, 4, 1, 1, 1)
    xr, lr = rotate_scale_blocks(x.clone(), labels.clone(), torch.Generator().manual_seed(0))
    assert xr.shape == x.shape and lr.shape == labels.shape and lr.dtype == torch.uint8
    assert set(lr.unique().tolist()) <= {0, 1, 2, 3}
    assert not (lr[..., :13] == 2).any() and not (lr[..., 19:] == 1).any()  # layers stay on their side (scale <= 1.15)
    assert (lr != labels).any()  # something moved in-plane: the corners are background now
    assert (lr[..., 2:30] == 0).float().mean() < 0.2  # in-plane corners only, not whole slices
    inside = (lr != 0) & (xr[:, 0] != 0)
    assert (xr[:, 0][inside].round() == lr[inside].float()).float().mean() > 0.95  # image and labels moved together


def test_the_card_records_the_training_cases_median_spacing_and_names_cases_far_from_it(caplog):
    spacings = {"a": (1.0, 1.0, 1.0), "b": (0.94, 0.94, 1.0), "c": (1.0, 1.0, 1.0), "d": (0.5, 0.5, 3.0), "e": (1.0, 1.0, 1.0)}
    with caplog.at_level("WARNING"):
        assert training_spacing(spacings) == [1.0, 1.0, 1.0]
    assert caplog.messages == [
        "1 training case(s) are not at the median spacing [1.0, 1.0, 1.0] mm (d): the network learns at one voxel size, "
        "resample them first"
    ]


def test_progress_writes_plain_lines_when_not_a_terminal(tmp_path):
    with (tmp_path / "log").open("w") as stream:
        progress = TrainingProgress(total=10, start=0, every=5, stream=stream)
        for step in range(1, 11):
            progress.update(step, 0.5, 1e-3)
    lines = (tmp_path / "log").read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("step 5/10 loss 0.5000") and "\r" not in lines[0]
