"""The Slicer module's edit check (edit_check.voxel_digest) on a real segment: the sample case's ground-truth edema."""

from __future__ import annotations

import numpy as np

from BrainTumorSeg.edit_check import voxel_digest
from BrainTumorSeg.labels import ED


def test_a_moved_voxel_changes_the_digest_and_a_grown_labelmap_does_not(sample_truth):
    edema = sample_truth == ED
    digest = voxel_digest(edema)
    padded = np.pad(edema, ((3, 1), (0, 5), (2, 2)))  # the labelmap's extent changes, not one voxel
    assert voxel_digest(padded) == digest
    voxels = np.argwhere(edema)
    low, high = voxels.min(axis=0), voxels.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    hole = np.argwhere(~edema[box])[len(np.argwhere(~edema[box])) // 2] + low  # inside the bounding box
    moved = edema.copy()
    moved[tuple(voxels[len(voxels) // 2])], moved[tuple(hole)] = False, True  # same count and box, one voxel moved
    assert moved.sum() == edema.sum() and voxel_digest(moved) != digest
    assert voxel_digest(np.zeros((4, 4, 4), bool)) == ""
