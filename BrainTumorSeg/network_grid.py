"""The grid the networks see: the spacing they were trained at, and the way back to the case's grid.

A network learns its filters at the voxel size of its training data (BraTS: 1 mm). A case at another
spacing shows it every structure at another size in voxels, and its Dice drops. So, as nnU-Net and
MONAI's bundles do, the case is resampled to the spacing in the model card (``inputs.spacing_mm``,
canonical x, y, z) when its own differs by more than :data:`TOLERANCE`, and the networks' mean
probabilities are resampled back (linear) onto the case's grid, where labels, clean-up and every
output are made. The resampled grid keeps the case's direction and physical box. A case at the
card's spacing is not touched.

Measured with the default model on the sample case resampled to other spacings (ground truth by
nearest neighbour; Dice WT / TC / ET on that grid; at 1 mm 0.938 / 0.880 / 0.789), without -> with:
0.5 x 0.5 x 1 mm 0.935 / 0.799 / 0.774 -> 0.930 / 0.878 / 0.779; 1 x 1 x 3 mm (thick slices)
0.918 / 0.737 / 0.690 -> 0.936 / 0.886 / 0.783; 0.7 mm 0.932 / 0.854 / 0.785 -> 0.928 / 0.870 / 0.779;
1.5 mm 0.931 / 0.854 / 0.747 -> 0.929 / 0.881 / 0.778.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from .case import Case
from .errors import InputError
from .geometry import Reorientation, direction_matrix
from .models.card import ModelCard
from .preprocess import Crop

TOLERANCE = 0.1  # relative spacing difference taken as the same spacing (BraTS-like 0.94 mm runs as it is)


def network_spacing(cards: Sequence[ModelCard]) -> tuple[float, float, float] | None:
    """The spacing (mm, canonical x, y, z) the networks were trained at: the first card's that says one; None when
    none does.

    Cards that do not say take any spacing. Spacings within :data:`TOLERANCE` of the first count as the same (a model
    trained at 0.94 mm runs with 1 mm ones); others cannot share one grid."""
    said = [card for card in cards if "spacing_mm" in card.inputs]
    if not said:
        return None
    spacings = [np.asarray(card.inputs["spacing_mm"], dtype=float) for card in said]
    if any(np.any(np.abs(s - spacings[0]) > TOLERANCE * spacings[0]) for s in spacings[1:]):
        listed = "; ".join(f"{card.id} {card.inputs['spacing_mm']}" for card in said)
        raise InputError("--model", f"the models were trained at different spacings ({listed} mm): run them separately")
    return tuple(float(v) for v in spacings[0])  # type: ignore[return-value]


def canonical_spacing(reference: sitk.Image) -> np.ndarray:
    """Voxel spacing of ``reference`` in mm along canonical x, y, z (its closest anatomical axes)."""
    spacing_ijk = reference.GetSpacing()
    return np.array([spacing_ijk[2 - a] for a in Reorientation.of(reference).source_axis], dtype=float)


def needs_resampling(reference: sitk.Image, spacing: Sequence[float] | None) -> bool:
    """Whether a case on ``reference`` must be resampled for networks trained at ``spacing``."""
    if spacing is None:
        return False
    target = np.asarray(spacing, dtype=float)
    return bool(np.any(np.abs(canonical_spacing(reference) - target) > TOLERANCE * target))


def network_reference(reference: sitk.Image, spacing: Sequence[float]) -> sitk.Image:
    """An empty image on the grid the networks run on: ``spacing`` (canonical x, y, z) on ``reference``'s index axes,
    same direction, covering the same physical box (its outer voxel corners) as ``reference``."""
    new_spacing = [0.0, 0.0, 0.0]
    for canonical_axis, array_axis in enumerate(Reorientation.of(reference).source_axis):
        new_spacing[2 - array_axis] = float(spacing[canonical_axis])
    old_spacing = np.asarray(reference.GetSpacing(), dtype=float)
    extent = np.asarray(reference.GetSize(), dtype=float) * old_spacing
    size = [max(1, int(round(e / s))) for e, s in zip(extent, new_spacing, strict=True)]
    # The first voxel's centre moves so that the box's corner stays where it was.
    shift = (np.asarray(new_spacing) - old_spacing) / 2.0
    origin = np.asarray(reference.GetOrigin(), dtype=float) + direction_matrix(reference) @ shift
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(new_spacing)
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(reference.GetDirection())
    return grid


def _on_grid(array: np.ndarray, source: sitk.Image, target: sitk.Image, interpolator: int = sitk.sitkLinear) -> np.ndarray:
    """One ``[k, j, i]`` array on ``source``'s grid, resampled (0 outside) onto ``target``'s."""
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.CopyInformation(source)
    resampled = sitk.Resample(image, target, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


def resample_case(case: Case, spacing: Sequence[float], check: Callable[[], None] = lambda: None) -> Case:
    """``case`` on the networks' grid (:func:`network_reference`): each sequence resampled linearly inside the brain
    (resampled by nearest neighbour), 0 outside it. ``check`` is called between sequences (cancel)."""
    grid = network_reference(case.reference, spacing)
    data = np.empty((len(case.data), *reversed(grid.GetSize())), dtype=np.float32)
    for channel, values in enumerate(case.data):
        check()
        data[channel] = _on_grid(values, case.reference, grid)
    # The brain (any sequence non-zero) by nearest neighbour: interpolation would spread a rim of small values around
    # it into the brain mask and the z-score (sample case at 0.7 mm: TC 0.836 with the rim, 0.870 without).
    brain = _on_grid(case.brain, case.reference, grid, sitk.sitkNearestNeighbor) > 0
    data[:, ~brain] = 0
    return Case(grid, data, case.sources, case.resampled, case.coverage, case.warnings)


def crop_grid(reference: sitk.Image, crop: Crop) -> sitk.Image:
    """An empty image on the part of ``reference``'s grid that a canonical ``crop`` of it covers."""
    orientation = Reorientation.of(reference)
    start, size = [0, 0, 0], [0, 0, 0]
    for canonical_axis, (low, high) in enumerate(crop.box):
        array_axis = orientation.source_axis[canonical_axis]
        length = crop.full_shape[canonical_axis]
        if orientation.flip[canonical_axis]:
            low, high = length - high, length - low
        start[2 - array_axis], size[2 - array_axis] = low, high - low
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(reference.GetSpacing())
    grid.SetDirection(reference.GetDirection())
    grid.SetOrigin(reference.TransformIndexToPhysicalPoint(start))
    return grid


def canonical_to_case(
    canonical: np.ndarray,
    network_case: Case,
    network_crop: Crop,
    case: Case,
    crop: Crop,
    check: Callable[[], None] = lambda: None,
) -> np.ndarray:
    """Canonical ``(C, x, y, z)`` maps cropped by ``network_crop`` from ``network_case``'s grid -> the same maps
    cropped by ``crop`` from ``case``'s grid (linear, 0 outside ``network_crop``). Only the crops are resampled, so a
    large clinical case costs no full-size copies. ``check`` is called between channels (cancel)."""
    source = crop_grid(network_case.reference, network_crop)
    target = crop_grid(case.reference, crop)
    on_source = Reorientation.of(network_case.reference).from_canonical(canonical)
    out = np.empty((len(canonical), *reversed(target.GetSize())), dtype=np.float32)
    for channel, values in enumerate(on_source):
        check()
        out[channel] = _on_grid(values, source, target)
    return Reorientation.of(case.reference).to_canonical(out)
