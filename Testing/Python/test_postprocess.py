"""Clean-up of label maps: each option does exactly what it says, in mL of the real voxel size."""

from __future__ import annotations

import numpy as np
import pytest

from BrainTumorSeg.postprocess import PostprocessOptions, clean_up, postprocess, tumor_box

VOXEL_ML = 0.001  # 1 mm^3 voxels


@pytest.fixture
def two_tumors() -> np.ndarray:
    """A 3.9 mL tumor (edema around core around enhancing) and a separate 0.125 mL edema blob."""
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:25, 3:17, 3:17] = 2
    labels[8:22, 5:15, 5:15] = 1
    labels[10:20, 7:13, 7:13] = 3
    labels[30:35, 30:35, 30:35] = 2
    return labels


def test_defaults_change_nothing(two_tumors):
    assert not PostprocessOptions().active
    assert np.array_equal(postprocess(two_tumors, PostprocessOptions(), VOXEL_ML), two_tumors)


def test_keep_largest_removes_the_small_component_only(two_tumors):
    kept = postprocess(two_tumors, PostprocessOptions(keep_largest=True), VOXEL_ML)
    assert kept[30:35, 30:35, 30:35].max() == 0
    assert np.array_equal(kept[:26], two_tumors[:26])


@pytest.mark.parametrize(("threshold", "small_kept"), [(0.1, True), (0.2, False)])
def test_min_component_volume_is_in_ml(two_tumors, threshold, small_kept):
    result = postprocess(two_tumors, PostprocessOptions(min_component_ml=threshold), VOXEL_ML)
    assert (result[30:35, 30:35, 30:35] == 2).all() == small_kept
    assert np.array_equal(result[:26], two_tumors[:26])
    # the same blob in 2 mm voxels is 8x larger
    assert (postprocess(two_tumors, PostprocessOptions(min_component_ml=0.2), 8 * VOXEL_ML)[32, 32, 32]) == 2


def test_closing_fills_a_hole_and_keeps_nesting(two_tumors):
    holed = two_tumors.copy()
    holed[15, 4, 4] = 0  # a one-voxel hole in the edema
    holed[15, 10, 10] = 1  # and one in the enhancing tumor
    closed = postprocess(holed, PostprocessOptions(closing=1), VOXEL_ML)
    assert closed[15, 4, 4] == 2 and closed[15, 10, 10] == 3
    assert np.array_equal(closed, two_tumors)
    assert closed[0].max() == 0 and closed[30:35, 30:35, 30:35].min() == 2  # no growth at the array's edge or of blobs


def test_small_enhancing_tumor_becomes_core(two_tumors):
    et_ml = (two_tumors == 3).sum() * VOXEL_ML  # 0.36 mL
    relabelled = postprocess(two_tumors, PostprocessOptions(et_to_core_ml=et_ml + 0.001), VOXEL_ML)
    assert (relabelled == 3).sum() == 0
    assert np.array_equal(relabelled == 1, (two_tumors == 1) | (two_tumors == 3))
    kept = postprocess(two_tumors, PostprocessOptions(et_to_core_ml=et_ml - 0.001), VOXEL_ML)
    assert np.array_equal(kept, two_tumors)


def test_brain_mask_limits_closing(two_tumors):
    brain = np.ones_like(two_tumors, bool)
    brain[15, 4, 4] = False
    holed = two_tumors.copy()
    holed[15, 4, 4] = 0
    assert postprocess(holed, PostprocessOptions(closing=1), VOXEL_ML, brain)[15, 4, 4] == 0


def test_unknown_option_in_a_card_is_an_error():
    with pytest.raises(ValueError, match=r"unknown postprocessing option\(s\) \['largest'\]"):
        PostprocessOptions.from_dict({"largest": True})


@pytest.mark.parametrize("touching_edge", [False, True])
def test_clean_up_in_the_tumor_box_equals_clean_up_of_the_whole_volume(sample_case, sample_labels, sample_truth, touching_edge):
    options = PostprocessOptions(closing=2, min_component_ml=1.0, et_to_core_ml=0.5)
    for labels in (sample_labels, sample_truth):  # a real network output and a real expert segmentation
        brain = sample_case.brain
        if touching_edge:  # shift the tumor (and the brain) against the first face of the array
            shift = -tumor_box(labels, 0)[0].start
            labels, brain = np.roll(labels, shift, axis=0), np.roll(brain, shift, axis=0)
        expected = clean_up(labels, options, 0.001, brain)
        assert not np.array_equal(expected, labels)  # the steps do change these labels
        np.testing.assert_array_equal(postprocess(labels, options, 0.001, brain), expected)


def test_no_tumor_stays_empty():
    labels = np.zeros((8, 9, 10), np.uint8)
    assert tumor_box(labels, 2) is None
    assert not postprocess(labels, PostprocessOptions(closing=1, min_component_ml=1.0), 0.001).any()
