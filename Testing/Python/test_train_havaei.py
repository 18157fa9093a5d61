"""Havaei et al. 2017's procedure (two phases, cascades on a fixed first CNN, the Keras variant) and 3D SegResNet training."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from train_support import needs_brats, tiny_data

from BrainTumorSeg.cli import main
from BrainTumorSeg.models.card import ModelCard
from BrainTumorSeg.recipes import Recipe, default_template, keras_variant
from BrainTumorSeg.train import make_batch, make_sampler, plan_phases, training_view
from BrainTumorSeg.training_data import load_training_case

TINY_HAVAEI = '{"local_maps": 4, "global_maps": 4}'


@pytest.fixture(scope="module")
def data(tmp_path_factory, crop_case):
    return tiny_data(tmp_path_factory, crop_case)


def fp16(path) -> dict[str, torch.Tensor]:
    return {k: v.half() for k, v in load_file(str(path)).items()}


@needs_brats
def test_two_phases_then_a_cascade_on_the_fixed_first_cnn(data, tmp_path):
    out = tmp_path / "twopath"
    common = ["train", "--architecture", "twopathcnn", "--config", TINY_HAVAEI, *data.args(out), "--quiet", "--batch", "16"]
    assert main([*common, "--steps", "3", "--phase2-steps", "0"]) == 0
    phase1 = tmp_path / "twopath-phase1.safetensors"
    shutil.copy(out / "twopathcnn-axial.safetensors", phase1)
    assert main([*common, "--steps", "3", "--phase2-steps", "2"]) == 0  # resumes after phase 1, runs phase 2 only
    before, after = fp16(phase1), fp16(out / "twopathcnn-axial.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= {"output.weight", "output.bias"}, changed

    card = ModelCard.read(out / "twopathcnn-axial.json")
    assert card.outputs == {"type": "classes", "labels": [0, 1, 2, 3]} and card.inference["mode"] == "dense"
    phases = card.training["phases"]
    assert [p["steps"] for p in phases] == [3, 2] and [p["labels"] for p in phases] == ["uniform", "natural"]
    assert [p["trained"] for p in phases] == ["all layers", "output layer only (others fixed)"]
    assert [h["phase"] for h in card.training["history"]] == ["phase 1", "phase 2"]
    assert card.training["optimizer"] == "sgd" and card.training["momentum"] == [0.5, 0.9]

    cascade_out = tmp_path / "cascade"
    cascade = ["train", "--architecture", "inputcascadecnn", "--config", TINY_HAVAEI, *data.args(cascade_out), "--quiet"]
    cascade += ["--batch", "8", "--steps", "2", "--phase2-steps", "1"]
    assert main(cascade) == 2  # a cascade needs its trained first CNN
    assert main([*cascade, "--first-cnn", str(phase1)]) == 0
    trained = fp16(cascade_out / "inputcascadecnn-axial.safetensors")
    assert all(torch.equal(trained[f"first.{k}"], v) for k, v in before.items())  # fixed while the second CNN trained
    card = ModelCard.read(cascade_out / "inputcascadecnn-axial.json")
    assert card.training["first_cnn"]["weights"] == phase1.name and len(card.training["first_cnn"]["sha256"]) == 64
    trained_layers = [p["trained"] for p in card.training["phases"]]
    assert trained_layers == ["all layers but the fixed first CNN", "output layer only (others fixed)"]

    # the weights at the end of phase 1 stay beside the checkpoint, so phase 2 can be redone on them alone
    after_phase1 = cascade_out / "inputcascadecnn-axial-phase1.safetensors"
    changed = {k for k, v in fp16(after_phase1).items() if not torch.equal(v, trained[k])}
    assert changed and changed <= {"second.output.weight", "second.output.bias"}, changed
    redo_out = tmp_path / "phase2-again"
    redo = [*cascade[:5], *data.args(redo_out), "--quiet", "--batch", "8", "--first-cnn", str(phase1)]
    assert main([*redo, "--init", str(after_phase1), "--steps", "0", "--phase2-steps", "1", "--seed", "1"]) == 0
    again = fp16(redo_out / "inputcascadecnn-axial.safetensors")
    changed_again = {k for k, v in fp16(after_phase1).items() if not torch.equal(v, again[k])}
    assert changed_again and changed_again <= changed, changed_again
    assert [p["steps"] for p in ModelCard.read(redo_out / "inputcascadecnn-axial.json").training["phases"]] == [0, 1]
    assert not (redo_out / "inputcascadecnn-axial-phase1.safetensors").exists()  # phase 1 did not run


@needs_brats
def test_keras_variant_trains_densely_with_batch_norm_and_per_slice_weights(data, tmp_path):
    out = tmp_path / "keras"
    args = ["train", "--architecture", "twopathcnn", "--havaei-variant", "keras", "--config", TINY_HAVAEI, *data.args(out)]
    assert main([*args, "--quiet", "--steps", "2", "--batch", "2", "--crop", "48", "48"]) == 0
    card = ModelCard.read(out / "twopathcnn-keras-axial.json")
    assert card.config["batch_norm"] is True and card.config["dropout"] == 0.0
    assert card.training["sampler"] == "slices" and card.training["loss"] == "weighted-ce"
    assert "phase2_steps" not in card.training and len(card.training["phases"]) == 1
    assert any(k.endswith("norm.running_mean") for k in load_file(str(card.weights_path)))
    assert "batch normalization" in card.description and "two phases" not in card.description


@needs_brats
def test_dense_training_crops_carry_the_patch_margin_so_no_score_sees_padding(data):
    """Dense (Keras-variant) training: each target pixel's score comes from the whole window around that pixel, cut
    from the crop, never from zero padding; LocalCascadeCNN's even 56x56 window has uneven margins (28 before, 27 after)."""
    card = ModelCard(**keras_variant(default_template("localcascadecnn")))
    recipe = Recipe.from_dict({**card.training, "batch": 2, "crop": [8, 8], "augment": False})
    network = card.build().eval()
    cases = [load_training_case(data.data / c, data.cache, "brats2017") for c in json.loads(data.split.read_text())["train"]]
    sampler = make_sampler(recipe, card, network, cases, plan_phases(recipe)[0], seed=0)
    raw_x, raw_labels = copy.deepcopy(sampler).sample(2)
    x, target = make_batch(recipe, sampler, "classes", torch.Generator().manual_seed(0))
    assert torch.equal(x, raw_x) and x.shape[-2:] == (63, 63)
    assert torch.equal(target, raw_labels[:, 28:36, 28:36].long())  # target pixel i is crop pixel i + 28
    with torch.no_grad():
        scores = training_view(network, recipe)(x)
        assert scores.shape == (2, 4, 8, 8)
        for i, j in ((0, 0), (3, 5), (7, 7)):  # the patch whose labelled pixel (28) is crop pixel (i + 28, j + 28)
            assert torch.allclose(scores[:, :, i, j], network.classify_patches(x[:, :, i : i + 56, j : j + 56]), atol=1e-4)


@needs_brats
def test_segresnet_trains_on_3d_blocks_and_validates_with_a_3d_window(data, tmp_path):
    out = tmp_path / "segresnet"
    config = '{"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]}'
    args = ["train", "--architecture", "segresnet", "--config", config, *data.args(out), "--quiet"]
    assert main([*args, "--steps", "2", "--batch", "1", "--block", "32", "32", "32", "--loss", "dice-ce"]) == 0
    card = ModelCard.read(out / "segresnet-3d.json")
    assert card.inference["mode"] == "window" and card.inference["spatial_dims"] == 3 and len(card.inference["window"]) == 3
    assert card.training["sampler"] == "blocks" and card.training["block"] == [32, 32, 32]
    assert set(card.validation["dice"]) == {"WT", "TC", "ET"}
    lines = (out / "losses.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
