"""Running a network over a prepared case: slice-wise, or patch-wise with a sliding window.

Input is a canonical RAS array ``(C, x, y, z)``; a slice axis names an anatomical
direction (axial = z, coronal = y, sagittal = x), so the result does not depend on how
the file stored its voxels.

- :func:`predict_slices`: a 2D network on whole slices, batched. For Havaei's patch
  classifiers, whose forward is fully convolutional, this is the dense evaluation of every
  pixel's patch in one pass. With ``box_margin`` each batch runs only on the in-plane box of
  its brain pixels (:func:`brain_box`), which the brain crop of the whole volume is wider than
  near the top and bottom of the brain.
- :func:`predict_window`: a 2D network on tiles of each slice, or a 3D network on blocks of
  the volume, with overlapping windows blended by a gaussian (MONAI's sliding-window inferer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .device import autocast
from .models.card import AXES, FLIPS

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


def brain_box(occupied: torch.Tensor, margin: int, multiple: int = 16) -> tuple[slice, slice]:
    """In-plane box ``(rows, columns)`` around the true pixels of ``occupied`` ``(S, H, W)``, ``margin`` pixels wider on
    each side and grown to a multiple of ``multiple`` (a U-Net's pooling), within the slice; a corner when none is true.
    """
    height, width = occupied.shape[1:]
    if not bool(occupied.any()):
        return slice(0, min(multiple, height)), slice(0, min(multiple, width))
    box = []
    for hits, size in ((occupied.any(dim=2).any(dim=0), height), (occupied.any(dim=1).any(dim=0), width)):
        where = hits.nonzero()[:, 0]
        first, end = int(where[0]), int(where[-1]) + 1
        length = min(size, -(-(end - first + 2 * margin) // multiple) * multiple)
        begin = max(0, min(first - margin, size - length))
        box.append(slice(begin, begin + length))
    return box[0], box[1]


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
    box_margin: int | None = None,
) -> np.ndarray:
    """Probabilities ``(K, x, y, z)`` from a 2D network applied slice by slice along ``axis``.

    ``box_margin``: run each batch on :func:`brain_box` of its slices and their context (non-zero pixels, the brain of
    a prepared volume), that many pixels wider on each side; outside it the probabilities are those of certain
    background (a batch without brain runs on a corner, whose output is the network's). ``None``: whole slices. For a
    patch classifier whose forward pads with zeros (Havaei's CNNs) any margin gives the whole slices' result inside the
    brain, as the box only drops zeros; for a U-Net it is close, not equal.
    """
    device = device or torch.device("cpu")
    axis_index = AXES[axis]
    data = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    slices = data.movedim(1 + axis_index, 0).contiguous()  # (S, C, H, W)
    network = network.to(device).eval()
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    total = slices.shape[0]
    if total == 0:
        raise ValueError(f"volume {tuple(volume.shape)} has no {axis} slice")
    probabilities = torch.empty(0)  # (K, x, y, z), contiguous: what averaging and labelling read fastest
    occupied = (slices != 0).any(dim=1) if box_margin is not None else None  # (S, H, W)
    box = (slice(None), slice(None))
    for start in range(0, total, batch_size):
        index = torch.arange(start, min(start + batch_size, total))
        if occupied is not None:  # the batch's slices and the context slices they read
            box = brain_box(occupied[max(0, start - context) : int(index[-1]) + 1 + context], box_margin)
        batch = context_stack(slices[:, :, box[0], box[1]], index, context).to(device).contiguous(memory_format=memory_format)
        with autocast(device, dtype):
            scores = network(batch)
        if scores.shape[0] != batch.shape[0] or scores.shape[2:] != batch.shape[2:]:
            raise ValueError(f"the network maps slices {tuple(batch.shape)} to {tuple(scores.shape)}, not one output per slice")
        if start == 0:
            probabilities = background(scores.shape[1], data.shape[1:], output_type, box_margin is None)
        in_box = (slice(start, start + len(index)), slice(None), box[0], box[1])
        probabilities.movedim(1 + axis_index, 0)[in_box] = activate(scores.float(), output_type).cpu()
        if progress:
            progress(int(index[-1]) + 1, total)
    return probabilities.numpy()


def background(channels: int, shape: Sequence[int], output_type: str, overwritten: bool) -> torch.Tensor:
    """A ``(channels, *shape)`` float32 array for probabilities: certain background (no region, or all of channel 0,
    the background class), or left uninitialised when every voxel is ``overwritten``."""
    if overwritten:
        return torch.empty((channels, *shape), dtype=torch.float32)
    probabilities = torch.zeros((channels, *shape), dtype=torch.float32)
    if output_type != "regions":
        probabilities[0] = 1
    return probabilities


def window_count(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding-window inferer visits per image (its scan interval: ``int(roi * (1 - overlap))``, min 1)."""
    from monai.data.utils import dense_patch_slices  # MONAI takes seconds to import: only when windows are used

    size = [max(i, r) for i, r in zip(image_size, roi_size, strict=True)]  # the inferer pads up to the window
    interval = [r if r == i else max(1, int(r * (1 - overlap))) for i, r in zip(size, roi_size, strict=True)]
    return len(dense_patch_slices(size, roi_size, interval))


@torch.inference_mode()
def predict_window(
    network: nn.Module,
    volume: np.ndarray,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    axis: str = "axial",
    context: int = 0,
    output_type: str = "regions",
    batch_size: int = 4,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Probabilities ``(K, x, y, z)`` from overlapping windows blended with gaussian weights.

    ``roi_size`` of length 3: a 3D network on blocks of the volume. Length 2: a 2D network on
    tiles of every slice along ``axis`` (2.5D input with ``context`` neighbours). Scores are
    blended before the activation, as MONAI's inferer does; ``batch_size`` windows run at once.
    """
    from monai.inferers import sliding_window_inference

    device = device or torch.device("cpu")
    network = network.to(device).eval()
    memory_format = torch.channels_last if device.type == "cpu" and len(roi_size) == 2 else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    data = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    if len(roi_size) == 3:
        images, restore = data[None], lambda scores: scores[0]
    elif len(roi_size) == 2:
        axis_index = AXES[axis]
        slices = data.movedim(1 + axis_index, 0).contiguous()
        images = context_stack(slices, torch.arange(slices.shape[0]), context)

        def restore(scores: torch.Tensor) -> torch.Tensor:
            return scores.movedim(0, 1 + axis_index)
    else:
        raise ValueError(f"window size must have 2 or 3 values, got {list(roi_size)}")
    total = window_count(images.shape[2:], roi_size, overlap) * images.shape[0]
    done = 0

    def run(windows: torch.Tensor) -> torch.Tensor:
        nonlocal done
        with autocast(device, dtype):
            scores = network(windows.contiguous(memory_format=memory_format))
        done += windows.shape[0]
        if progress:
            progress(min(done, total), total)
        return scores.float()

    scores = sliding_window_inference(
        images, list(roi_size), batch_size, run, overlap=overlap, mode="gaussian", sw_device=device, device="cpu"
    )
    return restore(activate(scores, output_type)).numpy()


def predict_with_flips(predict: Callable[[np.ndarray], np.ndarray], volume: np.ndarray, flips: str = "none") -> np.ndarray:
    """Test-time augmentation: the mean of ``predict`` over the volume and its mirror images.

    ``flips`` names the canonical axes to mirror: ``none``, ``x`` (left-right), ``xy`` (all
    in-plane combinations). Each mirrored prediction is mirrored back before averaging.
    """
    total = predict(volume)
    if not FLIPS[flips]:
        return total
    for axes in FLIPS[flips]:
        spatial = tuple(1 + a for a in axes)
        total += np.flip(predict(np.flip(volume, spatial)), spatial)
    total /= 1 + len(FLIPS[flips])
    return total
