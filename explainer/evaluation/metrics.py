"""The perturbation and localisation metrics (definitions in :mod:`.spec`), per (image,
target) pair.

Each group function takes the :class:`Pairs` of an evaluation and returns, per metric name,
the values [B, K] and optional per-pair details (curves), running the model through
:class:`~.scoring.Scores`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .numeric import auc, gaussian_blur, impute, minmax
from .spec import EvaluationError

__all__ = ["BASELINES", "Pairs", "confidence", "localisation", "perturbation_curve", "road"]

#: baselines of deletion and insertion
BASELINES = ("zero", "blur", "mean")

#: what a group function returns: name -> (values [B, K], details [B][K] or None)
Values = dict[str, tuple[np.ndarray, list[list[Any]] | None]]


@dataclass
class Pairs:
    """The (image, target) pairs of one evaluation.

    Attributes:
        images: the inputs as float64 [B, C, H, W] (whatever the model layout).
        maps: ``E`` [B, K, H, W], min-max scaled per map.
        class_ids: the explained classes [B, K].
        keys: what the scorer reads for each pair [B, K]: the class id of a classifier's
            target, the pair's flat index ``b * K + k`` for a task's held target (None: the
            class ids).
        valid: [B, K] True where image b has a target k (None: every pair); the columns past an
            image's last detection, region or character are left out.
        boxes: per image, per target, the boxes or bool mask [H, W] a localisation metric
            uses when none are given (a task item's own region: a detection's box, a region's
            mask, a character's columns), or None.
    """

    images: np.ndarray
    maps: np.ndarray
    class_ids: np.ndarray
    keys: np.ndarray | None = None
    valid: np.ndarray | None = None
    boxes: list[list[Any]] | None = None

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = self.class_ids
        if self.valid is None:
            self.valid = np.ones(self.maps.shape[:2], bool)

    @classmethod
    def of(cls, images: np.ndarray, heatmaps: np.ndarray, class_ids: np.ndarray,
           **extra: Any) -> Pairs:
        """Pairs from CHW images and heatmaps [B, K, H, W] (rescaled here to [0, 1]);
        ``extra``: ``keys``, ``valid``, ``boxes``."""
        if heatmaps.ndim != 4 or heatmaps.shape[0] != images.shape[0]:
            raise EvaluationError(f"heatmaps must be [B, K, H, W] for a batch of "
                                  f"{images.shape[0]}, got {list(heatmaps.shape)}")
        if heatmaps.shape[2:] != images.shape[2:]:
            raise EvaluationError(f"heatmaps of {list(heatmaps.shape[2:])} do not match the "
                                  f"input's H, W {list(images.shape[2:])}; evaluate the "
                                  "explanation of this very input")
        maps = (np.stack([[minmax(m) for m in row] for row in heatmaps]) if heatmaps.size
                else np.zeros(heatmaps.shape, np.float64))
        return cls(images, maps, np.asarray(class_ids, np.int64), **extra)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for b in range(self.maps.shape[0]):
            for k in range(self.maps.shape[1]):
                if self.valid[b, k]:
                    yield b, k

    def __len__(self) -> int:
        return int(self.valid.sum())

    def key(self, b: int, k: int) -> int:
        """What the scorer reads for pair (b, k)."""
        return int(self.keys[b, k])

    def table(self, values: Sequence[Any]) -> np.ndarray:
        """Per-pair values in iteration order as an array [B, K] (NaN where no target)."""
        out = np.full(self.maps.shape[:2], np.nan)
        out[self.valid] = np.asarray(values, np.float64).reshape(-1)
        return out

    def nested(self, values: Sequence[Any]) -> list[list[Any]]:
        """Per-pair values in iteration order as a [B][K] list (None where no target)."""
        out: list[list[Any]] = [[None] * self.maps.shape[1] for _ in range(self.maps.shape[0])]
        for (b, k), value in zip(self, values, strict=True):
            out[b][k] = value
        return out


def confidence(pairs: Pairs, scores: Any) -> Values:
    """Average Drop and Increase in Confidence: ``Y = s(x)``, ``O = s(E * x)`` per pair."""
    runs = scores.of_groups(
        (np.stack([pairs.images[b], pairs.maps[b, k] * pairs.images[b]]),
         pairs.key(b, k)) for b, k in pairs)
    y = np.array([r[0] for r in runs])
    o = np.array([r[1] for r in runs])
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(y > 0, 100 * np.maximum(0, y - o) / np.where(y > 0, y, 1), 0.0)
    details = pairs.nested([{"original": float(a), "masked": float(b)} for a, b in zip(y, o)])
    return {"avg-drop": (pairs.table(drop), details),
            "increase": (pairs.table(100.0 * (o > y)), details)}


def _baseline(image: np.ndarray, kind: str, mean: Sequence[float] | None) -> np.ndarray:
    if kind == "zero":
        return np.zeros_like(image)
    if kind == "blur":
        return gaussian_blur(image)
    if kind == "mean":
        if mean is None or len(mean) != image.shape[0]:
            raise EvaluationError(f"baseline 'mean' needs mean= with one value per channel "
                                  f"({image.shape[0]}), in the model input's scale")
        return np.broadcast_to(np.asarray(mean, np.float64)[:, None, None], image.shape).copy()
    raise EvaluationError(f"unknown baseline {kind!r}; choose from {BASELINES}")


def _curve_copies(image: np.ndarray, heatmap: np.ndarray, start: np.ndarray, end: np.ndarray,
                  steps: int) -> np.ndarray:
    """``steps + 1`` copies going from ``start`` to ``end`` by the pixels ranked by the map
    (highest first): copy i takes ``end``'s values at the first ``round(i * H * W / steps)``."""
    h, w = heatmap.shape
    order = np.argsort(-heatmap.ravel(), kind="stable")
    rank = np.empty(h * w, np.int64)
    rank[order] = np.arange(h * w)
    rank = rank.reshape(h, w)
    counts = np.rint(np.arange(steps + 1) * (h * w) / steps).astype(np.int64)
    changed = rank[None] < counts[:, None, None]  # [steps + 1, H, W]
    return np.where(changed[:, None], end[None], start[None])


def perturbation_curve(pairs: Pairs, scores: Any, kind: str, steps: int = 50,
                       baseline: str = "zero", mean: Sequence[float] | None = None) -> Values:
    """Deletion (``kind="deletion"``: from ``x`` towards the baseline) or insertion (from the
    baseline towards ``x``): the curve's trapezoid area, and the curve in the details."""
    if steps < 1:
        raise EvaluationError(f"steps must be at least 1, got {steps}")

    def groups() -> Iterator[tuple[np.ndarray, int]]:
        for b, k in pairs:
            image = pairs.images[b]
            base = _baseline(image, baseline, mean)
            start, end = (image, base) if kind == "deletion" else (base, image)
            yield (_curve_copies(image, pairs.maps[b, k], start, end, steps),
                   pairs.key(b, k))

    curves = scores.of_groups(groups())
    areas = [auc(c) for c in curves]
    return {kind: (pairs.table(areas), pairs.nested([{"curve": c.tolist()} for c in curves]))}


def road(pairs: Pairs, scores: Any, percentiles: Sequence[float] = tuple(range(10, 100, 10)),
         noise: float = 0.01, seed: int = 0) -> Values:
    """ROAD: MoRF and LeRF means of ``s(imputed) - s(x)`` over ``percentiles``, and
    ``(LeRF - MoRF) / 2``. The imputation noise is drawn from ``numpy.random.default_rng(seed)``
    (pytorch-grad-cam draws it with ``torch.randn_like``)."""
    rng = np.random.default_rng(seed)
    n = len(percentiles)

    def groups() -> Iterator[tuple[np.ndarray, int]]:
        for b, k in pairs:
            image, e = pairs.images[b], pairs.maps[b, k]
            copies = [image]
            for order in (e, 1 - e):  # MoRF removes the top of E, LeRF the top of 1 - E
                for q in percentiles:  # as pytorch-grad-cam: keep the pixels < the percentile
                    keep = order < np.percentile(order, q)
                    copies.append(impute(image, keep, noise, rng))
            yield np.stack(copies), pairs.key(b, k)

    runs = scores.of_groups(groups())
    morf = np.array([np.mean(r[1:n + 1] - r[0]) for r in runs])
    lerf = np.array([np.mean(r[n + 1:] - r[0]) for r in runs])
    details = pairs.nested([{"percentiles": list(percentiles), "morf": (r[1:n + 1] - r[0]).tolist(),
                             "lerf": (r[n + 1:] - r[0]).tolist()} for r in runs])
    return {"road-morf": (pairs.table(morf), None), "road-lerf": (pairs.table(lerf), None),
            "road": (pairs.table((lerf - morf) / 2), details)}


def _region(boxes: Any, shape: tuple[int, int], image: int) -> np.ndarray:
    """The union of an image's boxes ``[x0, y0, x1, y1]`` (input pixels, end exclusive) or a
    mask [H, W], as a bool mask."""
    if isinstance(boxes, np.ndarray) and boxes.dtype == bool:
        if boxes.shape != shape:
            raise EvaluationError(f"image {image}: mask of {list(boxes.shape)}, expected "
                                  f"{list(shape)} (the model input's H, W)")
        return boxes
    region = np.zeros(shape, bool)
    for box in boxes:
        if len(box) != 4:
            raise EvaluationError(f"image {image}: box {box} is not [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        region[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return region


def localisation(pairs: Pairs, boxes: Sequence[Any] | None) -> Values:
    """Pointing game and energy-based pointing game against each image's boxes or mask (when
    ``boxes`` is None: each pair's own region, :attr:`Pairs.boxes`)."""
    if boxes is None and pairs.boxes is None:
        raise EvaluationError("pointing and energy need boxes=: one list of [x0, y0, x1, y1] "
                              "boxes (model input pixels) or one bool mask [H, W] per image")
    if boxes is not None and len(boxes) != pairs.maps.shape[0]:
        raise EvaluationError(f"boxes= has {len(boxes)} entries for {pairs.maps.shape[0]} "
                              "image(s); give one per image")
    hits, energy = [], []
    for b, k in pairs:
        e = pairs.maps[b, k]
        given = boxes[b] if boxes is not None else pairs.boxes[b][k]  # type: ignore[index]
        region = _region(given, e.shape, b)
        hits.append(float(region.flat[int(np.argmax(e))]))
        total = e.sum()
        energy.append(float(e[region].sum() / total) if total > 0 else 0.0)
    return {"pointing": (pairs.table(hits), None), "energy": (pairs.table(energy), None)}
