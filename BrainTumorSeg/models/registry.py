"""The network behind each architecture name, and weights in and out of safetensors (needs PyTorch)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import write_atomic
from ..errors import InputError
from .card import ARCHITECTURE_NAMES
from .fcdensenet import FCDenseNet
from .havaei import InputCascadeCNN, LocalCascadeCNN, MFCascadeCNN, TwoPathCNN
from .pspnet import PSPNet
from .segresnet import SegResNet
from .unet import UNet2D

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet2d": UNet2D,
    "twopathcnn": TwoPathCNN,
    "inputcascadecnn": InputCascadeCNN,
    "localcascadecnn": LocalCascadeCNN,
    "mfcascadecnn": MFCascadeCNN,
    "fcdensenet": FCDenseNet,
    "pspnet": PSPNet,
    "segresnet": SegResNet,
}
assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES, "card.ARCHITECTURE_NAMES must name the same architectures"


def build_network(architecture: str, config: dict[str, Any]) -> nn.Module:
    """The untrained network of ``architecture`` with keyword arguments ``config``; ValueError for a configuration
    that would build a network without layers or widths (``"features": []``, ``"width": 0``) or does not fit the
    architecture's arguments."""
    check_sizes(config)
    try:
        return ARCHITECTURES[architecture](**config)
    except TypeError as error:  # an unknown argument, or a value of the wrong type deep in torch
        raise ValueError(str(error)) from None


# Configuration keys that give a width (channels, maps, filters) or a count of layers, in any architecture; other keys
# (MONAI's norm and act, spatial_dims, extra inputs that may be 0) are left to the network's own checks.
WIDTH_KEYS = frozenset(
    {"in_channels", "out_channels", "num_classes", "maxout_k", "local_maps", "global_maps", "features", "growth_rate"}
    | {"first_conv", "width", "head_channels", "init_filters", "bins"}
)
LAYER_KEYS = frozenset({"down_blocks", "bottleneck", "blocks", "blocks_down", "blocks_up"})


def check_sizes(config: dict[str, Any]) -> None:
    """Widths are whole numbers of at least 1 (or lists of them, not empty), layer counts at least 0 (lists not
    empty), dropouts lie in [0, 1); ``None`` leaves a value to the network's default."""
    for key, value in config.items():
        if value is None:
            continue
        if "dropout" in key:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{key} must be a number from 0 up to but not including 1, got {value!r}")
        elif key in WIDTH_KEYS or key in LAYER_KEYS:
            least = 1 if key in WIDTH_KEYS else 0
            values = value if isinstance(value, list) else [value]
            if not values or not all(_is_count(v, least) for v in values):
                kind = "a non-empty list of whole numbers" if isinstance(value, list) else "a whole number"
                raise ValueError(f"{key} must be {kind} of at least {least}, got {value!r}")


def _is_count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def load_weights(network: nn.Module, path: Path, model_id: str) -> nn.Module:
    """``network`` with the weights in ``path`` (safetensors: no pickle, no code), in eval mode, fp32."""
    if not path.is_file():
        raise InputError(path, f"weights of model {model_id} not found")
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        raise InputError(path, f"cannot read weights ({error})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(path, f"weights do not match the card's architecture ({mismatch(error)})") from None
    return network.eval()


def mismatch(error: RuntimeError) -> str:
    """The first concrete complaint of ``load_state_dict`` (a size mismatch, missing or unexpected keys), shortened
    to fit a one-line error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else lines[0] if lines else "state dict mismatch"
    return detail if len(detail) <= 200 else detail[:197] + "..."


def save_weights(network: nn.Module, path: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write a network's state as safetensors, floating-point tensors cast to ``dtype``.

    Written atomically: a run killed while writing leaves the earlier file (or none), never a truncated one.
    """
    state = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in network.state_dict().items()
    }
    write_atomic(Path(path), lambda temp: save_file(state, str(temp)))
