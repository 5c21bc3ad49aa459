from __future__ import annotations

import numpy as np
import pytest

from explainer.targets import TargetError, one_hot_seeds, plan_targets, seed_rows

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


NAMES = ["tench", "goldfish", "tiger cat", "tabby cat", "flagpole"]


@pytest.mark.parametrize(
    "targets, expected",
    [
        ("tiger cat", [[2], [2]]),
        ("Tiger Cat+top2", [[2, 1, 3], [2, 3, 0]]),
        ("flagpole + least", [[4, 2], [4, 4]]),
        (["goldfish", "tench"], [[1], [0]]),
        ([["tabby cat", "flagpole"], ["tench", "tiger cat"]], [[3, 4], [0, 2]]),
        (np.array(["flagpole", "goldfish"]), [[4], [1]]),
    ],
)
def test_class_names_stand_for_ids(targets, expected):
    plan = plan_targets(targets, None, batch=2, num_classes=5, labels=NAMES)
    np.testing.assert_array_equal(plan.resolve(LOGITS), expected)


def test_unknown_names_name_close_matches():
    with pytest.raises(TargetError, match=r"unknown class name 'flagpol'.*'flagpole'"):
        plan_targets("flagpol", None, batch=2, num_classes=5, labels=NAMES)
    with pytest.raises(TargetError, match=r"'tigr cat'.*'tiger cat'"):
        plan_targets(["tigr cat", "tench"], None, batch=2, num_classes=5, labels=NAMES)
    with pytest.raises(TargetError, match="no labels"):
        plan_targets(["tench", "tench"], None, batch=2, num_classes=5)


def test_seed_rows_contrast_and_probability():
    ids = np.array([[1, 2], [0, 4]])
    plain = seed_rows(ids, 5)
    np.testing.assert_array_equal(plain, one_hot_seeds(ids, 5))
    contrast = seed_rows(ids, 5, contrast_ids=np.array([[3], [3]]))
    np.testing.assert_array_equal(contrast.sum(1), 0)
    np.testing.assert_array_equal(contrast[:, 3], -1)
    # probability seeds are the softmax Jacobian's rows: compare with finite differences
    z = LOGITS.astype(np.float64)

    def softmax(v):
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    seeds = seed_rows(ids, 5, probabilities=softmax(z)).reshape(2, 2, 5)
    for b in range(2):
        for k in range(2):
            fd = [(softmax(z + 1e-6 * np.eye(5)[j])[b, ids[b, k]]
                   - softmax(z - 1e-6 * np.eye(5)[j])[b, ids[b, k]]) / 2e-6 for j in range(5)]
            np.testing.assert_allclose(seeds[b, k], fd, atol=1e-6)
