"""Class-label sets for classifier outputs.

The ImageNet-1k class names ship as package data (``explainer/data/imagenet_classes.txt``),
one name per line in the standard class-index order. They were generated once from
torchvision's ``torchvision/models/_meta.py`` (``_IMAGENET_CATEGORIES``, BSD-3-Clause);
reading them needs no torchvision at runtime.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from importlib import resources

from .errors import LabelError

__all__ = ["LABEL_SETS", "LabelError", "check_labels", "imagenet_labels", "resolve_labels"]

logger = logging.getLogger(__name__)

_IMAGENET_FILE = "imagenet_classes.txt"
_IMAGENET_SIZE = 1000


@functools.lru_cache(maxsize=1)
def _imagenet_labels_tuple() -> tuple[str, ...]:
    text = (
        resources.files("explainer")
        .joinpath("data")
        .joinpath(_IMAGENET_FILE)
        .read_text(encoding="utf-8")
    )
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != _IMAGENET_SIZE:
        raise LabelError(
            f"package data {_IMAGENET_FILE} holds {len(names)} names, expected {_IMAGENET_SIZE}"
        )
    logger.debug("loaded %d ImageNet class names", len(names))
    return names


def imagenet_labels() -> list[str]:
    """Return the 1000 ImageNet-1k class names in standard class-index order.

    The file is read once and cached; each call returns a fresh list, so callers may
    modify it freely.

    Returns:
        A list of 1000 human-readable class names, e.g. index 285 is ``"Egyptian cat"``.
    """
    return list(_imagenet_labels_tuple())


#: Named label sets accepted by :func:`resolve_labels` (lower-case names).
LABEL_SETS = {"imagenet": imagenet_labels}


def resolve_labels(spec: str | Sequence[str] | None) -> list[str] | None:
    """Turn a label specification into a list of class names.

    Args:
        spec: ``None`` (no labels), the name of a built-in label set (currently
            ``"imagenet"``, case-insensitive, also ``"imagenet1k"``/``"imagenet-1k"``),
            or a sequence of class-name strings (used as given, copied into a list).

    Returns:
        The list of class names, or ``None`` when ``spec`` is ``None``.

    Raises:
        LabelError: ``spec`` names an unknown label set, or is a sequence holding
            something other than strings.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        key = spec.strip().lower().replace("-", "").replace("_", "")
        if key == "imagenet1k":
            key = "imagenet"
        loader = LABEL_SETS.get(key)
        if loader is None:
            known = ", ".join(repr(name) for name in sorted(LABEL_SETS))
            raise LabelError(
                f"unknown label set {spec!r}; known label sets: {known} "
                "(or pass a list of class names)"
            )
        return loader()
    if isinstance(spec, bytes) or not isinstance(spec, Sequence):
        raise LabelError(
            f"labels must be a label-set name or a sequence of str, not {type(spec).__name__}"
        )
    labels = list(spec)
    bad = [(i, type(v).__name__) for i, v in enumerate(labels) if not isinstance(v, str)]
    if bad:
        i, tname = bad[0]
        raise LabelError(f"labels must all be str; item {i} is {tname}")
    return labels


def check_labels(
    spec: str | Sequence[str] | None, num_classes: int
) -> str | list[str] | None:
    """Validate a label specification against a model's number of classes.

    Args:
        spec: as for :func:`resolve_labels`.
        num_classes: the number of logits of the model.

    Returns:
        The form a manifest stores: the label-set name, a list of str, or None.

    Raises:
        LabelError: an unknown label set, a non-str name, or a count other than
            ``num_classes``.
    """
    names = resolve_labels(spec)
    if names is not None and len(names) != num_classes:
        what = f"label set {spec!r}" if isinstance(spec, str) else "the label list"
        raise LabelError(
            f"{what} has {len(names)} names but the model has {num_classes} classes; give "
            "one name per class, in class-index order"
        )
    return spec if isinstance(spec, str) or spec is None else names
