"""Ensemble cards (models/ensemble.py): one model id that runs several networks and averages them.

A shipped one, run by its id, must give exactly what its members give when named together
(``--model a,b``) with the ensemble card's own clean-up, and record its own id.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from BrainTumorSeg.cli import main
from BrainTumorSeg.errors import InputError
from BrainTumorSeg.models.card import MODELS_ENV, ModelCard, available_models
from BrainTumorSeg.models.ensemble import member_cards
from BrainTumorSeg.postprocess import PostprocessOptions

PREFIX = "brain-tumor-seg: error: "


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)


def shipped_ensemble() -> ModelCard:
    """The shipped ensemble card with the fewest members, the default model first among equals (the others with two
    members run the 3D SegResNet, four times slower)."""
    return min((c for c in available_models().values() if c.is_ensemble), key=lambda c: (len(c.members), not c.default))


def clean_up_flags(card: ModelCard) -> list[str]:
    """CLI flags that turn on exactly ``card``'s clean-up, starting from none."""
    flags = ["--postprocess", "none"]
    for name, value in PostprocessOptions.from_dict(card.postprocess).to_dict().items():
        if value is True:
            flags.append(f"--{name.replace('_', '-')}")
        elif value not in (False, None, 0, 0.0):
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def segment(folder: Path, out: Path, *flags: str) -> tuple[np.ndarray, dict]:
    assert main(["segment", "--input", str(folder), "--out", str(out), "--precision", "fp32", *flags]) == 0
    labels = np.asarray(nib.load(out / f"{folder.name}_seg.nii.gz").dataobj)
    return labels, json.loads((out / f"{folder.name}_volumes.json").read_text())


def test_an_ensemble_card_equals_its_members_named_together_with_its_clean_up(tumor_block, tmp_path, capsys):
    card = shipped_ensemble()
    assert card.postprocess  # its own clean-up, chosen by `validate --choose-postprocess`
    members = [m.id for m in member_cards(card)]
    labels, info = segment(tumor_block, tmp_path / "ensemble", "--model", card.id)
    named, named_info = segment(tumor_block, tmp_path / "named", "--model", ",".join(members), *clean_up_flags(card))
    np.testing.assert_array_equal(labels, named)
    assert info["model"] == card.id and named_info["model"] == "+".join(members)
    assert info["models"] == named_info["models"] == members
    assert info["postprocess"] == named_info["postprocess"]
    first, _ = segment(tumor_block, tmp_path / "first", "--model", members[0], *clean_up_flags(card))
    assert np.count_nonzero(first != labels) > 100  # the other members change the result: they really run
    assert f"with model {card.id} in" in capsys.readouterr().out


def write_card(folder: Path, card: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{card['id']}.json"
    path.write_text(json.dumps(card))
    return path


@pytest.mark.parametrize(
    "members, problem",
    [
        (["unet2d-axial", "absent"], "ensemble member 'absent' not found; available: "),
        (["unet2d-axial", "inner"], "ensemble member 'inner' is itself an ensemble"),
        ([], 'an ensemble card needs "members": a list of model ids'),
    ],
)
def test_a_bad_ensemble_card_is_one_line_naming_the_card(tmp_path, capsys, members, problem):
    folder = tmp_path / "models"
    write_card(folder, {"id": "inner", "architecture": "ensemble", "members": ["unet2d-axial"]})
    path = write_card(folder, {"id": "outer", "architecture": "ensemble", "members": members})
    out = tmp_path / "out"
    code = main(["segment", "--sample", "--models-dir", str(folder), "--model", "outer", "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert error.startswith(f"{PREFIX}{path}: {problem}") and "\n" not in error, error


def test_a_network_card_without_its_network_fields_is_not_a_card(tmp_path):
    path = write_card(tmp_path, {"id": "half", "architecture": "unet2d", "config": {}, "inputs": {}})
    with pytest.raises(InputError, match="not a valid model card \\(missing 'outputs', 'inference'\\)"):
        ModelCard.read(path)


def test_a_broken_card_is_left_out_with_a_warning_and_is_an_error_when_asked_for(tmp_path, capsys, caplog):
    """One broken card does not stop other models; asking for it names the file and the problem. Other JSON files
    beside the cards (a training log) are not cards at all."""
    path = write_card(tmp_path, {"id": "mine", "config": {}, "inputs": {}, "outputs": {}, "inference": {}})
    (tmp_path / "history.json").write_text(json.dumps({"step": 3, "loss": 0.2}))
    problem = f"{path}: not a valid model card (missing 'architecture')"
    with caplog.at_level("WARNING"):
        assert main(["models", "--models-dir", str(tmp_path)]) == 0
    assert caplog.messages == [f"brain-tumor-seg: warning: {problem}; that model is left out"]  # stderr in a shell
    printed = capsys.readouterr().out
    assert "unet2d-multiview" in printed and "mine" not in printed
    out = tmp_path / "out"
    assert main(["segment", "--sample", "--models-dir", str(tmp_path), "--model", "mine", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"{PREFIX}{problem}"
    assert not out.exists()


def test_a_broken_user_card_never_falls_back_to_the_bundled_model_of_its_id(tmp_path, capsys):
    (tmp_path / "unet2d-axial.json").write_text('{"id": "unet2d-axial", ')  # a half-written card of a bundled id
    out = tmp_path / "out"
    assert main(["segment", "--sample", "--models-dir", str(tmp_path), "--model", "unet2d-axial", "--out", str(out)]) == 2
    assert main(["segment", "--sample", "--models-dir", str(tmp_path), "--out", str(out)]) == 2  # the default uses it
    errors = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith(PREFIX)]
    assert len(errors) == 2 and all(f"{tmp_path / 'unet2d-axial.json'}: not a valid model card" in e for e in errors)
    assert not out.exists()


BAD_CONFIGURATIONS = {
    "no levels": ({"features": []}, "features must be a non-empty list of whole numbers of at least 1, got []"),
    "no width": ({"features": [16, 0]}, "features must be a non-empty list of whole numbers of at least 1, got [16, 0]"),
    "dropout": ({"dropout": 1.5}, "dropout must be a number from 0 up to but not including 1, got 1.5"),
    "unknown key": ({"featurs": [8]}, "UNet2D.__init__() got an unexpected keyword argument 'featurs'"),
}


@pytest.mark.parametrize("kind", list(BAD_CONFIGURATIONS))
def test_a_card_whose_configuration_builds_no_sensible_network_is_a_one_line_error(kind, tmp_path, capsys):
    change, problem = BAD_CONFIGURATIONS[kind]
    raw = json.loads((Path(available_models()["unet2d-axial"].path)).read_text())
    raw.update(id="mine", config={**raw["config"], **change})
    path = write_card(tmp_path, raw)
    out = tmp_path / "out"
    assert main(["segment", "--sample", "--models-dir", str(tmp_path), "--model", "mine", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"{PREFIX}{path}: not a valid unet2d configuration ({problem})"
    assert not out.exists()


def test_a_models_folder_that_is_not_there_is_an_error(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    out = tmp_path / "out"
    assert main(["segment", "--sample", "--models-dir", str(missing), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"{PREFIX}{missing}: models folder not found"
    assert not out.exists()


def test_an_ensemble_card_has_no_network_of_its_own():
    card = shipped_ensemble()
    with pytest.raises(ValueError, match=f"model {card.id} is an ensemble of"):
        card.build()
    assert "config" not in card.to_json() and card.to_json()["members"] == card.members
