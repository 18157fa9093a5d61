"""`brain-tumor-seg validate` on a real case: Dice through the shipping path, clean-up variants from one pass."""

from __future__ import annotations

import json
import shutil

import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file, save_file

from BrainTumorSeg.case import truth_file
from BrainTumorSeg.device import autocast_dtype
from BrainTumorSeg.errors import InputError
from BrainTumorSeg.fp16_check import DEFERRED
from BrainTumorSeg.labels import from_convention, to_convention
from BrainTumorSeg.models.card import ModelCard
from BrainTumorSeg.validation import POSTPROCESS_VARIANTS, main, validate


@pytest.fixture(scope="module")
def one_case_card(tmp_path_factory, unet_card, cropped_sample):
    """The default model's first network with a split whose only validation case is the cropped real sample."""
    folder = tmp_path_factory.mktemp("validate-model")
    raw = unet_card.to_json() | {"default": False}
    raw["training"] = dict(raw["training"], split={"train": [], "validation": [cropped_sample.name]})
    raw.pop("postprocess", None)
    (folder / f"{unet_card.id}.json").write_text(json.dumps(raw))
    shutil.copy(unet_card.weights_path, folder / unet_card.weights_path.name)
    return ModelCard.read(folder / f"{unet_card.id}.json"), cropped_sample.parent


@pytest.fixture(scope="module")
def one_case_result(one_case_card):
    """``validate`` of the one-case card in fp32, with the variant without clean-up scored too (computed once: the
    tests below compare with it)."""
    card, data = one_case_card
    return validate([card], data, precision="fp32", variants={"none": POSTPROCESS_VARIANTS["none"]})


def test_variants_score_the_same_raw_labels(one_case_card):
    card, data = one_case_card
    result = validate([card], data, precision="fp32", variants=POSTPROCESS_VARIANTS)
    assert set(result["postprocess"]) == set(POSTPROCESS_VARIANTS)
    assert result["postprocess"]["none"] == pytest.approx(result["dice"], abs=1e-4)  # the card has no clean-up
    assert result["dice"]["WT"] > 0.8
    assert result["postprocess"]["keep largest"]["WT"] >= result["dice"]["WT"] - 0.05


def test_write_stores_the_result_in_the_card(one_case_card, capsys):
    card, data = one_case_card
    assert main(["--model", card.id, "--models-dir", str(card.path.parent), "--data", str(data), "--write"]) == 0
    stored = json.loads(card.path.read_text())["validation"]
    assert list(stored["per_case"]) == card.training["split"]["validation"]
    assert stored["dice"]["WT"] > 0.8
    assert stored["seconds_per_case"] > 0
    assert "mean" in capsys.readouterr().out


def test_choose_postprocess_adopts_the_best_variant_from_the_same_pass(one_case_card, tmp_path, capsys):
    card, data = one_case_card
    folder = tmp_path / "models"
    folder.mkdir()
    for source in (card.path, card.weights_path):
        shutil.copy(source, folder / source.name)
    arguments = ["--model", card.id, "--models-dir", str(folder), "--data", str(data), "--precision", "fp32"]
    assert main([*arguments, "--choose-postprocess", "--write"]) == 0
    stored = ModelCard.read(folder / card.path.name)
    means = stored.validation["postprocess_comparison"]
    assert set(means) == set(POSTPROCESS_VARIANTS)
    name = stored.validation["postprocess_choice"].split(":")[0]
    assert sum(means[name].values()) == max(sum(scores.values()) for scores in means.values())
    chosen = {k: v for k, v in POSTPROCESS_VARIANTS[name].to_dict().items() if v}
    assert stored.postprocess == chosen
    assert stored.validation["dice"] == means[name] and stored.validation["dice_before_clean_up"] == means["none"]
    assert f"chosen clean-up: {name}" in capsys.readouterr().out
    assert main([*arguments]) == 0  # the card's new clean-up, run through the shipping path, gives the stored Dice
    mean_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mean"))
    assert [float(v) for v in mean_line.split()[2::2]] == pytest.approx(list(means[name].values()), abs=1e-4)


def test_ensemble_of_a_model_with_itself_scores_as_the_model(one_case_card, one_case_result):
    card, data = one_case_card
    pair = validate([card, card], data, precision="fp32")
    assert pair["per_case"] == one_case_result["per_case"] and pair["dice"]["WT"] > 0.8


def test_an_ensemble_card_is_validated_through_its_members_and_stores_its_own_result(one_case_card, one_case_result, capsys):
    card, data = one_case_card
    path = card.path.parent / "pair.json"
    path.write_text(json.dumps({"id": "pair", "architecture": "ensemble", "members": [card.id, card.id]}))
    arguments = ["--model", "pair", "--models-dir", str(card.path.parent), "--data", str(data), "--precision", "fp32"]
    assert main([*arguments, "--write"]) == 0
    stored = ModelCard.read(path)
    assert stored.is_ensemble and stored.validation["cases"] == 1
    assert stored.validation["per_case"] == one_case_result["per_case"]
    assert "mean" in capsys.readouterr().out


def test_ensemble_members_must_share_a_validation_split(one_case_card, tmp_path, capsys):
    card, data = one_case_card
    raw = card.to_json()
    raw.update(id="other", default=False)
    raw["training"] = dict(raw["training"], split={"train": [], "validation": ["Brats18_elsewhere_1"]})
    (tmp_path / "other.json").write_text(json.dumps(raw))
    shutil.copy(card.weights_path, tmp_path / card.weights_path.name)
    folders = ["--models-dir", str(card.path.parent), "--models-dir", str(tmp_path)]
    assert main(["--model", f"{card.id},other", *folders, "--data", str(data)]) == 2
    error = capsys.readouterr().err
    assert error == f"brain-tumor-seg validate: error: {card.id},other: the models have different validation splits\n"
    with pytest.raises(SystemExit):
        main(["--model", f"{card.id},other", *folders, "--data", str(data), "--write"])
    assert "give one --model" in capsys.readouterr().err


def test_the_truth_is_read_in_the_convention_the_card_was_trained_with(one_case_card, one_case_result, tmp_path):
    """A cohort labelled the BraTS 2023 way (ET = 3) scores as the same cohort labelled the 2017 way (ET = 4)."""
    card, data = one_case_card
    (case,) = card.training["split"]["validation"]
    shutil.copytree(data / case, tmp_path / "data" / case)
    truth = truth_file(tmp_path / "data" / case)
    image = sitk.ReadImage(str(truth))
    relabelled = sitk.GetImageFromArray(to_convention(from_convention(sitk.GetArrayFromImage(image)), "brats2023"))
    relabelled.CopyInformation(image)
    sitk.WriteImage(relabelled, str(truth))
    raw = card.to_json()
    raw["training"] = dict(raw["training"], label_convention="brats2023")
    (tmp_path / f"{card.id}.json").write_text(json.dumps(raw))
    shutil.copy(card.weights_path, tmp_path / card.weights_path.name)
    relabelled_card = ModelCard.read(tmp_path / f"{card.id}.json")
    expected = one_case_result["per_case"]
    assert validate([relabelled_card], tmp_path / "data", precision="fp32")["per_case"] == expected
    with pytest.raises(InputError) as error:  # the 2017 reading of the same files: a one-line error naming the file
        validate([card], tmp_path / "data", precision="fp32")
    assert str(error.value) == f"{truth}: label values [3] are not in the brats2017 convention (0, (1, 2, 4))"


@pytest.fixture
def deferred_card(one_case_card, one_case_result, tmp_path):
    """A copy of the one-case card as `train --defer-fp16-check` leaves it (fp16 weights, fp32 training), and the
    Dice before clean-up that the check will measure."""
    card, data = one_case_card
    measured = one_case_result
    raw = card.to_json()
    raw["training"] = dict(raw["training"], precision="fp32")
    raw["validation"] = dict(raw["validation"], fp16_check=DEFERRED, dice_fp32=measured["postprocess"]["none"])
    (tmp_path / card.path.name).write_text(json.dumps(raw))
    shutil.copy(card.weights_path, tmp_path / card.weights_path.name)
    arguments = ["--model", card.id, "--models-dir", str(tmp_path), "--data", str(data)]
    return tmp_path / card.path.name, arguments, measured["postprocess"]["none"]


def test_a_deferred_fp16_check_is_settled_by_the_choosing_pass(deferred_card, capsys):
    path, arguments, _ = deferred_card
    assert main([*arguments, "--precision", "fp32", "--choose-postprocess", "--write"]) == 0
    stored = ModelCard.read(path).validation
    assert stored["weights_dtype"] == "float16"
    assert stored["fp16_check"].startswith("passed in `brain-tumor-seg validate`")
    assert "largest difference 0.0000" in stored["fp16_check"]  # the same weights, precision and case
    assert "fp16 check: passed" in capsys.readouterr().out


def test_a_failed_fp16_check_exits_1_and_leaves_the_card(deferred_card, capsys):
    path, arguments, measured = deferred_card
    raw = json.loads(path.read_text())
    raw["validation"]["dice_fp32"] = {**measured, "ET": measured["ET"] + 0.0125}
    path.write_text(json.dumps(raw))
    before = path.read_bytes()
    assert main([*arguments, "--precision", "fp32", "--choose-postprocess", "--write"]) == 1
    weights = path.with_name(raw["weights"])
    error = capsys.readouterr().err
    assert error.startswith(
        f"brain-tumor-seg validate: error: {weights}: fp16 weights move a Dice before clean-up by 0.0125 (> 0.005)"
    )
    assert error.endswith(f"copy the run's {weights.stem}-fp32.safetensors over this file and validate again\n")
    assert path.read_bytes() == before


def test_fp32_weights_need_no_fp16_check(deferred_card):
    path, arguments, _ = deferred_card
    raw = json.loads(path.read_text())
    weights = path.with_name(raw["weights"])
    save_file({k: v.float() for k, v in load_file(weights).items()}, weights)
    raw["validation"]["dice_fp32"] = {"WT": 0.0, "TC": 0.0, "ET": 0.0}  # not compared: nothing was rounded
    path.write_text(json.dumps(raw))
    assert main([*arguments, "--precision", "auto", "--tta", "x", "--write"]) == 0  # no setup to match either
    stored = ModelCard.read(path).validation
    assert stored["weights_dtype"] == "float32" and stored["fp16_check"] == "none needed: the weights are fp32"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (
            ["--precision", "fp32"],
            "its fp16 check is deferred to this command: add --choose-postprocess or --compare-postprocess",
        ),
        (["--precision", "auto", "--choose-postprocess"], None),
        (
            ["--precision", "fp32", "--choose-postprocess", "--tta", "x"],
            "its fp16 check compares with Dice measured without mirroring: validate with --tta none",
        ),
    ],
)
def test_a_deferred_fp16_check_refuses_a_pass_that_cannot_settle_it(deferred_card, capsys, options, problem):
    path, arguments, _ = deferred_card
    before = path.read_bytes()
    native = autocast_dtype(torch.device("cpu"), "auto")
    if problem is None:
        if native is None:
            pytest.skip("auto is fp32 on this CPU: the card's training precision")
        problem = "its fp16 check compares with Dice measured in fp32, not bfloat16: validate with --precision fp32"
    assert main([*arguments, *options, "--write"]) == 2
    assert capsys.readouterr().err == f"brain-tumor-seg validate: error: {path}: {problem}\n"
    assert path.read_bytes() == before


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_it_is_validated_with_a_warning(deferred_card, monkeypatch, caplog, capsys, native):
    """As `segment` warns: emulated bf16 takes several times the fp32 time, and a validation pass is long."""
    from BrainTumorSeg import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native)
    path, arguments, _ = deferred_card
    with caplog.at_level("WARNING"):
        assert main([*arguments, "--precision", "bf16", "--write"]) == 2  # refused (the deferred check), after the warning
    warned = "--precision bf16: this CPU has no native bf16, so PyTorch emulates it, several times slower than fp32"
    assert (warned in caplog.text) is not native, caplog.text
    assert capsys.readouterr().err.startswith(f"brain-tumor-seg validate: error: {path}: ")
