"""Training cases and the samplers that turn them into batches: 2D slices, 2D patches, 3D blocks.

Cases are read with the same code as inference (:mod:`case`, :mod:`geometry`, :mod:`preprocess`)
and cached as float16 canonical arrays cropped to the brain (``.npz``), so training sees exactly
what a segmented case gives the network. Which sampler an architecture uses follows from how
it runs at inference (its model card's ``inference`` block):

- :class:`SliceSampler`: whole-slice crops along an anatomical axis with 2.5D context, a
  fraction of them through tumor (the 2D slice networks; Havaei's CNNs in the dense variant).
- :class:`PatchSampler`: patches whose centre pixel's label is the target, as Havaei et al.
  2017 (arXiv:1505.03540) train their patch classifiers: phase 1 draws every label with equal
  probability, phase 2 draws brain pixels at their natural frequencies.
- :class:`BlockSampler`: 3D blocks for a 3D network, cut by MONAI's ``RandCropByLabelClassesd``
  (a chosen ratio of block centres per label) and augmented with ``RandFlipd``,
  ``RandScaleIntensityd`` and ``RandShiftIntensityd``, as in MONAI's BraTS SegResNet recipe
  (Myronenko 2018, arXiv:1810.11654).

Every sampler draws from its own seeded generator, so a rank of a distributed run (or a resumed
run) with its own seed draws its own reproducible share.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .case import read_image, resolve_inputs, truth_file
from .errors import InputError
from .geometry import Reorientation
from .inference import AXES, context_stack
from .labels import check_convention, from_convention
from .network_grid import canonical_spacing
from .preprocess import prepare_oriented

CLASSES = 4  # internal labels 0 background, 1 NCR/NET, 2 ED, 3 ET


@dataclass
class CachedCase:
    """One training case: normalised channels ``(4, x, y, z)`` float16, internal labels ``(x, y, z)``, and the voxel
    spacing in mm along x, y, z (the networks learn at it; the card records it as ``inputs.spacing_mm``)."""

    case_id: str
    data: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


def cache_key(folder: Path, convention: str) -> str:
    """What a cached case was made from: the folder's absolute path, its files' names, sizes and modification and
    change times (a copy that keeps the modification time still gets a new change time), and the label convention;
    another cohort with the same case ids, a changed file or another convention never reads a stale cache."""
    stats = [(p.name, p.stat()) for p in folder.iterdir() if p.is_file()]
    files = sorted((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for name, st in stats)
    text = json.dumps([str(folder.absolute()), convention, files])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_training_case(folder: Path, cache: Path, convention: str) -> CachedCase:
    """Read, reorient, crop and normalise one case with its labels; cached as .npz (:func:`cache_key`)."""
    check_convention(convention)
    if not folder.is_dir():
        raise InputError(folder, "case folder not found")
    cached = cache / f"{folder.name}-{cache_key(folder, convention)}.npz"
    if cached.is_file():
        with np.load(cached) as z:
            if "spacing" in z:  # cached by an earlier version without it: made again
                return CachedCase(folder.name, z["data"], z["labels"], tuple(z["spacing"].tolist()))
    case = resolve_inputs(folder)
    orientation = Reorientation.of(case.reference)
    truth = sitk.GetArrayFromImage(read_image(truth_file(folder))).astype(np.int16)  # labels checked after the crop
    prepared = prepare_oriented(case.data, orientation)
    labels = from_convention(orientation.to_canonical(truth)[prepared.crop.slices], convention)
    cache.mkdir(parents=True, exist_ok=True)
    data = prepared.data.astype(np.float16)
    partial = cache / f".{folder.name}.{np.random.default_rng().integers(1 << 30)}.npz"  # ranks may cache the same case
    spacing = canonical_spacing(case.reference)
    source = json.dumps([str(folder.absolute()), convention])
    np.savez(partial, data=data, labels=labels, spacing=spacing, source=np.array(source))
    partial.replace(cached)
    remove_stale(cache, folder.name, source, keep=cached)
    return CachedCase(folder.name, data, labels, tuple(spacing.tolist()))


def remove_stale(cache: Path, case_id: str, source: str, keep: Path) -> None:
    """Delete the cache entries of ``case_id`` made from the same folder and convention (``source``) as ``keep`` but
    from files that have changed since: nothing can read them again. Entries of other folders or conventions stay."""
    for entry in cache.glob(f"{case_id}-*.npz"):
        if entry == keep:
            continue
        try:
            with np.load(entry) as z:
                stale = "source" in z and str(z["source"]) == source
        except (OSError, ValueError):  # being replaced by another rank, or unreadable: not ours to judge
            continue
        if stale:
            entry.unlink(missing_ok=True)


def shard(items: list[Any], rank: int, world_size: int) -> list[Any]:
    """This rank's share of ``items`` (every ``world_size``-th from ``rank``); all of them when there are too few."""
    return items[rank::world_size] if len(items) >= world_size else list(items)


class SliceSampler:
    """Random 2.5D slices along one axis, a fraction of them through tumor, cropped or padded to ``size``.

    ``margin`` = (before, after): image context cut around the target crop on each side, for networks that
    score only pixels whose whole input window lies inside the image (Havaei's CNNs trained densely: a crop
    ``size + before + after`` wide gives ``size`` scores); :meth:`trim_target` cuts the target down to them.
    """

    def __init__(
        self,
        cases: list[CachedCase],
        axis: str,
        context: int,
        size: tuple[int, int],
        tumor_fraction: float,
        seed: int,
        margin: tuple[int, int] = (0, 0),
    ):
        self.axis = AXES[axis]
        self.context = context
        self.margin = margin
        self.size = tuple(n + sum(margin) for n in size)
        self.tumor_fraction = tumor_fraction
        self.rng = np.random.default_rng(seed)
        self.slices = [torch.from_numpy(c.data).movedim(1 + self.axis, 0) for c in cases]  # (S, C, H, W) views
        self.labels = [torch.from_numpy(c.labels).movedim(self.axis, 0) for c in cases]
        self.tumor_index = [np.flatnonzero(lab.flatten(1).any(dim=1).numpy()) for lab in self.labels]

    def _window(self, length: int, want: int, centre: int | None) -> tuple[int, int]:
        """Start in the array and offset in the output for a window of ``want`` along an axis of ``length``."""
        if length >= want:
            if centre is None:
                start = int(self.rng.integers(0, length - want + 1))
            else:
                start = int(np.clip(centre - want // 2 + self.rng.integers(-want // 4, want // 4 + 1), 0, length - want))
            return start, 0
        return 0, int(self.rng.integers(0, want - length + 1))

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(B, C * (2 * context + 1), H, W)`` float32 and internal labels ``(B, H, W)`` uint8."""
        inputs, labels = [], []
        for _ in range(batch):
            c = int(self.rng.integers(len(self.slices)))
            slices, lab = self.slices[c], self.labels[c]
            tumor = self.rng.random() < self.tumor_fraction and len(self.tumor_index[c])
            s = int(self.rng.choice(self.tumor_index[c])) if tumor else int(self.rng.integers(slices.shape[0]))
            x = context_stack(slices, torch.tensor([s]), self.context)[0].float()
            y = lab[s]
            centre = None
            if tumor:
                points = torch.nonzero(y)
                centre = points[int(self.rng.integers(len(points)))].tolist()
            out_x = torch.zeros((x.shape[0], *self.size))
            out_y = torch.zeros(self.size, dtype=torch.uint8)
            src, dst = [], []
            for a in range(2):
                start, offset = self._window(y.shape[a], self.size[a], None if centre is None else centre[a])
                n = min(y.shape[a], self.size[a])
                src.append(slice(start, start + n))
                dst.append(slice(offset, offset + n))
            out_x[:, dst[0], dst[1]] = x[:, src[0], src[1]]
            out_y[dst[0], dst[1]] = y[src[0], src[1]]
            inputs.append(out_x)
            labels.append(out_y)
        return torch.stack(inputs), torch.stack(labels)

    def trim_target(self, target: torch.Tensor) -> torch.Tensor:
        """The part of a (warped) target ``(..., H, W)`` that lies inside ``margin``."""
        before, after = self.margin
        return target[..., before : target.shape[-2] - after, before : target.shape[-1] - after]


class PatchSampler:
    """Square 2D patches (slices along ``axis``) labelled by their centre pixel, for Havaei's patch classifiers.

    ``balance="uniform"``: each of the 4 labels is equally likely (the paper's phase 1: a label first,
    then a case that has it, then one of its pixels); ``balance="natural"``: a uniformly random brain
    pixel of a random case (phase 2's natural label distribution). Background means brain pixels
    labelled 0, never the zero padding outside the brain. The patch of pixel ``p`` spans
    ``[p - P // 2, p - P // 2 + P)``, the convention of the networks' dense evaluation; outside the
    cropped volume it is 0 (z-scored background), as at inference.

    Patches are cut ``cut_size`` wide, the odd size ``P`` or ``P + 1`` from the same start, so that flips,
    rotations and scaling about the cut's centre keep the labelled pixel where it is (for the even 56x56 of
    LocalCascadeCNN a flip would otherwise move it to 27); :meth:`trim` keeps the network's ``P x P`` after
    augmentation.
    """

    def __init__(self, cases: list[CachedCase], axis: str, patch_size: int, balance: str, seed: int):
        if balance not in ("uniform", "natural"):
            raise ValueError(f"unknown label balance {balance!r}; choose uniform or natural")
        self.axis = AXES[axis]
        self.patch_size = patch_size
        self.cut_size = patch_size | 1
        self.balance = balance
        self.rng = np.random.default_rng(seed)
        self.data = [np.moveaxis(c.data, 1 + self.axis, 1) for c in cases]  # (C, S, H, W)
        self.labels = [np.moveaxis(c.labels, self.axis, 0) for c in cases]  # (S, H, W)
        # flat (S, H, W) indices of brain pixels and of each tumor label; int32 halves the memory of 28 cases' brains
        self.brain = [np.flatnonzero(np.any(d != 0, axis=0)).astype(np.int32) for d in self.data]
        self.tumor = [{k: np.flatnonzero(lab == k).astype(np.int32) for k in range(1, CLASSES)} for lab in self.labels]

    def _pixel(self) -> tuple[int, int]:
        """A (case, flat index) pair drawn with the sampler's label balance."""
        if self.balance == "uniform":
            label = int(self.rng.integers(CLASSES))
            if label:
                having = [c for c, t in enumerate(self.tumor) if len(t[label])]
                if having:
                    c = having[int(self.rng.integers(len(having)))]
                    return c, int(self.rng.choice(self.tumor[c][label]))
            while True:  # background: brain pixels labelled 0 (also used when no case has the label)
                c = int(self.rng.integers(len(self.data)))
                index = int(self.rng.choice(self.brain[c]))
                if self.labels[c].flat[index] == 0:
                    return c, index
        c = int(self.rng.integers(len(self.data)))
        return c, int(self.rng.choice(self.brain[c]))

    def patch(self, case: int, index: int) -> tuple[np.ndarray, int]:
        """The patch ``(C, cut_size, cut_size)`` whose pixel ``P // 2`` is flat pixel ``index`` of case ``case``, and
        that pixel's label."""
        size = self.cut_size
        s, row, col = np.unravel_index(index, self.labels[case].shape)
        image = self.data[case][:, s]
        out = np.zeros((image.shape[0], size, size), dtype=np.float32)
        r0, c0 = row - self.patch_size // 2, col - self.patch_size // 2
        rs, cs = max(r0, 0), max(c0, 0)
        re, ce = min(r0 + size, image.shape[1]), min(c0 + size, image.shape[2])
        out[:, rs - r0 : re - r0, cs - c0 : ce - c0] = image[:, rs:re, cs:ce]
        return out, int(self.labels[case][s, row, col])

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches ``(B, C, cut_size, cut_size)`` float32 and their centre pixels' internal labels ``(B,)`` int64."""
        patches, targets = zip(*(self.patch(*self._pixel()) for _ in range(batch)), strict=True)
        return torch.from_numpy(np.stack(patches)), torch.tensor(targets, dtype=torch.int64)

    def trim(self, patches: torch.Tensor) -> torch.Tensor:
        """The network's ``P x P`` of (augmented) cut patches."""
        return patches[..., : self.patch_size, : self.patch_size]


class BlockSampler:
    """3D blocks ``size`` from MONAI's ``RandCropByLabelClassesd`` (block centres per label in ``ratios``), with flips on
    the three axes and per-sequence intensity scale and shift (MONAI's BraTS recipe) unless ``augment`` is false.

    The per-label voxel indices are computed once per case (``ClassesToIndicesd``), not at every draw.
    """

    def __init__(self, cases: list[CachedCase], size: tuple[int, int, int], ratios: list[float], seed: int, augment: bool = True):
        from monai.transforms import (
            ClassesToIndices,
            Compose,
            RandCropByLabelClassesd,
            RandFlipd,
            RandScaleIntensityd,
            RandShiftIntensityd,
        )

        indices = ClassesToIndices(num_classes=CLASSES)
        self.items = []
        for c in cases:  # zero-pad cases smaller than a block, so every block has the full size
            pad = [(0, 0)] + [(0, max(0, s - n)) for s, n in zip(size, c.labels.shape, strict=True)]
            labels = np.pad(c.labels, pad[1:])[None]
            self.items.append({"image": np.pad(c.data, pad), "label": labels, "indices": indices(labels)})
        keys = ["image", "label"]
        self.transform = Compose(
            [
                RandCropByLabelClassesd(
                    keys, "label", list(size), ratios=list(ratios), num_classes=CLASSES, indices_key="indices", warn=False
                ),
                *(RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3) if augment),
                *(
                    [
                        RandScaleIntensityd("image", factors=0.1, prob=1.0, channel_wise=True),
                        RandShiftIntensityd("image", offsets=0.1, prob=1.0, channel_wise=True),
                    ]
                    if augment
                    else []
                ),
            ]
        )
        self.transform.set_random_state(seed=seed % (2**32))
        self.rng = np.random.default_rng(seed)
        self.size = tuple(size)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``(B, C, *size)`` float32 and internal labels ``(B, *size)`` uint8."""
        inputs, labels = [], []
        for _ in range(batch):
            item = self.items[int(self.rng.integers(len(self.items)))]
            out = self.transform(item)[0]  # the crop returns a list of num_samples dicts
            inputs.append(torch.as_tensor(np.asarray(out["image"]), dtype=torch.float32))
            labels.append(torch.as_tensor(np.asarray(out["label"])[0], dtype=torch.uint8))
        return torch.stack(inputs), torch.stack(labels)
