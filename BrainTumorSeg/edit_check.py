"""Whether a segment was edited since the module created it: a digest of its voxels (no Slicer needed).

The Slicer module stores each segment's voxel count and digest when it imports a result and compares them before
replacing the segmentation. The digest covers the segment's bounding box of voxels, not the labelmap around it, so a
labelmap whose extent grows or shrinks without a voxel changing (a shared labelmap re-merged, a scene saved cropped to
its content and reloaded) still reads as unedited, while any painted, erased or moved voxel changes it.
"""

from __future__ import annotations

import hashlib

import numpy as np


def voxel_digest(inside: np.ndarray) -> str:
    """A digest of the true voxels of ``inside`` within their bounding box ("" for none)."""
    where = np.nonzero(inside)
    if not where[0].size:
        return ""
    box = tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in where)
    part = np.ascontiguousarray(inside[box], dtype=bool)
    return hashlib.sha1(repr(part.shape).encode() + np.packbits(part).tobytes()).hexdigest()
