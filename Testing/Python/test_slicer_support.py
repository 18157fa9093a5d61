"""The Slicer-free helpers of the Slicer panel: input guessing, model tooltips, run options, progress lines, dependencies."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from BrainTumorSeg.case import NAME_SUFFIXES
from BrainTumorSeg.cli import build_parser, case_id_of
from BrainTumorSeg.cli_events import ProgressLineError, parse_progress_line, volume_rows
from BrainTumorSeg.dependencies import (
    TORCH_REQUIREMENT,
    installed_below,
    missing_requirements,
    read_requirements,
    requirements_file,
    torch_too_old,
)
from BrainTumorSeg.labels import SEGMENTS
from BrainTumorSeg.models.card import MODELS_ENV, ModelCard, available_models, get_model
from BrainTumorSeg.segment_choices import (
    Device,
    InferenceMode,
    Mirroring,
    Postprocessing,
    SegmentChoices,
    SliceAxis,
    device_argument,
    offered_models,
    segment_arguments,
)
from BrainTumorSeg.slicer_inputs import (
    assign_modalities,
    guess_modality,
    input_file_name,
    model_label,
    model_tooltip,
    repeated_input,
)

ROOT = Path(__file__).resolve().parents[2]
FILES = {m: f"/data/case_{m}.nrrd" for m in ("t1", "t1ce", "t2", "flair")}


# Which volume is which


def test_every_brats_file_name_ending_is_recognised():
    for modality, suffixes in NAME_SUFFIXES.items():
        for suffix in suffixes:
            assert guess_modality(f"Brats18_CBICA_AQP_1{suffix}") == modality
            assert guess_modality(f"BraTS-GLI-00001-000{suffix}.nii.gz") == modality


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("T1 post contrast", "t1ce"),
        ("T1_Gd", "t1ce"),
        ("t1c", "t1ce"),
        ("AX T2 FLAIR", "flair"),
        ("T2w", "t2"),
        ("T1w MPRAGE", "t1"),
        ("3: T1", "t1"),
        ("MRHead", None),
        ("CT chest", None),
        ("Segmentation", None),
    ],
)
def test_common_volume_names(name, modality):
    assert guess_modality(name) == modality


def test_each_volume_is_used_once_and_the_first_match_wins():
    names = [("v1", "case_flair"), ("v2", "case_t1ce"), ("v3", "other_t1ce"), ("v4", "case_t1"), ("v5", "MRHead")]
    assert assign_modalities(names) == {"flair": "v1", "t1ce": "v2", "t1": "v4"}


# Model selector


def test_one_volume_chosen_for_two_inputs_is_found():
    assert repeated_input({"t1": "vtkMRMLScalarVolumeNode1", "t1ce": "n2", "t2": "n3", "flair": "n4"}) is None
    assert repeated_input({"t1": "n1", "t1ce": "n2", "t2": "n1", "flair": "n2"}) == ("t1", "t2")
    assert repeated_input({"t1": "n1", "t1ce": "n2", "t2": "n3", "flair": "n2"}) == ("t1ce", "flair")


def test_exported_inputs_are_named_after_their_volumes():
    """The CLI names the outputs (and any error) after these files: the user's volume names, made safe."""
    assert input_file_name("Patient 7: T1 post-Gd", "t1ce") == "Patient_7_T1_post-Gd_t1ce.nrrd"
    assert input_file_name("../..", "t2") == "volume_t2.nrrd" and input_file_name("", "t1") == "volume_t1.nrrd"
    names = {input_file_name("Volume", m) for m in ("t1", "t1ce", "t2", "flair")}
    assert len(names) == 4  # four volumes of one name still get four files
    assert case_id_of(None, "/tmp/run/inputs/" + input_file_name("Patient 7 (2019)", "t1ce")) == "Patient_7_2019"


def test_model_tooltip_has_description_dice_and_cpu_time():
    cards = available_models()
    assert cards, "no bundled model card"
    for card in cards.values():
        tip = model_tooltip(card)
        assert card.description in tip
        for region, value in card.validation.get("dice", {}).items():
            assert f"{region} {value:.3f}" in tip
        assert "CPU time" in tip
    default = next(c for c in cards.values() if c.default)
    assert "(default)" in model_label(default)


def test_model_tooltip_shows_a_measured_cpu_time():
    card = next(iter(available_models().values()))
    card.validation = {"dice": {"WT": 0.9}, "seconds_per_case": 41.6}
    assert "about 42 s per case" in model_tooltip(card)


# Run options -> CLI arguments


def test_default_options_leave_the_choices_to_the_model_card():
    args = segment_arguments(FILES, "/out", SegmentChoices())
    assert args == [
        "segment",
        *[x for m in ("t1", "t1ce", "t2", "flair") for x in (f"--{m}", FILES[m])],
        "--out",
        "/out",
        "--device",
        "auto",
        "--progress",
        "json",
    ]


def test_every_option_value_is_accepted_by_the_real_cli_parser():
    parser = build_parser()
    for axis in SliceAxis:
        for mode in InferenceMode:
            for tta in Mirroring:
                for post in Postprocessing:
                    options = SegmentChoices(
                        model="unet2d-axial", device=Device.CPU, axis=axis, mode=mode, tta=tta, postprocess=post
                    )
                    parsed = parser.parse_args(segment_arguments(FILES, "/out", options))
                    assert parsed.t1ce == FILES["t1ce"] and parsed.model == "unet2d-axial"
                    assert (parsed.axis or "") == axis.value and (parsed.mode or "") == mode.value
                    assert (parsed.tta or "") == tta.value
    for device in Device:
        parser.parse_args(segment_arguments(FILES, "/out", SegmentChoices(device=device)))


def test_gpu_means_cuda_or_apple_mps():
    assert device_argument(Device.GPU, "linux") == "cuda"
    assert device_argument(Device.GPU, "win32") == "cuda"
    assert device_argument(Device.GPU, "darwin") == "mps"
    assert device_argument(Device.CPU, "darwin") == "cpu"


def test_all_four_inputs_are_required():
    with pytest.raises(ValueError, match="flair"):
        segment_arguments({k: v for k, v in FILES.items() if k != "flair"}, "/out", SegmentChoices())


def test_models_folders_become_models_dir_flags_the_cli_reads():
    args = segment_arguments(FILES, "/out", SegmentChoices(model="mine"), models_dirs=["/my models", Path("/other")])
    parsed = build_parser().parse_args(args)
    assert parsed.models_dir == ["/my models", "/other"] and parsed.model == "mine"
    assert "--models-dir" not in segment_arguments(FILES, "/out", SegmentChoices())


def test_enum_labels_are_what_the_combo_boxes_show():
    for enum_type in (Device, SliceAxis, InferenceMode, Mirroring, Postprocessing):
        labels = [member.label() for member in enum_type]
        assert all(labels) and len(set(labels)) == len(labels)


# The user's models folder (Advanced > Models folder)


@pytest.fixture
def bundled(monkeypatch) -> dict[str, ModelCard]:
    monkeypatch.delenv(MODELS_ENV, raising=False)
    return available_models()


def trained_model(folder: Path, model_id: str = "my-unet", weights: bool = True) -> Path:
    """A card and weights file as ``brain-tumor-seg train`` leaves them (the weights are not read here)."""
    card = next(c for c in available_models().values() if not c.is_ensemble)
    card.id, card.name, card.default, card.weights = model_id, "My U-Net", False, ""
    folder.mkdir(parents=True, exist_ok=True)
    card.write(folder / f"{model_id}.json")
    if weights:
        (folder / f"{model_id}.safetensors").write_bytes(b"weights")
    (folder / "losses.jsonl").write_text("{}\n")  # training also leaves its log there
    return folder


def test_no_models_folder_offers_the_bundled_models(bundled):
    offered = offered_models("")
    assert set(offered.cards) == set(bundled) and offered.folders == [] and offered.notes == []
    assert offered_models("  ").folders == []  # not the current directory


def test_a_trained_model_in_the_models_folder_is_offered_and_found_by_the_cli(bundled, tmp_path):
    folder = trained_model(tmp_path / "my models")
    offered = offered_models(str(folder))
    assert set(offered.cards) == set(bundled) | {"my-unet"}
    assert offered.folders == [folder] and offered.notes == []
    args = segment_arguments(FILES, "/out", SegmentChoices(model="my-unet"), models_dirs=offered.folders)
    parsed = build_parser().parse_args(args)
    assert get_model(parsed.model, parsed.models_dir).path == folder / "my-unet.json"


def test_a_folder_without_cards_leaves_the_bundled_models(bundled, tmp_path):
    (tmp_path / "notes.json").write_text('{"epochs": 3}')  # JSON that is not a model card
    offered = offered_models(tmp_path)
    assert set(offered.cards) == set(bundled) and offered.folders == []
    assert len(offered.notes) == 1 and "has no model cards (<id>.json)" in offered.notes[0]
    missing = offered_models(tmp_path / "absent")
    assert set(missing.cards) == set(bundled) and missing.folders == [] and "does not exist" in missing.notes[0]


def test_an_unreadable_card_is_left_out_with_a_note_and_the_others_are_offered(bundled, tmp_path):
    folder = trained_model(tmp_path)
    (folder / "broken.json").write_text('{"id": "broken", "architecture": "unet2d",')
    offered = offered_models(folder)
    assert set(offered.cards) == set(bundled) | {"my-unet"} and offered.folders == [folder]  # the CLI skips it too
    assert len(offered.notes) == 1 and "broken.json" in offered.notes[0] and "left out" in offered.notes[0]
    (folder / "my-unet.json").unlink()
    offered = offered_models(folder)  # nothing readable left: the folder is not passed on
    assert set(offered.cards) == set(bundled) and offered.folders == []
    assert "broken.json" in offered.notes[0] and "has no readable model cards" in offered.notes[1]


def test_a_card_the_selector_cannot_show_is_left_out_with_a_note(bundled, tmp_path):
    folder = trained_model(tmp_path)
    card = json.loads((folder / "my-unet.json").read_text())
    card |= {"id": "odd", "validation": {"dice": {"WT": "high"}}}
    (folder / "odd.json").write_text(json.dumps(card))
    offered = offered_models(folder)
    assert set(offered.cards) == set(bundled) | {"my-unet"} and offered.folders == [folder]
    assert len(offered.notes) == 1 and "odd.json" in offered.notes[0]


def test_a_card_without_weights_is_offered_with_a_note(bundled, tmp_path):
    offered = offered_models(trained_model(tmp_path, weights=False))
    assert "my-unet" in offered.cards and offered.folders == [tmp_path]
    assert len(offered.notes) == 1 and "my-unet.safetensors" in offered.notes[0]


def test_a_broken_card_in_the_environment_folder_breaks_nothing(tmp_path, monkeypatch):
    (tmp_path / "bad.json").write_text("not json")
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    offered = offered_models("")
    assert set(offered.cards) == set(available_models()) and "bad.json" in offered.notes[0]  # the bundled ones still


# Progress lines


def test_progress_line_round_trip_and_fraction():
    event = parse_progress_line('{"stage":"predict","done":500,"total":1000,"message":"model x: 73/146"}')
    assert (event.stage, event.done, event.total, event.message) == ("predict", 500, 1000, "model x: 73/146")
    assert 0.05 < event.fraction < 0.85
    final = parse_progress_line(
        json.dumps({"stage": "done", "done": 1, "total": 1, "message": "", "outputs": {"labels": "a"}, "volumes_ml": {"WT": 3}})
    )
    assert final.finished and final.fraction == 1.0 and final.outputs == {"labels": "a"} and final.volumes_ml == {"WT": 3.0}
    assert parse_progress_line('{"stage":"load","done":0,"total":0}').fraction == 0.0


@pytest.mark.parametrize(
    "line",
    [
        "Segmented case in 3 s",
        "[1, 2]",
        '{"stage":"train","done":0,"total":1}',
        '{"stage":"load","done":"1","total":1}',
        '{"stage":"load","done":true,"total":1}',
        '{"stage":"load","done":-1,"total":1}',
        '{"stage":"done","done":1,"total":1,"outputs":["a"]}',
    ],
)
def test_lines_outside_the_contract_are_rejected(line):
    with pytest.raises(ProgressLineError):
        parse_progress_line(line)


def test_volume_rows_list_segments_by_name_then_regions():
    volumes = {"necrosis": 1.0, "edema": 2.0, "enhancing": 3.0, "WT": 6.0, "TC": 4.0, "ET": 3.0}
    rows = volume_rows(volumes, {s.key: s.name for s in SEGMENTS})
    assert [label for label, _ in rows[:3]] == [s.name for s in SEGMENTS]
    assert [ml for _, ml in rows] == [1.0, 2.0, 3.0, 6.0, 4.0, 3.0]
    assert rows[3][0].endswith("(WT)")


# Dependencies


def pyproject_dependencies() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in deps}


def test_requirements_txt_is_pyproject_minus_torch_and_slicers_simpleitk():
    listed = {name: f"{name}>={floor}" for name, floor in read_requirements()}
    expected = {name: spec for name, spec in pyproject_dependencies().items() if name not in ("torch", "SimpleITK")}
    assert listed == expected
    assert requirements_file() == ROOT / "Resources" / "requirements.txt"


def test_torch_floor_matches_pyproject():
    assert pyproject_dependencies()["torch"] == "torch" + TORCH_REQUIREMENT


def test_missing_requirements_finds_absent_and_too_old_packages(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nnumpy>=1.0\nnumpy>=999.0\nno-such-package-btseg>=1.0\n\npytest\n")
    assert missing_requirements(path) == ["numpy>=999.0", "no-such-package-btseg>=1.0"]
    path.write_text("numpy<2\n")
    with pytest.raises(ValueError, match="line 1"):
        missing_requirements(path)


def test_installed_below_reports_only_an_installed_version_under_the_floor():
    assert installed_below("numpy", "999.0") is not None
    assert installed_below("numpy", "1.0") is None
    assert installed_below("no-such-package-btseg", "1.0") is None
    assert torch_too_old() is None  # this environment meets the floor (or has no torch)


def test_everything_is_installed_here():
    assert missing_requirements() == []


def test_what_the_slicer_module_imports_needs_no_torch_or_other_dependency():
    """At Slicer start-up PyTorch, MONAI, nibabel... may not be installed yet: the module must import without them."""
    imports = re.findall(r"^from (BrainTumorSeg[\w.]*) import", (ROOT / "BrainTumorSegmentation.py").read_text(), re.M)
    assert len(imports) >= 5
    code = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in imports)
        + "heavy = {'torch', 'monai', 'nibabel', 'SimpleITK', 'scipy', 'safetensors', 'nrrd', 'matplotlib'}\n"
        + "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


# Extension metadata and catalog entry


def cmake_value(name: str) -> str:
    match = re.search(rf'set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text())
    assert match, name
    return match.group(1)


def test_extension_metadata_is_complete():
    for name in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert cmake_value(f"EXTENSION_{name}").strip(), name
    assert cmake_value("EXTENSION_DEPENDS") == "PyTorch"
    raw = "https://raw.githubusercontent.com/BrainTumorSeg/SlicerBrainTumorSegmentation/main/"
    for url in [cmake_value("EXTENSION_ICONURL"), *cmake_value("EXTENSION_SCREENSHOTURLS").split()]:
        assert url.startswith(raw) and (ROOT / url.removeprefix(raw)).is_file(), url


def test_module_self_test_and_generic_tests_are_registered():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in text
    assert re.search(r"if\(BUILD_TESTING\)\s+(#[^\n]*\n\s*)*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    assert "class BrainTumorSegmentationTest(ScriptedLoadableModuleTest)" in (ROOT / "BrainTumorSegmentation.py").read_text()


def test_extensions_index_entry_matches_the_build():
    entry = json.loads((ROOT / "ExtensionsIndex" / "BrainTumorSegmentation.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies", "build_subdirectory"}
    allowed |= {"dicom_support_rule", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert re.search(r"slicer-extension-catalog-entry-schema-v\d+\.\d+\.\d+\.json#$", entry["$schema"])
    assert entry["category"] == cmake_value("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_value("EXTENSION_DEPENDS").split(";")
    assert entry["scm_url"].removesuffix(".git") == cmake_value("EXTENSION_HOMEPAGE")
    assert 1 <= entry["tier"] <= 5


def test_an_ensemble_card_is_offered_only_when_its_members_are_found(bundled, tmp_path):
    folder = trained_model(tmp_path)
    shipped = next(c.id for c in bundled.values() if not c.is_ensemble)
    for model_id, members in (("mine-and-shipped", ["my-unet", shipped]), ("half-missing", ["my-unet", "absent"])):
        card = {"id": model_id, "architecture": "ensemble", "members": members, "name": model_id, "description": "two"}
        (folder / f"{model_id}.json").write_text(json.dumps(card))
    offered = offered_models(folder)
    assert set(offered.cards) == set(bundled) | {"my-unet", "mine-and-shipped"} and offered.folders == [folder]
    assert len(offered.notes) == 1 and "half-missing" in offered.notes[0] and "'absent' not found" in offered.notes[0]
    assert f"Ensemble of: my-unet, {shipped}" in model_tooltip(offered.cards["mine-and-shipped"])
