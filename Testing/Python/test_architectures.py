"""Every registered architecture: built from a model card, scores of the input's size for odd sizes, paper configurations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from BrainTumorSeg.cli import main
from BrainTumorSeg.inference import predict_slices
from BrainTumorSeg.models import registry
from BrainTumorSeg.models.card import ModelCard
from BrainTumorSeg.models.fcdensenet import PRESETS, FCDenseNet
from BrainTumorSeg.models.havaei import paper_weight_count
from BrainTumorSeg.models.pspnet import PSPNet
from BrainTumorSeg.models.registry import ARCHITECTURES, build_network, save_weights
from BrainTumorSeg.models.segresnet import SegResNet
from BrainTumorSeg.models.unet import UNet2D
from BrainTumorSeg.resources import resources_dir

torch.set_num_threads(1)

THREE_D = {"segresnet"}
HAVAEI = {"twopathcnn", "inputcascadecnn", "localcascadecnn", "mfcascadecnn"}
# Default configurations, except fewer maps for the Havaei networks, whose published widths make a dense pass over
# a 155x187 slice take seconds; their layers, kernels and padding (the code path under test) are the same.
SMALL = {name: {"local_maps": 8, "global_maps": 8} for name in HAVAEI}


def _parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def _classes(network: nn.Module, config: dict) -> int:
    return config.get("out_channels", config.get("num_classes", getattr(network, "num_classes", None)))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_odd_sized_input_gives_scores_of_the_input_size(name):
    torch.manual_seed(0)
    network = ARCHITECTURES[name](**SMALL.get(name, {})).eval()
    shape = (4, 64, 72, 56) if name in THREE_D else (4, 155, 187)
    with torch.no_grad():
        scores = network(torch.randn(1, *shape))
    classes = {"segresnet": 3, **dict.fromkeys(HAVAEI, 5)}.get(name, 4)
    assert scores.shape == (1, classes, *shape[1:])
    assert torch.isfinite(scores).all() and scores.std() > 0


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_trains_on_odd_sized_batches(name):
    torch.manual_seed(0)
    network = ARCHITECTURES[name](**SMALL.get(name, {})).train()
    shape = (4, 19, 21, 23) if name in THREE_D else (4, 37, 45)
    scores = network(torch.randn(2, *shape))
    assert scores.shape[2:] == shape[1:]
    scores.square().mean().backward()
    trainable = [p for p in network.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


@pytest.mark.parametrize("name", sorted(set(ARCHITECTURES) - THREE_D))
def test_slice_wise_inference_runs_every_2d_architecture_without_special_cases(name):
    """The generic slice-wise engine gets per-pixel scores from every 2D network, patch classifiers included."""
    torch.manual_seed(0)
    network = ARCHITECTURES[name](**SMALL.get(name, {}))
    volume = np.random.default_rng(0).standard_normal((4, 23, 31, 3)).astype(np.float32)
    probabilities = predict_slices(network, volume, axis="axial", output_type="classes", batch_size=2)
    classes = 5 if name in HAVAEI else 4
    assert probabilities.shape == (classes, 23, 31, 3)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)


CARDS = {
    "unet2d": {"in_channels": 12, "out_channels": 3, "features": [8, 16, 32], "dropout": 0.1},
    "twopathcnn": {"maxout_k": 2, "dropout": 0.3, "num_classes": 5},
    "inputcascadecnn": {"maxout_k": 2, "batch_norm": True, "dropout": 0.0},
    "localcascadecnn": {"maxout_k": 3, "num_classes": 4},
    "mfcascadecnn": {"in_channels": 4, "freeze_first": True},
    "fcdensenet": {"preset": "fcdensenet103", "in_channels": 3, "out_channels": 11},
    "pspnet": {"width": 16, "blocks": [1, 1, 1, 1], "bins": [1, 2, 3, 6], "out_channels": 3},
    "segresnet": {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1], "out_channels": 3},
}


def test_every_architecture_has_a_card_test():
    assert set(CARDS) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(CARDS))
def test_registry_builds_each_architecture_from_a_model_card_file(name, tmp_path):
    raw = {
        "id": f"test-{name}",
        "architecture": name,
        "config": CARDS[name],
        "inputs": {"modalities": ["t1", "t1ce", "t2", "flair"]},
        "outputs": {"type": "classes"},
        "inference": {"mode": "patches" if name in THREE_D else "slices"},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    network = ModelCard.read(path).build()
    assert isinstance(network, ARCHITECTURES[name])
    in_channels = CARDS[name].get("in_channels", 4)
    shape = (in_channels, 20, 23, 18) if name in THREE_D else (in_channels, 21, 26)
    with torch.no_grad():
        scores = network.eval()(torch.randn(1, *shape))
    assert scores.shape == (1, _classes(network, CARDS[name]), *shape[1:])


def test_the_size_check_leaves_other_valid_arguments_alone():
    """Only widths, layer counts and dropouts are checked: MONAI's own arguments, None defaults and zero extra
    inputs still build."""
    segresnet = build_network("segresnet", {"init_filters": 4, "norm": ["GROUP", {"num_groups": 2}], "dropout_prob": None})
    assert isinstance(segresnet, SegResNet)
    assert isinstance(build_network("twopathcnn", {"extra_local_inputs": 0, "local_maps": 8, "global_maps": 8}), nn.Module)
    assert isinstance(build_network("pspnet", {"width": 8, "head_channels": None}), PSPNet)
    with pytest.raises(ValueError, match=r"^width must be a whole number of at least 1, got 0$"):
        build_network("pspnet", {"width": 0})


def test_card_configurations_reach_the_networks():
    build = {name: ModelCard("x", name, config, {}, {}, {}).build() for name, config in CARDS.items()}
    assert build["unet2d"].levels == 3
    assert build["twopathcnn"].dropout.p == 0.3
    assert isinstance(build["inputcascadecnn"].second.local1.norm, nn.BatchNorm2d)
    assert build["localcascadecnn"].second.local1.conv.out_channels == 64 * 3 and build["localcascadecnn"].num_classes == 4
    assert not any(p.requires_grad for p in build["mfcascadecnn"].first.parameters())
    assert paper_weight_count(build["mfcascadecnn"]) == 662_513
    assert _parameters(build["fcdensenet"]) == 9_322_091  # FC-DenseNet103 with CamVid's 3 inputs and 11 classes
    assert len(build["pspnet"].stages) == 4 and all(len(stage) == 1 for stage in build["pspnet"].stages)
    assert build["segresnet"].multiple == 4


def test_unet_depth_and_width_are_configurable():
    for features in ((8, 16), (4, 8, 16, 32, 64, 128)):
        network = UNet2D(4, 3, features).eval()
        assert network.levels == len(features) and network.head.in_channels == features[0]
        with torch.no_grad():
            assert network(torch.randn(1, 4, 33, 47)).shape == (1, 3, 33, 47)


def test_shipped_unet_weights_still_load():
    card = ModelCard.read(resources_dir() / "Models" / "unet2d-axial.json")
    assert isinstance(card.load(), UNet2D)  # load_state_dict is strict: same keys and shapes


def test_weights_written_when_the_writer_dies_midway_leave_the_earlier_file(tmp_path, monkeypatch):
    network = UNet2D(in_channels=4, out_channels=3, features=(4, 8))
    path = tmp_path / "net.safetensors"
    save_weights(network, path, dtype=torch.float32)
    before = path.read_bytes()

    def dies_midway(state, filename):
        Path(filename).write_bytes(b"half a safetensors header")
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "save_file", dies_midway)
    with torch.no_grad():
        network.head.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_weights(network, path, dtype=torch.float32)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.safetensors"]


def _with_running_statistics(network: nn.Module) -> int:
    """Parameters plus batch-norm running means and variances, as the FC-DenseNet authors' Lasagne code counts them."""
    norms = sum(m.num_features for m in network.modules() if isinstance(m, nn.BatchNorm2d))
    return _parameters(network) + 2 * norms


def test_fcdensenet_presets_match_the_paper():
    counts = {name: FCDenseNet(3, 11, preset=name) for name in ("fcdensenet56", "fcdensenet67", "fcdensenet103")}
    assert {k: _parameters(v) for k, v in counts.items()} == {
        "fcdensenet56": 1_376_795,
        "fcdensenet67": 3_463_243,
        "fcdensenet103": 9_322_091,
    }
    # the paper's Table 1: 1.5 M, 3.5 M, 9.4 M; 67 and 103 agree, 56 as described has 1.4 M
    assert round(_with_running_statistics(counts["fcdensenet67"]) / 1e6, 1) == 3.5
    assert round(_with_running_statistics(counts["fcdensenet103"]) / 1e6, 1) == 9.4
    assert round(_with_running_statistics(counts["fcdensenet56"]) / 1e6, 1) == 1.4


def test_fcdensenet_seed_brats_variant_parameter_count():
    seed = FCDenseNet(4, 4)
    assert _parameters(seed) == 2_564_956  # k = 8: 2.6 M, not the 9.3 M the seed states
    assert _parameters(FCDenseNet(4, 4, preset="brats", growth_rate=16)) == 9_320_724  # 9.3 M belongs to k = 16
    assert _parameters(FCDenseNet(4, 4, growth_rate=8, down_blocks=[4, 5, 7, 10, 12], bottleneck=15, first_conv=48)) == 2_564_956
    assert PRESETS["brats"] == {"growth_rate": 8, "down_blocks": (4, 5, 7, 10, 12), "bottleneck": 15, "first_conv": 48}
    assert seed.first.out_channels == 48 and [len(b.layers) for b in seed.up] == [12, 10, 7, 5, 4]
    with pytest.raises(ValueError, match="up_blocks"):
        FCDenseNet(up_blocks=[4, 4])
    with pytest.raises(ValueError, match="preset"):
        FCDenseNet(preset="fcdensenet42")


def test_pspnet_has_output_stride_8_and_the_pyramid_bins():
    network = PSPNet().eval()
    assert network.pyramid.bins == [1, 2, 3, 6]
    features = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        features["size"] = inputs[0].shape[-2:]

    network.pyramid.register_forward_hook(record)
    with torch.no_grad():
        network(torch.randn(1, 4, 155, 187))
    assert tuple(features["size"]) == (20, 24)  # padded to 160 x 192, then / 8
    dilations = [block.conv1.dilation[0] for stage in network.stages for block in stage]
    assert dilations == [1, 1, 1, 1, 2, 2, 4, 4]


def test_segresnet_is_monais_network():
    from monai.networks.nets import SegResNet as MonaiSegResNet

    network = SegResNet()
    assert isinstance(network.net, MonaiSegResNet)
    reference = MonaiSegResNet(init_filters=16, in_channels=4, out_channels=3, dropout_prob=0.2)
    assert [k.removeprefix("net.") for k in network.state_dict()] == list(reference.state_dict())
    assert network.multiple == 8


def test_models_architectures_lists_every_architecture_with_count_and_paper(capsys):
    assert main(["models", "--architectures", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["architecture"] for row in rows] == list(ARCHITECTURES)
    for row in rows:
        assert row["parameters"] == _parameters(ARCHITECTURES[row["architecture"]]())
        assert "arXiv:" in row["citation"]
    assert main(["models", "--architectures"]) == 0
    text = capsys.readouterr().out
    assert "twopathcnn" in text and "809,637" in text and "Havaei" in text
