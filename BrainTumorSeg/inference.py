"""Running a network over a prepared case: 2D slice-wise along an anatomical axis.

Input is a canonical RAS array ``(C, x, y, z)``; the slice axis names an
anatomical direction (axial = z, coronal = y, sagittal = x), so the result does
not depend on how the file stored its voxels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .device import autocast

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
Progress = Callable[[int, int], None]


def context_stack(slices: torch.Tensor, index: torch.Tensor, context: int) -> torch.Tensor:
    """2.5D network input: for each slice in ``index``, itself and ``context`` neighbours on each side.

    ``slices`` is ``(S, C, H, W)``; the result is ``(len(index), C * (2 * context + 1), H, W)``,
    ordered by offset (-context .. +context), then channel. Edges repeat the first/last slice.
    """
    last = slices.shape[0] - 1
    parts = [slices[(index + offset).clamp(0, last)] for offset in range(-context, context + 1)]
    return torch.cat(parts, dim=1)


def activate(scores: torch.Tensor, output_type: str) -> torch.Tensor:
    """Scores -> probabilities: sigmoid for overlapping regions, softmax for exclusive classes."""
    return torch.sigmoid(scores) if output_type == "regions" else torch.softmax(scores, dim=1)


@torch.inference_mode()
def predict_slices(
    network: nn.Module,
    volume: np.ndarray,
    axis: str = "axial",
    context: int = 0,
    output_type: str = "regions",
    batch_size: int = 16,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Probabilities ``(K, x, y, z)`` from a 2D network applied slice by slice along ``axis``."""
    device = device or torch.device("cpu")
    axis_index = AXES[axis]
    data = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    slices = data.movedim(1 + axis_index, 0).contiguous()  # (S, C, H, W)
    network = network.to(device).eval()
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    outputs = []
    total = slices.shape[0]
    for start in range(0, total, batch_size):
        index = torch.arange(start, min(start + batch_size, total))
        batch = context_stack(slices, index, context).to(device).contiguous(memory_format=memory_format)
        with autocast(device, dtype):
            scores = network(batch)
        outputs.append(activate(scores.float(), output_type).cpu())
        if progress:
            progress(int(index[-1]) + 1, total)
    probabilities = torch.cat(outputs).movedim(0, 1 + axis_index)  # (K, x, y, z)
    return probabilities.numpy()


FLIPS = {"none": (), "x": ((0,),), "xy": ((0,), (1,), (0, 1))}


def predict_with_flips(predict: Callable[[np.ndarray], np.ndarray], volume: np.ndarray, flips: str = "none") -> np.ndarray:
    """Test-time augmentation: the mean of ``predict`` over the volume and its mirror images.

    ``flips`` names the canonical axes to mirror: ``none``, ``x`` (left-right), ``xy`` (all
    in-plane combinations). Each mirrored prediction is mirrored back before averaging.
    """
    total = predict(volume)
    for axes in FLIPS[flips]:
        spatial = tuple(1 + a for a in axes)
        total += np.flip(predict(np.flip(volume, spatial)), spatial)
    return total / (1 + len(FLIPS[flips]))
