from __future__ import annotations

import numpy as np
import pytest

from explainer.targets import TargetError, one_hot_seeds, plan_targets

LOGITS = np.array([[0.1, 3.0, -2.0, 1.0, 0.5], [2.0, -1.0, 0.0, 4.0, -3.0]], np.float32)


@pytest.mark.parametrize(
    "targets, top_k, expected",
    [
        (None, None, [[1], [3]]),
        (2, None, [[2], [2]]),
        ([4, 0], None, [[4], [0]]),
        ([[1, 2], [3, 4]], None, [[1, 2], [3, 4]]),
        (np.array([[0, 1, 2], [2, 1, 0]]), None, [[0, 1, 2], [2, 1, 0]]),
        (None, 2, [[1, 3], [3, 0]]),
        ("top3+least", None, [[1, 3, 4, 2], [3, 0, 2, 4]]),
        ("least2", None, [[2, 0], [4, 1]]),
        ("top1+4", None, [[1, 4], [3, 4]]),
    ],
)
def test_target_specs(targets, top_k, expected):
    plan = plan_targets(targets, top_k, batch=2, num_classes=5)
    np.testing.assert_array_equal(plan.resolve(LOGITS), expected)


@pytest.mark.parametrize(
    "targets, top_k, match",
    [
        (5, None, "out of range"),
        (-1, None, "out of range"),
        ([1, 2, 3], None, "batch of 2"),
        ("top9", None, "between 1 and 5"),
        ("best", None, "cannot read"),
        ([0.5, 1.0], None, "integers"),
        (1, 3, "either"),
        (None, 2.5, "int"),
        ([[1, 2], [3]], None, "rectangular|integers"),
    ],
)
def test_bad_target_specs_raise(targets, top_k, match):
    with pytest.raises(TargetError, match=match):
        plan_targets(targets, top_k, batch=2, num_classes=5)


def test_one_hot_seeds_are_image_major():
    seeds = one_hot_seeds(np.array([[1, 2], [0, 4]]), 5)
    assert seeds.shape == (4, 5)
    np.testing.assert_array_equal(seeds.argmax(1), [1, 2, 0, 4])
    np.testing.assert_array_equal(seeds.sum(1), 1)
