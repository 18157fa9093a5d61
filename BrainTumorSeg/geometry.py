"""Image grids in physical space: comparing, overlapping, resampling, and reorienting to RAS.

SimpleITK works in LPS; a NumPy array from ``sitk.GetArrayFromImage`` is indexed
``[k, j, i]``. The *canonical* array used for slicing and for the networks is
indexed ``[x, y, z]`` with x toward patient Right, y toward Anterior and z toward
Superior (RAS, as nibabel's canonical form). Reorientation only permutes and
flips axes, so it is exact and invertible: for an oblique image the closest
anatomical axes are used and nothing is resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def direction_matrix(image: sitk.Image) -> np.ndarray:
    """3x3 direction matrix in LPS; column c is the physical direction of index axis c."""
    return np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """True when two 3D images share size, spacing, origin and direction (to ``tolerance``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=tolerance, atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=tolerance, atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical (LPS) box around the image's voxel centres, half a voxel wider."""
    size = np.asarray(image.GetSize(), dtype=float)
    corners = np.array(np.meshgrid(*[(-0.5, s - 0.5) for s in size], indexing="ij")).reshape(3, -1).T
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    return points.min(axis=0), points.max(axis=0)


def overlap_fraction(moving: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of the reference's bounding box that the moving image's bounding box covers."""
    low_m, high_m = physical_bounds(moving)
    low_r, high_r = physical_bounds(reference)
    inter = np.clip(np.minimum(high_m, high_r) - np.maximum(low_m, low_r), 0, None)
    return float(np.prod(inter) / np.prod(high_r - low_r))


def resample_to(image: sitk.Image, reference: sitk.Image, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """``image`` resampled onto ``reference``'s grid in physical space (identity transform, 0 outside)."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips between a SimpleITK array ``[k, j, i]`` and the canonical RAS array ``[x, y, z]``.

    ``source_axis[c]`` is the SimpleITK-array axis that becomes canonical axis ``c``;
    ``flip[c]`` says whether it runs against R, A or S.
    """

    source_axis: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @classmethod
    def of(cls, image: sitk.Image) -> Reorientation:
        """The reorientation of an image, from its direction matrix (closest anatomical axes)."""
        ras = _LPS_TO_RAS @ direction_matrix(image)  # column i: RAS direction of index axis i
        weight = np.abs(ras)
        index_for_ras = [-1, -1, -1]
        # Greedy assignment, strongest alignment first, so the result is always a permutation.
        for flat in np.argsort(-weight, axis=None):
            ras_axis, index_axis = divmod(int(flat), 3)
            if index_for_ras[ras_axis] < 0 and index_axis not in index_for_ras:
                index_for_ras[ras_axis] = index_axis
        flip = tuple(bool(ras[a, index_for_ras[a]] < 0) for a in range(3))
        # SimpleITK arrays are [k, j, i]: index axis i lives at array axis 2 - i.
        return cls(tuple(2 - i for i in index_for_ras), flip)  # type: ignore[arg-type]

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """SimpleITK-ordered array (last three axes ``[k, j, i]``) -> canonical RAS array (last three ``[x, y, z]``)."""
        return np.ascontiguousarray(self.canonical_view(array))

    def canonical_view(self, array: np.ndarray) -> np.ndarray:
        """:meth:`to_canonical` as a view, no copy: writing into it writes into ``array``."""
        lead = array.ndim - 3
        out = np.transpose(array, (*range(lead), *(lead + a for a in self.source_axis)))
        flips = tuple(lead + c for c in range(3) if self.flip[c])
        return np.flip(out, flips) if flips else out

    def box_to_canonical(
        self, box: tuple[tuple[int, int], ...], shape: tuple[int, ...]
    ) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
        """A box (``(start, stop)`` per axis) in a SimpleITK-ordered array of ``shape`` -> that box and shape, canonical."""
        canonical_box, canonical_shape = [], []
        for c, a in enumerate(self.source_axis):
            start, stop = box[a]
            canonical_box.append((shape[a] - stop, shape[a] - start) if self.flip[c] else (start, stop))
            canonical_shape.append(shape[a])
        return tuple(canonical_box), tuple(canonical_shape)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_canonical`."""
        lead = array.ndim - 3
        flips = tuple(lead + c for c in range(3) if self.flip[c])
        out = np.flip(array, flips) if flips else array
        inverse = np.argsort(self.source_axis)
        return np.ascontiguousarray(np.transpose(out, (*range(lead), *(lead + int(a) for a in inverse))))
