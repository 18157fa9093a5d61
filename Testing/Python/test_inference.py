"""Slice-wise inference on the real sample: 2.5D context, anatomical axes, test-time mirroring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from BrainTumorSeg.geometry import Reorientation
from BrainTumorSeg.inference import brain_box, context_stack, predict_slices, predict_with_flips
from BrainTumorSeg.models.card import AXES, ModelCard
from BrainTumorSeg.preprocess import prepare

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_network():
    torch.manual_seed(0)
    card = json.loads((ROOT / "training" / "unet2d-axial.json").read_text())
    card["config"]["features"] = [4, 8]
    return ModelCard(**{k: card[k] for k in ("id", "architecture", "config", "inputs", "outputs", "inference")}).build().eval()


@pytest.fixture(scope="module")
def volume(sample_case) -> np.ndarray:
    """The sample's prepared canonical volume, cut to 40 axial slices to keep the test quick."""
    data = prepare(Reorientation.of(sample_case.reference).to_canonical(sample_case.data)).data
    return data[..., 50:90]


def test_context_stack_orders_offsets_then_channels_and_repeats_edges():
    slices = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 2, 1, 1)  # slice s holds value s in both channels
    stacked = context_stack(slices, torch.tensor([0, 2, 4]), 1)
    assert stacked.shape == (3, 6, 1, 1)
    assert stacked[:, :, 0, 0].tolist() == [[0, 0, 0, 0, 1, 1], [1, 1, 2, 2, 3, 3], [3, 3, 4, 4, 4, 4]]


class Cut(torch.nn.Module):
    """A stand-in network whose output is a cut of its input (4 channels)."""

    def __init__(self, cut: tuple[slice, ...]) -> None:
        super().__init__()
        self.cut = cut

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return slices[self.cut]


@pytest.mark.parametrize(
    "cut",
    [(slice(0, 1), slice(0, 4)), (slice(None), slice(0, 4), slice(None), slice(0, 1))],
    ids=["one-output-per-batch", "one-pixel-wide"],
)
def test_a_network_without_one_output_per_slice_is_a_clear_error(volume, cut):
    with pytest.raises(ValueError, match=r"^the network maps slices \(16, 12, \d+, \d+\) to .*, not one output per slice$"):
        predict_slices(Cut(cut), volume, "axial", context=1)


def test_a_volume_without_slices_is_a_clear_error(tiny_network, volume):
    with pytest.raises(ValueError, match=r"^volume \(4, \d+, \d+, 0\) has no axial slice$"):
        predict_slices(tiny_network, volume[..., :0], "axial", context=1)


def test_batch_size_does_not_change_the_result(tiny_network, volume):
    one = predict_slices(tiny_network, volume, "axial", context=1, batch_size=40)
    many = predict_slices(tiny_network, volume, "axial", context=1, batch_size=7)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_slice_axis_is_anatomical(tiny_network, volume):
    """Coronal slicing of a volume equals axial slicing of the same volume with y and z swapped."""
    coronal = predict_slices(tiny_network, volume, "coronal", context=1)
    swapped = np.swapaxes(volume, 2, 3).copy()
    axial_of_swapped = predict_slices(tiny_network, swapped, "axial", context=1)
    np.testing.assert_allclose(coronal, np.swapaxes(axial_of_swapped, 2, 3), atol=1e-5)


@pytest.mark.parametrize(
    ("flips", "axes"), [("x", (1,)), ("xy", (1,)), ("xy", (2,)), ("xy", (1, 2))], ids=["x:x", "xy:x", "xy:y", "xy:xy"]
)
def test_tta_output_is_invariant_to_flipping_the_input(tiny_network, volume, flips, axes):
    """Mirroring the input along any of the averaged in-plane axes mirrors the output, and changes nothing else."""

    def predict(v: np.ndarray) -> np.ndarray:
        return predict_slices(tiny_network, v, "axial", context=1)

    direct = predict_with_flips(predict, volume, flips)
    mirrored = np.flip(predict_with_flips(predict, np.flip(volume, axes).copy(), flips), axes)
    np.testing.assert_allclose(direct, mirrored, atol=1e-6)
    plain = predict(volume)
    assert not np.allclose(plain, np.flip(predict(np.flip(volume, axes).copy()), axes), atol=1e-3)  # the network alone is not


def test_brain_box_widens_the_brain_by_the_margin_to_a_multiple_of_16():
    occupied = torch.zeros(3, 100, 120, dtype=torch.bool)
    occupied[1, 30:40, 50:55] = True
    assert brain_box(occupied, 4) == (slice(26, 58), slice(46, 62))  # 10 + 8 rows -> 32, 5 + 8 columns -> 16
    occupied[2, 98, 119] = True  # a pixel at the far corner: the box stays inside the slice, moved in to keep its size
    assert brain_box(occupied, 4) == (slice(20, 100), slice(40, 120))  # 69 + 8 -> 80, 70 + 8 -> 80
    assert brain_box(occupied, 200) == (slice(0, 100), slice(0, 120))
    assert brain_box(torch.zeros(2, 40, 8, dtype=torch.bool), 4) == (slice(0, 16), slice(0, 8))  # no brain: a corner


@pytest.fixture(scope="module")
def top_of_brain(sample_case) -> np.ndarray:
    """The sample's 8 highest axial slices of brain, where a slice's brain is much smaller than the brain crop."""
    return prepare(Reorientation.of(sample_case.reference).to_canonical(sample_case.data)).data[..., -8:]


def test_the_brain_box_keeps_a_patch_classifiers_dense_result_and_is_background_outside(top_of_brain):
    """The shipped TwoPathCNN (Havaei 2017) evaluated densely: on the brain's box its forward pads with the zeros the box
    dropped, so every brain pixel gets the whole slice's probabilities; outside the box it is certain background."""
    from BrainTumorSeg.models.card import get_model

    network = get_model("twopathcnn-axial").load()
    # two batches of two slices, each with brain (1995 + 1417 and 828 + 361 pixels of 132 x 166; the top two have none);
    # every pixel is a 33x33 patch's output, so four slices, not eight
    top = np.ascontiguousarray(top_of_brain[..., -8:-4])
    whole = predict_slices(network, top, "axial", output_type="classes", batch_size=2)
    boxed = predict_slices(network, top, "axial", output_type="classes", batch_size=2, box_margin=0)
    brain = (top != 0).any(axis=0)
    np.testing.assert_allclose(boxed[:, brain], whole[:, brain], atol=1e-5)
    occupied = torch.from_numpy(brain).movedim(2, 0)
    outside = np.ones(brain.shape, bool)
    for start in (0, 2):  # each batch's box
        rows, cols = brain_box(occupied[start : start + 2], 0)
        outside[rows, cols, start : start + 2] = False
    assert all(brain[..., start : start + 2].any() for start in (0, 2))
    assert outside.any() and (boxed[0][outside] == 1).all() and (boxed[1:][:, outside] == 0).all()


def test_the_brain_box_changes_a_unets_labels_little(unet_network, top_of_brain):
    """A U-Net's zero padding at the box's edge is not the background it saw around the brain crop: close, not equal."""
    whole = predict_slices(unet_network, top_of_brain, "axial", context=1, box_margin=None)
    boxed = predict_slices(unet_network, top_of_brain, "axial", context=1, box_margin=16)
    brain = (top_of_brain != 0).any(axis=0)
    assert ((whole > 0.5) == (boxed > 0.5))[:, brain].mean() > 0.998
    assert not np.array_equal(whole[:, brain], boxed[:, brain])


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_the_brain_box_holds_every_pixel_that_a_slice_or_its_context_has_brain_in(axis):
    """A pixel-wise network (a 1x1 convolution summing the slice and its neighbours) gives on each batch's box exactly
    what it gives on whole slices wherever the slice or a context neighbour has brain, on every axis and in a last,
    partial batch; elsewhere the box leaves certain background."""
    generator = np.random.default_rng(3)
    volume = np.zeros((2, 64, 56, 48), np.float32)
    for _ in range(6):  # small blobs of brain scattered through the volume, so each batch's box is its own
        corner = [int(generator.integers(0, n - 6)) for n in volume.shape[1:]]
        volume[:, corner[0] : corner[0] + 6, corner[1] : corner[1] + 6, corner[2] : corner[2] + 6] = generator.normal(
            1.0, 0.3, (2, 6, 6, 6)
        )
    network = torch.nn.Conv2d(6, 1, 1, bias=False)
    torch.nn.init.ones_(network.weight)
    whole = predict_slices(network, volume, axis, context=1, batch_size=5)
    boxed = predict_slices(network, volume, axis, context=1, batch_size=5, box_margin=0)
    along = 1 + AXES[axis]
    brain = (volume != 0).any(axis=0, keepdims=True)
    count = brain.shape[along]
    before = np.take(brain, [0, *range(count - 1)], along)  # each slice's previous one (the first repeats itself)
    after = np.take(brain, [*range(1, count), count - 1], along)
    seen = brain | before | after  # the slice or a neighbour has brain there
    assert 0 < seen.mean() < 0.5
    np.testing.assert_allclose(boxed[seen], whole[seen], atol=1e-6)
    assert set(np.unique(boxed[~seen])) <= {0.0, 0.5}  # certain background outside the box, sigmoid(0) inside it
    assert (boxed[~seen] == 0).mean() > 0.5
