"""The inference engine on the real sample: modes, ensembles, progress, cancel, probabilities, device fallback."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from BrainTumorSeg import pipeline
from BrainTumorSeg.case import resolve_inputs
from BrainTumorSeg.errors import InputError
from BrainTumorSeg.geometry import Reorientation
from BrainTumorSeg.inference import predict_window, window_count
from BrainTumorSeg.models.card import ModelCard
from BrainTumorSeg.models.registry import save_weights
from BrainTumorSeg.pipeline import (
    InferenceOptions,
    Member,
    RunOptions,
    inference_record,
    inference_settings,
    predict_with_card,
    segment,
    segment_to_folder,
    with_cpu_fallback,
)
from BrainTumorSeg.postprocess import PostprocessOptions, postprocess, probabilities_to_labels
from BrainTumorSeg.preprocess import prepare, prepare_case
from BrainTumorSeg.progress import Cancelled, ProgressEvent, RunControl

ROOT = Path(__file__).resolve().parents[2]


def tiny_card(tmp: Path, model_id: str, architecture: str, config: dict, outputs: dict, inference: dict) -> ModelCard:
    """A small untrained model written to ``tmp`` (card + safetensors): for mechanics, not quality."""
    raw = {
        "id": model_id,
        "architecture": architecture,
        "config": config,
        "inputs": {"modalities": ["t1", "t1ce", "t2", "flair"], "context_slices": 0},
        "outputs": outputs,
        "inference": inference,
    }
    path = tmp / f"{model_id}.json"
    path.write_text(json.dumps(raw))
    card = ModelCard.read(path)
    torch.manual_seed(0)
    save_weights(card.build(), card.weights_path)
    return card


REGIONS = {"type": "regions", "channels": ["WT", "TC", "ET"], "threshold": 0.5}
CLASSES = {"type": "classes", "labels": [0, 1, 2, 3]}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, ModelCard]:
    tmp = tmp_path_factory.mktemp("engine-models")
    return {
        "unet-classes": tiny_card(
            tmp, "tiny-classes", "unet2d", {"in_channels": 4, "out_channels": 4, "features": [4, 8]}, CLASSES, {"mode": "slices"}
        ),
        "segresnet": tiny_card(
            tmp,
            "tiny-3d",
            "segresnet",
            {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1], "dropout_prob": None},
            REGIONS,
            {"mode": "window", "spatial_dims": 3, "window": [64, 64, 64], "overlap": 0.25},
        ),
    }


@pytest.fixture(scope="module")
def prepared_sample(sample_case):
    return prepare(Reorientation.of(sample_case.reference).to_canonical(sample_case.data))


@pytest.fixture(scope="module")
def small_case(cropped_sample):
    """The real sample cropped around its tumor (128 x 160 x 100 voxels), to keep whole-pipeline tests quick."""
    return resolve_inputs(cropped_sample)


@pytest.fixture(scope="module")
def small_raw_labels(small_case, unet_card, unet_network) -> np.ndarray:
    """The axial U-Net alone on the small case before clean-up, written out step by step (not through the engine)."""
    orientation = Reorientation.of(small_case.reference)
    prepared = prepare(orientation.to_canonical(small_case.data))
    probabilities = predict_with_card(unet_card, unet_network, prepared.data, torch.device("cpu"), None)
    labels = probabilities_to_labels(probabilities, unet_card.outputs, prepared.mask)
    return orientation.from_canonical(prepared.crop.paste(labels))


@pytest.fixture(scope="module")
def small_labels(small_case, unet_card, small_raw_labels) -> np.ndarray:
    """... and after the clean-up its card asks for."""
    clean_up = PostprocessOptions.from_dict(unet_card.postprocess)
    return postprocess(small_raw_labels, clean_up, small_case.voxel_volume_ml, small_case.brain)


def test_sliding_window_with_one_tile_per_slice_equals_slice_wise(unet_card, unet_network, prepared_sample):
    """2D patch-wise inference whose tile covers the whole slice gives the slice-wise labels."""
    volume = prepared_sample.data[..., 50:90]
    cpu = torch.device("cpu")
    slices = predict_with_card(unet_card, unet_network, volume, cpu, None)
    window = InferenceOptions(mode="window", window=volume.shape[1:3], overlap=0.5)
    tiles = predict_with_card(unet_card, unet_network, volume, cpu, None, options=window)
    np.testing.assert_allclose(tiles, slices, atol=1e-5)
    assert np.array_equal(tiles > 0.5, slices > 0.5)


def test_sliding_window_with_overlapping_tiles_agrees_with_slice_wise(unet_card, unet_network, prepared_sample):
    """Smaller overlapping tiles blended by a gaussian change the labels of very few voxels."""
    volume = prepared_sample.data[..., 70:90]
    cpu = torch.device("cpu")
    slices = predict_with_card(unet_card, unet_network, volume, cpu, None) > 0.5
    window = InferenceOptions(mode="window", window=(112, 112), overlap=0.25)
    tiles = predict_with_card(unet_card, unet_network, volume, cpu, None, options=window) > 0.5
    assert (tiles != slices).mean() < 0.01
    assert tiles[0].sum() > 1000  # the slab holds tumor, so agreement is not just background


def test_3d_window_progress_counts_every_window(models, prepared_sample):
    card = models["segresnet"]
    volume = prepared_sample.data[:, :100, :90, :70]
    calls: list[tuple[int, int]] = []
    probabilities = predict_window(card.load(), volume, (64, 64, 64), 0.25, progress=lambda d, t: calls.append((d, t)))
    assert probabilities.shape == (3, *volume.shape[1:])
    assert calls[-1] == (window_count(volume.shape[1:], (64, 64, 64), 0.25),) * 2 == (8, 8)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_a_case_prepared_from_another_case_is_refused(small_case, unet_card, unet_network, sample_case):
    """Another case's input is refused, also one of the same size (a copy of the case with other voxels)."""
    run = [Member(unet_card, unet_network)], RunOptions("cpu", "fp32")
    message = r"^the prepared input was not made from this case's volumes \(preprocess.prepare_case\)$"
    with pytest.raises(ValueError, match=message):
        segment(small_case, *run, prepared=prepare_case(sample_case))
    with pytest.raises(ValueError, match=message):
        segment(replace(small_case, data=small_case.data * 2), *run, prepared=prepare_case(small_case))


def test_ensemble_of_one_model_equals_that_model(small_case, unet_card, unet_network, small_labels):
    assert small_labels[small_labels == 3].size > 1000  # the crop holds the tumor
    one = segment(small_case, [Member(unet_card, unet_network)], RunOptions("cpu", "fp32"))
    assert np.array_equal(one.labels, small_labels)
    twice = segment(small_case, [Member(unet_card, unet_network)] * 2, RunOptions("cpu", "fp32"))
    assert np.array_equal(twice.labels, small_labels)


def test_ensemble_of_region_and_class_models_averages_regions(small_case, unet_card, unet_network, models):
    classes = models["unet-classes"]
    members = [Member(unet_card, unet_network), Member(classes, classes.load())]
    result = segment(small_case, members, RunOptions("cpu", "fp32", probabilities=True))
    assert result.models == [unet_card.id, classes.id]
    assert result.labels.shape == result.probabilities.shape[1:]
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1, atol=1e-4)


def test_progress_is_monotonic_per_stage_and_ends_at_total(small_case, unet_card, unet_network):
    events: list[ProgressEvent] = []
    options = RunOptions("cpu", "fp32", InferenceOptions(flips="x"))
    segment(small_case, [Member(unet_card, unet_network)], options, RunControl(events.append))
    stages = [e.stage for e in events]
    assert stages == sorted(stages, key=["predict", "postprocess"].index)
    predict = [e for e in events if e.stage == "predict"]
    assert [e.done for e in predict] == sorted(e.done for e in predict)
    assert len(predict) > 6 and predict[-1].done == predict[-1].total == 2000  # two passes (mirroring)
    assert {e.total for e in predict} == {2000}
    assert events[-1] == ProgressEvent("postprocess", 1, 1, "labels and clean-up")


def test_cancel_stops_within_a_second_and_writes_nothing(sample_case, unet_card, unet_network, tmp_path):
    out = tmp_path / "out"
    first_batch = threading.Event()
    control = RunControl(lambda e: first_batch.set() if e.stage == "predict" and e.done > 0 else None)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            segment_to_folder(
                sample_case, [Member(unet_card, unet_network)], out, "case", options=RunOptions("cpu"), control=control
            )
        except Cancelled as error:
            outcome["error"] = error
        outcome["ended"] = time.perf_counter()

    worker = threading.Thread(target=run)
    worker.start()
    assert first_batch.wait(60)
    cancelled_at = time.perf_counter()
    control.cancel()
    worker.join(30)
    assert isinstance(outcome.get("error"), Cancelled)
    assert outcome["ended"] - cancelled_at < 1.0
    assert not out.exists()


def test_cancel_while_writing_leaves_nothing(small_case, unet_card, unet_network, tmp_path):
    """A cancel that arrives once the write stage has begun still discards every staged file: nothing appears."""
    out = tmp_path / "new" / "out"
    control = RunControl(lambda event: control.cancel() if event.stage == "write" else None)
    with pytest.raises(Cancelled):
        segment_to_folder(small_case, [Member(unet_card, unet_network)], out, "case", options=RunOptions("cpu"), control=control)
    assert list(tmp_path.iterdir()) == []


def test_progress_stays_monotonic_when_a_pass_reruns_on_the_cpu(monkeypatch, unet_card, unet_network, caplog):
    """The CPU fallback runs a pass again from the start; the reported counter holds still until it passes its mark."""
    devices: list[str] = []

    def fake_predict(card, network, volume, device, dtype, progress, options):
        devices.append(device.type)
        for done in range(1, 5):
            progress(done, 4)
            if device.type != "cpu" and done == 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.zeros((3, *volume.shape[1:]), np.float32)

    monkeypatch.setattr(pipeline, "predict_with_card", fake_predict)
    events: list[ProgressEvent] = []
    control = RunControl(events.append)
    for_pass = control.steps("predict", 2, str)
    settings = inference_settings(unet_card, InferenceOptions(flips="x"))
    volume = np.zeros((4, 8, 8, 8), np.float32)
    with caplog.at_level("WARNING"):
        pipeline.predict_member(Member(unet_card, unet_network), settings, volume, torch.device("cuda"), "fp32", for_pass)
    assert devices == ["cuda", "cpu", "cpu"]  # the first pass ran out of memory at 3 of 4, then both passes on the CPU
    done = [event.done for event in events]
    assert done == sorted(done) and done[-1] == events[-1].total == 2000
    assert done[:6] == [250, 500, 750, 750, 750, 750]  # the rerun's 1/4 and 2/4 and 3/4 do not move it back


def test_probabilities_and_uncertainty_are_written_on_the_reference_grid(small_case, unet_card, unet_network, tmp_path):
    result, paths = segment_to_folder(
        small_case,
        [Member(unet_card, unet_network)],
        tmp_path,
        "case",
        options=RunOptions("cpu", "fp32", postprocess=PostprocessOptions(), probabilities=True),  # raw labels
    )
    probabilities = nib.load(paths["probabilities"])
    uncertainty = nib.load(paths["uncertainty"])
    size = small_case.reference.GetSize()
    assert probabilities.shape == (*size, 4) and uncertainty.shape == size
    values = np.asarray(probabilities.dataobj).transpose(3, 2, 1, 0)  # (class, k, j, i) like the label map
    np.testing.assert_allclose(values.sum(axis=0), 1, atol=4 * 3.1e-5)
    enhancing = result.labels == 3
    assert enhancing.any() and (values[3][enhancing] > 0.5).all()  # ET is decided by its own probability
    np.testing.assert_allclose(values, result.probabilities, rtol=0, atol=0.5 / 32767 + 1e-6)  # 16-bit steps, no more
    entropy = np.asarray(uncertainty.dataobj).transpose(2, 1, 0)
    p = np.clip(result.probabilities.astype(np.float64), 1e-7, 1)
    np.testing.assert_allclose(entropy, -(p * np.log(p)).sum(axis=0) / np.log(4), rtol=0, atol=0.5 / 32767 + 1e-6)
    assert entropy[result.labels == 0].mean() < entropy[result.labels > 0].mean()
    info = json.loads(paths["volumes"].read_text())
    assert info["outputs"]["probabilities"] == str(paths["probabilities"])
    assert info["postprocess"] == result.postprocess.to_dict() and info["models"] == [unet_card.id]


def test_a_rerun_without_optional_outputs_removes_the_earlier_ones(small_case, unet_card, unet_network, tmp_path):
    """Probabilities of an earlier run never sit beside labels they did not come from; other files stay."""
    members = [Member(unet_card, unet_network)]
    _, first = segment_to_folder(small_case, members, tmp_path, "case", options=RunOptions("cpu", probabilities=True))
    assert first["probabilities"].is_file() and first["uncertainty"].is_file()
    (tmp_path / "notes.txt").write_text("the user's own file\n")
    _, second = segment_to_folder(small_case, members, tmp_path, "case", options=RunOptions("cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*(p.name for p in second.values()), "notes.txt"])
    assert set(json.loads(second["volumes"].read_text())["outputs"]) == {"labels", "segmentation", "volumes"}


def test_keep_largest_only_removes_tumor(small_case, unet_card, unet_network, small_raw_labels):
    options = RunOptions("cpu", "fp32", postprocess=PostprocessOptions(keep_largest=True))
    kept = segment(small_case, [Member(unet_card, unet_network)], options).labels
    assert ((kept > 0) <= (small_raw_labels > 0)).all()  # only removes tumor
    assert np.array_equal(kept[kept > 0], small_raw_labels[kept > 0])


def test_cpu_fallback_when_the_gpu_runs_out_of_memory(caplog):
    devices: list[str] = []

    def run(device: torch.device) -> np.ndarray:
        devices.append(device.type)
        if device.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.zeros(1)

    with caplog.at_level("WARNING"):
        _, ran_on = with_cpu_fallback(run, torch.device("cuda"))
    assert devices == ["cuda", "cpu"] and ran_on.type == "cpu"
    assert "the cuda device ran out of memory; continuing on the CPU" in caplog.text
    with pytest.raises(RuntimeError, match="illegal memory access"):  # other GPU errors are not hidden
        with_cpu_fallback(lambda d: (_ for _ in ()).throw(RuntimeError("illegal memory access")), torch.device("cuda"))


@pytest.mark.parametrize("native", [False, True])
def test_half_precision_on_a_cpu_without_it_is_run_with_a_warning(
    monkeypatch, cropped_sample, tiny_models_dir, tmp_path, caplog, native
):
    """PyTorch emulates bf16 on a CPU without AVX-512 BF16 or AMX: nine times slower than fp32 here, worth a word."""
    from BrainTumorSeg import device
    from BrainTumorSeg.cli import main

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native)
    arguments = ["segment", "--input", str(cropped_sample), "--out", str(tmp_path), "--models-dir", str(tiny_models_dir)]
    with caplog.at_level("WARNING"):
        assert main([*arguments, "--device", "cpu", "--precision", "bf16"]) == 0
    warned = "--precision bf16: this CPU has no native bf16, so PyTorch emulates it, several times slower than fp32"
    assert (warned in caplog.text) is not native, caplog.text


def test_ensemble_members_after_a_gpu_ran_out_of_memory_stay_on_the_cpu(monkeypatch, small_case, unet_card, unet_network, caplog):
    """Once one member fell back to the CPU, the next members do not try the GPU again (one warning, not one each)."""
    devices: list[str] = []

    def fake_predict(card, network, volume, device, dtype, progress, options):
        devices.append(device.type)
        if device.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.zeros((3, *volume.shape[1:]), np.float32)

    monkeypatch.setattr(pipeline, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(pipeline, "predict_with_card", fake_predict)
    members = [Member(unet_card, unet_network)] * 3
    with caplog.at_level("WARNING"):
        segment(small_case, members, RunOptions("cuda", "fp32"))
    assert devices == ["cuda", "cpu", "cpu", "cpu"]
    assert caplog.text.count("ran out of memory") == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            InferenceOptions(mode="window", window=(64,)),
            "--window: model unet2d-axial is a 2D network; the window needs 2 positive sizes",
        ),
        (InferenceOptions(mode="window", overlap=1.0), "--overlap: overlap must be at least 0 and below 1"),
        (InferenceOptions(overlap=-0.5), "--overlap: overlap must be at least 0 and below 1"),  # in any mode
    ],
)
def test_bad_inference_options_name_the_option(unet_card, options, message):
    with pytest.raises(InputError) as error:
        inference_settings(unet_card, options)
    assert str(error.value) == message


@pytest.mark.parametrize("margin", [-1, 2.5, "16", True])
def test_a_cards_box_margin_is_a_number_of_pixels_or_null(unet_card, margin):
    card = replace(unet_card, inference={**unet_card.inference, "box_margin": margin})
    with pytest.raises(InputError) as error:
        inference_settings(card)
    assert str(error.value) == f"{card.path}: inference.box_margin must be a number of pixels (0 or more) or null, not {margin!r}"
    assert inference_settings(replace(card, inference={**card.inference, "box_margin": None}))["box_margin"] is None


def test_the_brain_box_is_recorded_where_it_can_change_labels_and_a_card_without_it_takes_its_networks_default():
    from BrainTumorSeg.models.card import get_model

    cards = [get_model(i) for i in ("unet2d-axial", "pspnet-axial", "twopathcnn-axial", "segresnet-3d")]
    assert {r["model"]: r["box_margin"] for r in inference_record(cards)} == {
        "unet2d-axial": 16,  # the U-Net's labels move a little with the box
        "pspnet-axial": None,  # its card: the whole crop
        "twopathcnn-axial": None,  # a patch classifier: the box cannot change its labels
        "segresnet-3d": None,  # window mode
    }
    unet, pspnet = (replace(c, inference={k: v for k, v in c.inference.items() if k != "box_margin"}) for c in cards[:2])
    assert inference_settings(unet)["box_margin"] == 16 and inference_settings(pspnet)["box_margin"] is None


def test_a_volumes_json_from_before_the_brain_box_is_redone_only_for_networks_it_changes():
    from BrainTumorSeg.batch import reasons_to_redo
    from BrainTumorSeg.models.card import get_model

    for model_id, reason in [("unet2d-axial", "other inference settings"), ("pspnet-axial", ""), ("twopathcnn-axial", "")]:
        now = inference_record([get_model(model_id)])
        earlier = [{k: v for k, v in record.items() if k != "box_margin"} for record in now]  # the earlier version's
        assert reasons_to_redo({"inference": earlier}, {"inference": now}, []) == reason, model_id


def test_3d_model_refuses_slice_mode(models):
    with pytest.raises(InputError) as error:
        inference_settings(models["segresnet"], InferenceOptions(mode="slices"))
    assert str(error.value) == "--mode: model tiny-3d is a 3D network and runs in window mode only"
