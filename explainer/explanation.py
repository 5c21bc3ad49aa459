"""What :meth:`explainer.Explainer.explain` returns, and the small steps that build it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .detection import Detection
from .errors import TargetError
from .layers import Heatmaps, LayerMaps
from .segmentation import Region
from .sequence import Transcript
from .targets import TargetPlan

__all__ = ["Explanation", "contrast_ids", "softmax"]


@dataclass
class Explanation:
    """CAMs for a batch of B images and K target classes (or detections) each.

    For a detector, segmenter or text recognizer the K columns are the explained items
    (detections, regions, characters): ``items[b]`` lists image b's (fewer than K where another
    image has more: the remaining columns hold zero maps, class id -1 and NaN scores),
    ``scores`` are the explained scores (logit or probability, as ``score`` says; summed over a
    region's pixels or a character's timesteps), ``probabilities`` the items' confidences (a
    region's or character's mean probability), and ``logits`` is None.

    Attributes:
        heatmaps: [B, K, H, W] float32 in [0, 1] at input resolution (bilinear upsampling,
            per-map min-max).
        cams: [B, K, h, w] raw CAMs at activation resolution, before upsampling/normalizing.
        class_ids: [B, K] int64 explained classes.
        scores: [B, K] logits of those classes.
        probabilities: [B, K] softmax probabilities of those classes.
        labels: [B][K] class names when the bundle knows them, else None.
        logits: [B, C] all logits.
        method: the CAM method used.
        contrast_ids: [B, 1] or [B, K] contrast classes whose score was subtracted, or None.
        score: what was explained: ``"logit"`` or ``"probability"``.
        layers: for a layer-sweep bundle, each layer's CAMs and heatmaps by layer name (the
            top-level ``cams`` are the first layer's, the ``heatmaps`` fused), else None.
        pixels: [B, K, C, H, W] pixel-space maps of ``guided-backprop`` / ``guided-gradcam``
            (see :mod:`explainer.pixels`), else None.
        task: ``"classify"``, ``"detect"``, ``"segment"`` or ``"sequence"``.
        detections: for a detector, each image's explained :class:`Detection` list (column k
            of ``heatmaps[b]`` is ``detections[b][k]``), else None.
        notes: one line per image that had nothing to explain (no detection above the
            threshold, no predicted region, no decoded character), else empty.
        regions: for a segmenter, each image's explained
            :class:`~explainer.segmentation.Region` list (column k is ``regions[b][k]``).
        sequence: for a text recognizer, each image's
            :class:`~explainer.sequence.Transcript` (the decoded string and its characters).
        items: for every task but classification, what each column explains: the
            detections, the regions, or the characters (a
            :class:`~explainer.sequence.Character` with ``index == -1`` is the whole string).
    """

    heatmaps: np.ndarray
    cams: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray
    labels: list[list[str]] | None
    logits: np.ndarray | None
    method: str = "gradcam"
    contrast_ids: np.ndarray | None = None
    score: str = "logit"
    pixels: np.ndarray | None = None
    layers: dict[str, LayerMaps] | None = None
    task: str = "classify"
    detections: list[list[Detection]] | None = None
    notes: list[str] = field(default_factory=list)
    regions: list[list[Region]] | None = None
    sequence: list[Transcript] | None = None
    items: list[list[Any]] | None = None

    def count(self, index: int) -> int:
        """How many targets image ``index`` has (K, or its detections, regions or characters)."""
        if self.items is not None:
            return len(self.items[index])
        return int(self.class_ids.shape[1])

    def titles(self, index: int) -> list[str]:
        """Human titles ``"<label or class id> <probability>"`` for image ``index`` (one per
        target it has)."""
        if self.detections is not None:
            return [f"{d.label if d.label is not None else d.class_id} {d.score:.3g}"
                    + (f" x{d.count}" if d.count > 1 else "") for d in self.detections[index]]
        if self.items is not None:
            return [item.title() for item in self.items[index]]
        names = self.labels[index] if self.labels else [str(c) for c in self.class_ids[index]]
        return [f"{n} {p:.3g}" for n, p in zip(names, self.probabilities[index])]

    @classmethod
    def of(
        cls, logits: np.ndarray, class_ids: np.ndarray, names: list[str] | None,
        probabilities_given: bool = False, **maps: object
    ) -> Explanation:
        """An explanation of ``class_ids`` [B, K] given the logits [B, C] (scores,
        probabilities and labels follow) and the maps (``heatmaps``, ``cams``...).
        ``probabilities_given``: ``logits`` are already a softmax's probabilities (a bundle
        whose ``head.score`` is ``"probability"``), shown as they are."""
        probabilities = logits.astype(np.float32) if probabilities_given else softmax(
            logits.astype(np.float64)).astype(np.float32)
        return cls(
            class_ids=class_ids,
            scores=np.take_along_axis(logits, class_ids, axis=1),
            probabilities=np.take_along_axis(probabilities, class_ids, axis=1),
            labels=None if names is None else [[names[c] for c in row] for row in class_ids],
            logits=logits,
            **maps,  # type: ignore[arg-type]
        )


def contrast_ids(
    plan: TargetPlan | None, logits: np.ndarray | None, class_ids: np.ndarray
) -> np.ndarray | None:
    """The contrast classes [B, 1] or [B, K] of a ``contrast=`` plan."""
    if plan is None:
        return None
    ids = plan.resolve(logits) if plan.needs_logits else plan.class_ids
    if ids.shape[1] not in (1, class_ids.shape[1]):
        raise TargetError(
            f"{ids.shape[1]} contrast classes per image for {class_ids.shape[1]} targets; give "
            "one contrast class per image or one per target"
        )
    return ids


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits [B, C]."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)




def task_explanation(
    task: str,
    items: list[list[Any]],
    scores: np.ndarray,
    maps: dict[str, LayerMaps],
    score: str,
    method: str,
    fuse: str | None,
    shape: tuple[int, int, int],
    notes: list[str],
    transcripts: list[Any] | None = None,
    upsample: Heatmaps | None = None,
) -> Explanation:
    """A detector's, segmenter's or text recognizer's :class:`Explanation`: K = the most items
    any image has; images with fewer get zero maps, class id -1 and NaN scores in the remaining
    columns.

    Args:
        task: the bundle's task.
        items: each image's explained items (detections, regions, characters).
        scores: [B, K] the explained scores (NaN in padded columns).
        maps: each layer's maps ([B, max(K, 1), ...]); empty when nothing was explained.
        score: ``"logit"`` or ``"probability"``.
        method: the CAM method.
        fuse: how a layer sweep's maps combine.
        shape: (B, H, W) of the input.
        notes: lines about images with nothing to explain.
        transcripts: a text recognizer's decoded strings, one per image.
        upsample: computes the heatmaps from the CAMs (None: numpy;
            :data:`explainer.layers.Heatmaps`).
    """
    from .layers import fuse as fuse_maps

    batch, h, w = shape
    k = scores.shape[1]
    class_ids = np.full((batch, k), -1, dtype=np.int64)
    probabilities = np.full((batch, k), np.nan, dtype=np.float32)
    for b, row in enumerate(items):
        for j, item in enumerate(row):
            class_ids[b, j], probabilities[b, j] = item.class_id, item.score
    if maps:
        trimmed = {name: m.columns(k) for name, m in maps.items()}
        for b, row in enumerate(items):  # padded columns: no target, no map
            for m in trimmed.values():
                m.cams[b, len(row):] = 0
                if m.computed:
                    m.heatmaps[b, len(row):] = 0
        heatmaps = fuse_maps(trimmed, fuse, upsample)  # zero where every layer's map is
        cams = next(iter(trimmed.values())).cams
    else:
        trimmed, heatmaps = {}, np.zeros((batch, 0, h, w), np.float32)
        cams = np.zeros((batch, 0, 1, 1), np.float32)
    labels = [[item.label if item.label is not None else str(item.class_id) for item in row]
              + [""] * (k - len(row)) for row in items]
    return Explanation(
        heatmaps=heatmaps, cams=cams, class_ids=class_ids, scores=scores.astype(np.float32),
        probabilities=probabilities, labels=labels, logits=None, method=method, score=score,
        layers=trimmed if len(trimmed) > 1 else None, task=task, notes=notes, items=items,
        detections=items if task == "detect" else None,
        regions=items if task == "segment" else None, sequence=transcripts,
    )


def _stack(arrays: list[np.ndarray], k: int, value: float) -> np.ndarray:
    """Per-image arrays [1, K_b, ...] as one [B, K, ...]: columns padded with ``value``, and the
    1x1 placeholders of images without maps given the others' map size."""
    size = max((a.shape[2:] for a in arrays), key=lambda s: int(np.prod(s)))
    out = []
    for a in arrays:
        if a.shape[2:] != size:  # an all-zero placeholder
            a = np.zeros((*a.shape[:2], *size), a.dtype)
        pad = np.full((a.shape[0], k - a.shape[1], *size), value, a.dtype)
        out.append(np.concatenate([a, pad], axis=1))
    return np.concatenate(out)


def stack_explanations(parts: list[Explanation]) -> Explanation:
    """Per-image explanations of a detector, segmenter or text recognizer as one batch (K: the
    most any image has; the others padded with zero maps, class id -1 and NaN scores, as
    :func:`task_explanation` pads them)."""
    k = max(p.heatmaps.shape[1] for p in parts)
    layers = None
    names = next((list(p.layers) for p in parts if p.layers), None)
    if names:
        empty = [LayerMaps(np.zeros((1, 0, 1, 1), np.float32), size=p.heatmaps.shape[-2:])
                 for p in parts]
        maps = {name: [p.layers[name] if p.layers else e for p, e in zip(parts, empty)]
                for name in names}
        layers = {name: LayerMaps(
            _stack([m.cams for m in row], k, 0.0),
            _stack([m.heatmaps for m in row], k, 0.0) if any(m.computed for m in row) else None,
            row[0].size) for name, row in maps.items()}
    first = parts[0]

    def stacked(name: str, value: float) -> np.ndarray:
        return _stack([getattr(p, name) for p in parts], k, value)

    return Explanation(
        heatmaps=stacked("heatmaps", 0.0), cams=stacked("cams", 0.0),
        class_ids=stacked("class_ids", -1), scores=stacked("scores", np.nan),
        probabilities=stacked("probabilities", np.nan),
        labels=[(p.labels[0] if p.labels else []) + [""] * (k - p.heatmaps.shape[1])
                for p in parts],
        logits=None, method=first.method, score=first.score, layers=layers, task=first.task,
        items=[p.items[0] for p in parts],
        detections=None if first.detections is None else [p.detections[0] for p in parts],
        regions=None if first.regions is None else [p.regions[0] for p in parts],
        sequence=None if first.sequence is None else [p.sequence[0] for p in parts],
        notes=[note.replace("image 0", f"image {b}") for b, p in enumerate(parts)
               for note in p.notes],
    )


def renormalized_in_boxes(explanation: Explanation, upsample: Heatmaps | None = None
                          ) -> Explanation:
    """An explanation whose heatmaps are each zero outside its detection's box and
    min-max scaled to [0, 1] inside it (pytorch-grad-cam's ``renormalize_cam_in_bounding_boxes``,
    per detection); every layer's heatmaps likewise (computed by ``upsample`` where they do not
    exist yet). The raw ``cams`` are unchanged."""
    from dataclasses import replace

    def rescale(heatmaps: np.ndarray) -> np.ndarray:
        out = np.zeros_like(heatmaps)
        h, w = heatmaps.shape[-2:]
        for b, row in enumerate(explanation.items or []):
            for k, item in enumerate(row):
                x1, y1, x2, y2 = item.box
                top, left = min(max(int(np.floor(y1)), 0), h), min(max(int(np.floor(x1)), 0), w)
                bottom, right = min(max(int(np.ceil(y2)), 0), h), min(max(int(np.ceil(x2)), 0), w)
                region = heatmaps[b, k, top:bottom, left:right]
                if region.size:
                    low, span = region.min(), region.max() - region.min()
                    out[b, k, top:bottom, left:right] = (region - low) / span if span > 0 else 0
        return out

    layers = None if explanation.layers is None else {
        name: LayerMaps(maps.cams, rescale(maps.heatmaps_by(upsample)))
        for name, maps in explanation.layers.items()}
    return replace(explanation, heatmaps=rescale(explanation.heatmaps), layers=layers)
