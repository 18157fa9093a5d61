"""Havaei et al. 2017 networks: the paper's weight counts, dense evaluation == patch-by-patch classification, patch geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BrainTumorSeg.models.havaei import (
    InputCascadeCNN,
    LocalCascadeCNN,
    MFCascadeCNN,
    TwoPathCNN,
    extract_patches,
    paper_weight_count,
)
from BrainTumorSeg.preprocess import bounding_crop, brain_mask, zscore

torch.set_num_threads(1)

NETWORKS = (TwoPathCNN, InputCascadeCNN, LocalCascadeCNN, MFCascadeCNN)
CASCADES = (InputCascadeCNN, LocalCascadeCNN, MFCascadeCNN)
PUBLISHED = {TwoPathCNN: 651_488, InputCascadeCNN: 802_368, LocalCascadeCNN: 654_368, MFCascadeCNN: 662_513}
PATCH_SIZES = {TwoPathCNN: 33, InputCascadeCNN: 65, LocalCascadeCNN: 56, MFCascadeCNN: 53}
# Same layers, kernels, pooling and crops as the published networks, fewer maps: the geometry under test is identical
# and per-patch classification of the cascades (the first CNN runs over the whole 65x65 patch) stays quick.
SMALL = {"local_maps": 8, "global_maps": 8}


@pytest.mark.parametrize("network_class", NETWORKS, ids=lambda c: c.__name__)
def test_paper_weight_count_reproduces_the_published_numbers(network_class):
    assert paper_weight_count(network_class()) == PUBLISHED[network_class]
    # the paper's count ignores Maxout pieces, biases, normalization and the fixed first CNN of a cascade
    assert paper_weight_count(network_class(maxout_k=4, batch_norm=True, dropout=0.0)) == PUBLISHED[network_class]


def test_real_parameter_count_of_twopathcnn_includes_maxout_pieces_and_biases():
    # 2 Maxout pieces per map double the hidden kernels; each convolution output channel has a bias
    assert sum(p.numel() for p in TwoPathCNN().parameters()) == 2 * (651_488 - 493_920) + 493_920 + (128 + 128 + 320 + 5)


@pytest.mark.parametrize("network_class", NETWORKS, ids=lambda c: c.__name__)
def test_patch_size_margin_and_output_shape(network_class):
    network = network_class(**SMALL).eval()
    size = PATCH_SIZES[network_class]
    assert network.patch_size == size and network.margin == size // 2
    with torch.no_grad():
        assert network.classify_patches(torch.randn(3, 4, size, size)).shape == (3, 5)
        assert network(torch.randn(2, 4, 31, 18)).shape == (2, 5, 31, 18)
    with pytest.raises(ValueError, match="patches"):
        network.classify_patches(torch.randn(1, 4, size + 1, size + 1))


def test_extract_patches_centres_pixel_at_index_half_the_patch_size():
    image = torch.zeros(2, 9, 11)
    image[:, 4, 7] = 1.0
    for size in (5, 6, 33, 56):
        patches = extract_patches(image, torch.tensor([[4, 7], [0, 0]]), size)
        assert patches.shape == (2, 2, size, size)
        assert patches[0, :, size // 2, size // 2].tolist() == [1.0, 1.0] and patches[0].sum() == 2
        if size < 8:  # the patch of (0, 0) reaches rows up to size - 1 - size // 2 < 4: zeros and image corner only
            assert patches[1].sum() == 0
        else:
            assert patches[1, 0, size // 2 + 4, size // 2 + 7] == 1.0 and patches[1, :, : size // 2].sum() == 0


@pytest.fixture(scope="module")
def real_slice(sample_dir: Path) -> torch.Tensor:
    """The axial slice of the sample case with the most tumor, 4 sequences z-scored in the brain, cropped to the brain."""
    volumes = np.stack(
        [
            sitk.GetArrayFromImage(sitk.ReadImage(str(next(sample_dir.glob(f"*_{m}.nii.gz")))))
            for m in ("t1", "t1ce", "t2", "flair")
        ]
    ).astype(np.float32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(next(sample_dir.glob("*_seg.nii.gz")))))
    z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
    mask = brain_mask(volumes)
    normalised = zscore(volumes, mask)[:, z]
    crop = bounding_crop(mask[z], margin=2)
    return torch.from_numpy(normalised[(slice(None), *crop.slices)].copy())


def _randomise_batch_norm(network: torch.nn.Module) -> None:
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)


def _dense_vs_patches(network: torch.nn.Module, image: torch.Tensor, pixels: int, seed: int) -> tuple[float, float, float]:
    """Max |dense - patch| at random pixels, the scores' spread, and the max difference to the neighbouring pixel's patch."""
    generator = torch.Generator().manual_seed(seed)
    height, width = image.shape[-2:]
    centres = torch.stack(
        [torch.randint(0, height, (pixels,), generator=generator), torch.randint(0, width, (pixels,), generator=generator)], 1
    )
    corners = torch.tensor([[0, 0], [0, width - 1], [height - 1, 0], [height - 1, width - 1]])
    centres = torch.cat([corners, centres])
    with torch.no_grad():
        dense = network(image[None])[0]  # (K, H, W), one pass
        patches = network.classify_patches(extract_patches(image, centres, network.patch_size))  # (N, K)
    at_centres = dense[:, centres[:, 0], centres[:, 1]].T
    shifted = dense[:, centres[:, 0], (centres[:, 1] + 1).clamp(max=width - 1)].T
    return (at_centres - patches).abs().max().item(), dense.std().item(), (shifted - patches).abs().max().item()


@pytest.mark.parametrize("network_class", NETWORKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("regulariser", ["dropout", "batch_norm"])
def test_dense_evaluation_equals_patch_classification_on_a_real_slice(real_slice, network_class, regulariser):
    torch.manual_seed(0)
    options = {"dropout": 0.5} if regulariser == "dropout" else {"batch_norm": True, "dropout": 0.0}
    network = network_class(**SMALL, **options)
    _randomise_batch_norm(network)
    network.eval()
    difference, spread, shifted = _dense_vs_patches(network, real_slice, 200, seed=1)
    assert difference < 1e-4
    assert spread > 1e-2 and shifted > 1e-3  # the scores vary over the slice, so the comparison has power


def test_dense_evaluation_equals_patch_classification_published_twopathcnn(real_slice):
    torch.manual_seed(0)
    network = TwoPathCNN().eval()
    difference, spread, shifted = _dense_vs_patches(network, real_slice, 200, seed=2)
    assert difference < 1e-4
    assert spread > 1e-2 and shifted > 1e-3


def _support_edges(network: torch.nn.Module, centre: int, first: int, last: int) -> list[bool]:
    """Whether perturbing the pixel at first - 1, first, last, last + 1 (in the row, then the column, of ``centre``)
    changes the dense scores of pixel (centre, centre) of an image of ``last + 2`` x ``last + 2`` pixels."""
    torch.manual_seed(3)
    size = last + 2
    base = torch.randn(1, 4, size, size)
    kick = torch.randn(4) * 20
    batch = [base]
    for axis in (0, 1):
        for i in (first - 1, first, last, last + 1):
            image = base.clone()
            if axis == 0:
                image[0, :, i, centre] += kick
            else:
                image[0, :, centre, i] += kick
            batch.append(image)
    with torch.no_grad():
        scores = network(torch.cat(batch))[:, :, centre, centre]
    return ((scores[1:] - scores[0]).abs().amax(1) > 1e-5).tolist()


EDGES = [False, True, True, False] * 2  # outside, first, last, outside; rows then columns


@pytest.mark.parametrize("network_class", NETWORKS, ids=lambda c: c.__name__)
def test_dense_score_of_a_pixel_depends_on_exactly_its_patch(network_class):
    """The score of pixel p changes with the pixels p - P // 2 and p - P // 2 + P - 1, and not with their outer neighbours."""
    network = network_class(local_maps=4, global_maps=4, dropout=0.0).eval()
    size = network.patch_size
    centre = 1 + size // 2
    assert _support_edges(network, centre, centre - size // 2, centre - size // 2 + size - 1) == EDGES


@pytest.mark.parametrize("network_class", CASCADES, ids=lambda c: c.__name__)
def test_second_cnn_of_a_cascade_sees_the_33x33_patch_centred_on_the_pixel(network_class):
    """With the weights that read the first CNN's maps set to zero, a cascade's score of pixel p depends on p +- 16 only."""
    network = network_class(local_maps=4, global_maps=4, dropout=0.0).eval()
    second = network.second
    with torch.no_grad():
        if network_class is InputCascadeCNN:
            second.local1.conv.weight[:, 4:] = 0
            second.global_path.conv.weight[:, 4:] = 0
        elif network_class is LocalCascadeCNN:
            second.local2.conv.weight[:, 4:] = 0  # input maps 0-3: the local path's, 4-8: the first CNN's
        else:
            second.output.weight[:, 8:] = 0  # 4 local + 4 global maps, then the first CNN's
    assert _support_edges(network, 17, 1, 33) == EDGES


def test_frozen_first_cnn_has_no_gradients_and_stays_in_eval_mode():
    network = LocalCascadeCNN(**SMALL, freeze_first=True).train()
    assert not network.first.training and network.second.training
    assert all(not p.requires_grad for p in network.first.parameters())
    network(torch.randn(2, 4, 9, 10)).sum().backward()
    assert all(p.grad is None for p in network.first.parameters())
    assert all(p.grad is not None for p in network.second.parameters())
