"""Slice-wise inference on the real sample: 2.5D context, anatomical axes, test-time mirroring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from BrainTumorSeg.geometry import Reorientation
from BrainTumorSeg.inference import context_stack, predict_slices, predict_with_flips
from BrainTumorSeg.models.card import ModelCard
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
