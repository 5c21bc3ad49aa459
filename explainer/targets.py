"""Which classes to explain: turn a user's target spec into class ids and seed rows.

Accepted specs (``B`` images in the batch):

* ``None``: the top-1 class of each image.
* an ``int``: that class for every image.
* a length-``B`` sequence of ints: one class per image.
* a ``[B, K]`` int array (or nested list): ``K`` classes per image.
* a string of ``+``-joined terms, ranked on each image's logits: ``"topK"`` (the K most
  probable classes), ``"least"`` / ``"leastK"`` (the least probable one(s)), a class id or a
  class name; e.g. ``"top3+least"`` is the top-3 plus the least probable class, and
  ``"tiger cat+top2"`` the class named "tiger cat" plus the top-2.
* ``top_k=K`` (keyword of :meth:`Explainer.explain`) is the same as ``"topK"``.

A class name (matched case-insensitively against the bundle's labels) may stand wherever a
class id may: in sequences and arrays too. An unknown name raises :class:`TargetError` naming
close matches.

Seeds (:func:`seed_rows`): the head differentiates ``sum(seed * logits)``. A one-hot row
explains a class's logit; ``contrast`` classes subtract theirs (the score of the target minus
the score of the contrast class); ``score="probability"`` explains the softmax probability
instead, whose seed row is ``p_t (e_t - p)`` (the chain rule through the softmax).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import TargetError

__all__ = [
    "SCORES", "GraphTargets", "TargetError", "TargetPlan", "check_score", "class_id",
    "one_hot_seeds", "plan_targets", "seed_rows",
]

#: what a target's score may be: its logit, or its softmax probability
SCORES = ("logit", "probability")


def check_score(score: str) -> None:
    """Raise :class:`TargetError` unless ``score`` is one of :data:`SCORES`."""
    if score not in SCORES:
        raise TargetError(f"unknown score {score!r}; the score must be one of "
                          f"{', '.join(map(repr, SCORES))}")

_TERM = re.compile(r"^(top|least)(\d*)$|^(\d+)$")


@dataclass(frozen=True)
class GraphTargets:
    """Targets as the explanation graph takes them (see ``exporters.compose``).

    The graph explains the columns ``top_k most probable | least least probable | class_ids``;
    ``columns`` reorders them into the order the user asked for (None: already in order).
    """

    top_k: int
    least: int
    class_ids: np.ndarray  # [B or 1, N] int64
    columns: np.ndarray | None = None


@dataclass(frozen=True)
class TargetPlan:
    """Either fixed class ids, or ranking terms that need the logits first."""

    class_ids: np.ndarray | None  # [B, K] when fixed
    terms: tuple[tuple[str, int], ...] = ()  # ("top", k) / ("least", k) / ("id", c)

    @property
    def count(self) -> int:
        """How many targets (columns K) each image gets."""
        if self.class_ids is not None:
            return int(self.class_ids.shape[1])
        return sum(1 if kind == "id" else k for kind, k in self.terms)

    @property
    def needs_logits(self) -> bool:
        """True when the classes depend on the model's prediction."""
        return self.class_ids is None

    def resolve(self, logits: np.ndarray) -> np.ndarray:
        """Class ids [B, K] for these logits [B, C] (descending score inside top/least)."""
        if self.class_ids is not None:
            return self.class_ids
        order = np.argsort(-logits, axis=1, kind="stable")
        columns = []
        for kind, k in self.terms:
            if kind == "top":
                columns.append(order[:, :k])
            elif kind == "least":
                columns.append(order[:, ::-1][:, :k])
            else:
                columns.append(np.full((logits.shape[0], 1), k, dtype=np.int64))
        return np.concatenate(columns, axis=1).astype(np.int64)

    def graph_targets(self) -> GraphTargets:
        """The explanation graph's target inputs for this plan."""
        if self.class_ids is not None:
            return GraphTargets(0, 0, self.class_ids)
        top = max([k for kind, k in self.terms if kind == "top"], default=0)
        least = max([k for kind, k in self.terms if kind == "least"], default=0)
        ids = [k for kind, k in self.terms if kind == "id"]
        columns, next_id = [], top + least
        for kind, k in self.terms:
            if kind == "top":
                columns.extend(range(k))
            elif kind == "least":
                columns.extend(range(top, top + k))
            else:
                columns.append(next_id)
                next_id += 1
        in_order = columns == list(range(top + least + len(ids)))
        return GraphTargets(top, least, np.array([ids], np.int64).reshape(1, len(ids)),
                            None if in_order else np.array(columns))


def _check_range(ids: np.ndarray, num_classes: int) -> np.ndarray:
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.size:
        raise TargetError(
            f"class id {int(bad.flat[0])} is out of range: the model has {num_classes} classes "
            f"(valid ids 0..{num_classes - 1})"
        )
    return ids


def class_id(name: str, labels: Sequence[str] | None) -> int:
    """The class id of a class name (case-insensitive; surrounding spaces ignored).

    Raises:
        TargetError: the bundle has no labels, or no class has that name (close matches are
            named).
    """
    if labels is None:
        raise TargetError(
            f"class name {name!r} given, but this bundle has no labels; give class ids, or "
            "export with labels="
        )
    wanted = name.strip().lower()
    for index, label in enumerate(labels):
        if label.lower() == wanted:
            return index
    close = difflib.get_close_matches(wanted, [label.lower() for label in labels], n=3)
    hint = f"; close matches: {close}" if close else ""
    raise TargetError(f"unknown class name {name!r}{hint}")


def _parse_string(
    spec: str, num_classes: int, labels: Sequence[str] | None = None
) -> tuple[tuple[str, int], ...]:
    terms = []
    for term in spec.split("+"):
        raw = term.replace(" ", "").lower()
        match = _TERM.match(raw)
        if not match:
            if labels is None or not term.strip():
                raise TargetError(
                    f"cannot read target term {term.strip()!r} in {spec!r}; use e.g. 'top3', "
                    "'least', 'top3+least', a class id or (with labels) a class name"
                )
            terms.append(("id", class_id(term, labels)))
            continue
        if match.group(3) is not None:
            terms.append(("id", int(_check_range(np.array([int(raw)]), num_classes)[0])))
            continue
        k = int(match.group(2) or 1)
        if not 1 <= k <= num_classes:
            raise TargetError(f"{raw!r}: k must be between 1 and {num_classes}")
        terms.append((match.group(1), k))
    return tuple(terms)


def plan_targets(
    targets: Any,
    top_k: int | None,
    batch: int,
    num_classes: int,
    labels: Sequence[str] | None = None,
) -> TargetPlan:
    """Validate a target spec (see module docstring) for a batch of ``batch`` images.

    ``labels`` (the bundle's class names) lets names stand for class ids.
    """
    if top_k is not None:
        if targets is not None:
            raise TargetError("give either targets or top_k, not both")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise TargetError(f"top_k must be an int, got {top_k!r}")
        targets = f"top{int(top_k)}"
    if targets is None:
        return TargetPlan(None, (("top", 1),))
    if isinstance(targets, str):
        return TargetPlan(None, _parse_string(targets, num_classes, labels))
    if isinstance(targets, (int, np.integer)) and not isinstance(targets, bool):
        ids = np.full((batch, 1), int(targets), dtype=np.int64)
        return TargetPlan(_check_range(ids, num_classes))
    try:
        ids = np.asarray(targets)
    except ValueError as err:  # ragged nested lists
        raise TargetError(f"targets must be rectangular, got {targets!r}") from err
    if ids.dtype.kind in "UO" and ids.size and all(isinstance(v, str) for v in ids.flat):
        ids = np.vectorize(lambda name: class_id(name, labels), otypes=[np.int64])(ids)
    if ids.dtype.kind not in "iu" or ids.size == 0:
        raise TargetError(f"targets must be class ids (integers), got {targets!r}")
    if ids.ndim == 1:
        ids = ids[:, None]
    if ids.ndim != 2 or ids.shape[0] != batch:
        raise TargetError(
            f"targets of shape {tuple(np.shape(targets))} do not match a batch of {batch} images; "
            "give an int, a length-B sequence or a [B, K] array"
        )
    return TargetPlan(_check_range(ids.astype(np.int64), num_classes))


def one_hot_seeds(class_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot seed rows [N, C] selecting logit ``class_ids[n]`` (flattened row-major)."""
    flat = class_ids.reshape(-1)
    seeds = np.zeros((flat.size, num_classes), dtype=np.float32)
    seeds[np.arange(flat.size), flat] = 1.0
    return seeds




def seed_rows(
    class_ids: np.ndarray,
    num_classes: int,
    contrast_ids: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Seed rows [B*K, C] (image-major) for class_ids [B, K].

    Args:
        class_ids: [B, K] explained classes.
        num_classes: C.
        contrast_ids: None, or [B, 1] / [B, K] classes whose score is subtracted.
        probabilities: None to explain logits, or the softmax probabilities [B, C] to explain
            probabilities (the seed row of class t is ``p_t (e_t - p)``).
    """
    batch, k = class_ids.shape

    def rows(ids: np.ndarray) -> np.ndarray:
        onehot = one_hot_seeds(ids, num_classes).reshape(batch, k, num_classes)
        if probabilities is None:
            return onehot
        p = probabilities.astype(np.float64)[:, None, :]
        picked = np.take_along_axis(probabilities, ids, axis=1).astype(np.float64)[..., None]
        return picked * (onehot - p)

    seeds = rows(class_ids)
    if contrast_ids is not None:
        seeds = seeds - rows(np.broadcast_to(contrast_ids, class_ids.shape))
    return seeds.reshape(batch * k, num_classes).astype(np.float32)
