"""Scores of perturbed inputs through an Explainer's runner, in as few graph runs as the chunk
size allows.

Every metric turns one (image, target) pair into a group of perturbed copies of the image;
:meth:`Scores.of_groups` packs the copies of consecutive groups into chunks of
``batch_size`` rows, so a run holds copies of several pairs, and memory stays bounded by the
chunk whatever the number of groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..explanation import softmax
from .spec import EvaluationError

__all__ = ["SCORES", "Scores", "to_chw", "from_chw"]

#: what the metrics score: the softmax probability of the class, or its logit
SCORES = ("probability", "logit")


def to_chw(x: np.ndarray, layout: str) -> np.ndarray:
    """One image of a batch in the model layout, as float64 [C, H, W]."""
    return np.asarray(x if layout == "NCHW" else np.moveaxis(x, -1, 0), np.float64)


def from_chw(images: np.ndarray, layout: str, dtype: np.dtype) -> np.ndarray:
    """Images [N, C, H, W] back to the model layout and dtype (rounded and clipped to the
    dtype's range for integer inputs)."""
    out = images if layout == "NCHW" else np.moveaxis(images, 1, -1)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return np.ascontiguousarray(out, dtype=dtype)


class Scores:
    """The score of a class for batches of model inputs, through ``explainer.runner`` (a
    detector's, segmenter's or text recognizer's held targets: :class:`~.tasks.TaskScores`).

    Args:
        explainer: an :class:`~explainer.runtime.Explainer` of a classifier.
        score: ``"probability"`` (softmax of the logits; the head's own output where the
            bundle explains probabilities) or ``"logit"``.
        batch_size: rows per graph run.
        bar: a tqdm bar advanced by the rows scored, or None.
    """

    def __init__(self, explainer: Any, score: str = "probability", batch_size: int = 64,
                 bar: Any = None) -> None:
        if score not in SCORES:
            raise EvaluationError(f"score={score!r} is not one of {SCORES}")
        if batch_size < 1:
            raise EvaluationError(f"batch_size must be at least 1, got {batch_size}")
        self.runner = explainer.runner
        self.score = score
        self.batch_size = batch_size
        self.bar = bar
        self.given_probability = explainer.spec.head.score == "probability"
        self.layout = explainer.spec.input.layout
        self.runs = 0

    def rows(self, x: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Scores [N] for model inputs ``x`` [N, ...] (one graph run): ``keys[n]`` is the class
        id (or, for a task's held targets, the target) row n is scored for."""
        runner = self.runner
        explained = runner.run_logits(runner.run_features(x))
        self.runs += 1
        if self.bar is not None:
            self.bar.update(len(x))
        return self.read(explained, keys)

    def read(self, explained: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The scores [N] of the head's explained tensor [N, ...] (a classifier's logits [N,
        C]): class ``keys[n]`` of row n."""
        logits = explained.astype(np.float64)
        values = logits if self.score == "logit" or self.given_probability else softmax(logits)
        return values[np.arange(len(logits)), keys]

    def of_groups(self, groups: Iterable[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        """Scores of each group of copies: ``groups`` yields (copies [n, C, H, W] as float,
        key: a class id or a held target's index); the result holds one array [n] per group,
        in order."""
        pending: list[tuple[np.ndarray, int]] = []
        sizes: list[int] = []
        flat: list[np.ndarray] = []
        queued = 0
        for copies, class_id in groups:
            sizes.append(len(copies))
            pending.append((copies, class_id))
            queued += len(copies)
            while queued >= self.batch_size:
                flat.append(self._flush(pending, self.batch_size))
                queued -= self.batch_size
        if queued:
            flat.append(self._flush(pending, queued))
        scores = np.concatenate(flat) if flat else np.zeros(0)
        return np.split(scores, np.cumsum(sizes)[:-1]) if sizes else []

    def _flush(self, pending: list[tuple[np.ndarray, int]], count: int) -> np.ndarray:
        """Score the first ``count`` queued rows (one run), removing them from ``pending``."""
        images, ids = [], []
        for copies, class_id in _take(pending, count):
            images.append(copies)
            ids.append(np.full(len(copies), class_id))
        dtype = self.runner.spec.input.dtype
        batch = from_chw(np.concatenate(images), self.layout, dtype)
        return self.rows(batch, np.concatenate(ids))


def _take(pending: list[tuple[np.ndarray, int]], count: int) -> Iterator[tuple[np.ndarray, int]]:
    """Pop ``count`` rows off the front of ``pending`` (splitting a group if needed)."""
    while count:
        copies, class_id = pending[0]
        if len(copies) <= count:
            pending.pop(0)
            count -= len(copies)
            yield copies, class_id
        else:
            pending[0] = (copies[count:], class_id)
            yield copies[:count], class_id
            count = 0
