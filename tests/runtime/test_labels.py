"""Tests for explainer.labels (no torch)."""

from __future__ import annotations

import pytest

from explainer.labels import LabelError, imagenet_labels, resolve_labels


def test_imagenet_labels_count_and_known_entries():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert all(isinstance(name, str) and name == name.strip() and name for name in labels)
    assert labels[0] == "tench"
    assert labels[281:286] == ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
    assert labels[967] == "espresso"
    assert labels[999] == "toilet tissue"


def test_imagenet_labels_returns_fresh_copy():
    first = imagenet_labels()
    first[0] = "changed"
    assert imagenet_labels()[0] == "tench"


def test_package_data_file_has_1000_lines():
    from importlib import resources

    text = resources.files("explainer").joinpath("data").joinpath("imagenet_classes.txt")
    lines = text.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1000


@pytest.mark.parametrize(
    "spec", ["imagenet", "ImageNet", " imagenet ", "imagenet-1k", "imagenet1k"]
)
def test_resolve_named_set(spec):
    assert resolve_labels(spec) == imagenet_labels()


def test_resolve_none_and_list():
    assert resolve_labels(None) is None
    assert resolve_labels(["cat", "dog"]) == ["cat", "dog"]
    assert resolve_labels(("a", "b")) == ["a", "b"]
    assert resolve_labels([]) == []


def test_resolve_list_is_copied():
    names = ["cat", "dog"]
    out = resolve_labels(names)
    out.append("x")
    assert names == ["cat", "dog"]


def test_unknown_label_set_raises_label_error():
    with pytest.raises(LabelError, match=r"unknown label set 'coco'.*'imagenet'"):
        resolve_labels("coco")
    assert issubclass(LabelError, ValueError)


def test_non_string_items_raise():
    with pytest.raises(LabelError, match="item 1 is int"):
        resolve_labels(["cat", 3])
    with pytest.raises(LabelError, match="bytes"):
        resolve_labels(b"imagenet")
