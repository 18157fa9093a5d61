"""Averaging an ensemble's probabilities: the element-wise mean, inputs left as they were."""

from __future__ import annotations

import numpy as np

from BrainTumorSeg.probabilities import average

CLASSES = {"type": "classes", "labels": [0, 1, 2, 3]}
REGIONS = {"type": "regions", "channels": ["WT", "TC", "ET"]}


def _softmax(rng: np.random.Generator, channels: int) -> np.ndarray:
    logits = rng.normal(size=(channels, 5, 6, 7)).astype(np.float32)
    e = np.exp(logits)
    return e / e.sum(axis=0, keepdims=True)


def test_average_of_class_models_is_their_mean_and_leaves_inputs_alone():
    rng = np.random.default_rng(0)
    members = [_softmax(rng, 4) for _ in range(3)]
    copies = [m.copy() for m in members]
    mean, decision = average([(m, CLASSES) for m in members])
    assert decision == CLASSES and mean.dtype == np.float32
    np.testing.assert_allclose(mean, np.mean(copies, axis=0), rtol=0, atol=1e-6)
    assert all(np.array_equal(m, c) for m, c in zip(members, copies, strict=True))


def test_average_of_region_models_keeps_their_channels():
    rng = np.random.default_rng(1)
    members = [rng.random((3, 5, 6, 7), dtype=np.float32) for _ in range(2)]
    mean, decision = average([(m, REGIONS) for m in members])
    assert decision["channels"] == REGIONS["channels"] and decision["threshold"] == 0.5
    np.testing.assert_allclose(mean, (members[0] + members[1]) / 2, rtol=0, atol=1e-6)


def test_average_of_one_model_is_that_model_not_a_copy():
    probabilities = _softmax(np.random.default_rng(2), 4)
    mean, decision = average([(probabilities, CLASSES)])
    assert mean is probabilities and decision is CLASSES
