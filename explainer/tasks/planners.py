"""The planners: what one explained map of a detector, segmenter or text recognizer is.

Every task other than ``classify`` goes the same way in :meth:`Explainer.explain`: the head's
outputs of one image -> the targets of that image (a planner's :meth:`~Planner.plan`) -> one
seed over the explained tensor per target -> one gradient-head row per target -> the CAMs.
A planner knows its task's targets, seeds and scores; adding a task is one planner here and
its :class:`~explainer.tasks.spec.TaskSpec` in :mod:`explainer.tasks.registry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..detection import (
    DEFAULT_CONF,
    DEFAULT_IOU,
    DetectionTarget,
    check_spec,
    check_thresholds,
    decode,
    plan_detections,
    seed_row,
    seed_terms,
    target_scores,
    target_spec,
)
from ..errors import TargetError
from ..seeds import weighted_scores, weighted_seed
from ..segmentation import (
    DEFAULT_THRESHOLD,
    check_region_spec,
    check_threshold,
    plan_regions,
    region_terms,
)
from ..sequence import check_sequence_spec, ctc_decode, plan_characters
from ..sparse_seeds import SparseSeeds

__all__ = ["DetectPlanner", "Planner", "SegmentPlanner", "SequencePlanner"]


def _seeds_shape(explained: np.ndarray, plans: list[list[Any]]) -> tuple[int, ...]:
    return (len(plans), max([1, *map(len, plans)]), *explained.shape[1:])


class Planner:
    """A task's targets for one image, their seeds and their scores.

    Attributes:
        task: the bundle's task.
        fmt: the manifest's format.
        labels: class names (a text recognizer's vocabulary).
        score: ``"logit"`` or ``"probability"``.
    """

    task = ""
    #: the task's own keyword options (besides ``top_k``)
    options: tuple[str, ...] = ()

    def __init__(self, fmt: dict[str, Any], labels: Sequence[str] | None, num_classes: int,
                 spec: Any, score: str) -> None:
        self.fmt, self.labels, self.num_classes = fmt, labels, num_classes
        self.spec, self.score = spec, score

    def plan(self, outputs: dict[str, np.ndarray], explained: np.ndarray,
             size: tuple[int, int]) -> tuple[list[Any], Any]:
        """(targets, what the image's outputs read as: a transcript, or None) of one image."""
        raise NotImplementedError

    def seed(self, explained: np.ndarray, target: Any, out: np.ndarray | None = None
             ) -> np.ndarray:
        """The seed over one image's explained tensor for ``target``, written into ``out``
        (zeros of its shape) where given."""
        seed = weighted_seed(explained, target.weights, self.fmt, self.score)
        if out is None:
            return seed
        out[...] = seed
        return out

    def seeds(self, explained: np.ndarray, plans: list[list[Any]]) -> np.ndarray | SparseSeeds:
        """The seed rows [B, K, ...] of every image's targets (``plans[b]``; K the most
        targets of an image, at least 1; zeros past an image's own) over the explained
        tensor [B, ...]."""
        out = np.zeros(_seeds_shape(explained, plans), np.float32)
        for b, row in enumerate(plans):
            for j, target in enumerate(row):
                self.seed(explained[b], target, out=out[b, j])
        return out

    def scores(self, explained: np.ndarray, targets: Sequence[Any]) -> np.ndarray:
        """Each target's score on the matching row of ``explained`` [M, ...]; None targets
        (padding) score 0."""
        empty = np.zeros(explained.shape[1:], np.float32)
        return weighted_scores(explained, [t.weights if t is not None else empty
                                           for t in targets], self.fmt, self.score)

    @staticmethod
    def item(target: Any) -> Any:
        """What the target's map shows (a Detection, Region or Character)."""
        return target.item

    def nothing(self, b: int) -> str:
        """The note for an image with nothing to explain."""
        return f"image {b}: nothing to explain (targets {self.spec!r})"

    def notes(self) -> list[str]:
        """Notes about the whole batch (e.g. what is missing to name the targets)."""
        return []


class DetectPlanner(Planner):
    """Detections (see :mod:`explainer.detection`)."""

    task = "detect"

    options = ("conf", "iou")

    def __init__(self, *args: Any, conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU,
                 top_k: int | None = None) -> None:
        super().__init__(*args)
        self.spec = target_spec(self.spec, top_k)
        check_spec(self.spec, self.labels, self.num_classes)
        check_thresholds(conf, iou)
        self.conf, self.iou = conf, iou

    def plan(self, outputs: dict[str, np.ndarray], explained: np.ndarray,
             size: tuple[int, int]) -> tuple[list[Any], Any]:
        cands = decode(outputs, self.fmt, size)
        return plan_detections(self.spec, cands, self.conf, self.iou, self.labels, size), None

    def seed(self, explained: np.ndarray, target: DetectionTarget,
             out: np.ndarray | None = None) -> np.ndarray:
        return seed_row(explained, target, self.fmt, self.score, out)

    def seeds(self, explained: np.ndarray, plans: list[list[Any]]) -> SparseSeeds:
        """A detection's seed is a few elements of a large tensor: kept as they are."""
        out = SparseSeeds(_seeds_shape(explained, plans))
        for b, row in enumerate(plans):
            for j, target in enumerate(row):
                out.set(b, j, seed_terms(explained[b], target, self.fmt, self.score))
        return out

    def scores(self, explained: np.ndarray, targets: Sequence[Any]) -> np.ndarray:
        return target_scores(explained, [t if t is not None else DetectionTarget(None)
                                         for t in targets], self.fmt, self.score)

    @staticmethod
    def item(target: DetectionTarget) -> Any:
        return target.detection

    def nothing(self, b: int) -> str:
        return f"image {b}: no detection to explain (conf {self.conf}, targets {self.spec!r})"


class SegmentPlanner(Planner):
    """Classes and regions of a mask output (see :mod:`explainer.segmentation`)."""

    task = "segment"
    options = ("threshold",)

    def __init__(self, *args: Any, threshold: float = DEFAULT_THRESHOLD,
                 top_k: int | None = None) -> None:
        super().__init__(*args)
        self.spec = target_spec(self.spec, top_k)
        check_region_spec(self.spec, self.fmt, self.labels)
        check_threshold(threshold)
        self.threshold = threshold

    def plan(self, outputs: dict[str, np.ndarray], explained: np.ndarray,
             size: tuple[int, int]) -> tuple[list[Any], Any]:
        return plan_regions(self.spec, explained, self.fmt, self.labels, size,
                            self.threshold), None

    def nothing(self, b: int) -> str:
        regions = region_terms(None, self.fmt) == ["regions"]  # the format's default targets
        what = "region above the threshold" if regions else "class"
        return f"image {b}: no predicted {what} to explain (targets {self.spec!r})"


class SequencePlanner(Planner):
    """Decoded characters of a CTC output (see :mod:`explainer.sequence`)."""

    task = "sequence"

    def __init__(self, *args: Any, top_k: int | None = None) -> None:
        super().__init__(*args)
        if top_k is not None:
            raise TargetError("top_k (--top-k) is for classes and detections; a text "
                              "recognizer's targets are 'characters', 'string' or positions")
        check_sequence_spec(self.spec)

    def plan(self, outputs: dict[str, np.ndarray], explained: np.ndarray,
             size: tuple[int, int]) -> tuple[list[Any], Any]:
        transcript = ctc_decode(explained, self.fmt, self.labels, size[1], size[0])
        return plan_characters(self.spec, transcript, explained.shape), transcript

    def nothing(self, b: int) -> str:
        return f"image {b}: no character decoded (every timestep is the blank)"

    def notes(self) -> list[str]:
        if self.labels is not None:
            return []
        return ["the bundle has no character list: characters are shown as their vocabulary "
                "indices (#i); export with labels= (--labels keys.txt)"]
