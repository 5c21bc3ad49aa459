"""Object detectors: choose the detections to explain (the decoding of their outputs and the
seeds of the chosen detections are in :mod:`explainer.detection_formats`, re-exported here).

A detection bundle (``manifest["task"] == "detect"``) keeps the detector's outputs in its head
and differentiates ``sum(seed * E)`` for one *explained* tensor ``E`` (``manifest["head"]
["logits"]``): the detector's output itself, or, where the graph has it, the class logits
before the final sigmoid. The manifest's ``format`` says how to read the outputs
(:mod:`explainer.detection_formats` decodes them: YOLOv8, YOLOv5, YOLOX, end-to-end, boxes/
scores/labels and PicoDet layouts).

Boxes are in model-input pixels. A detection's score is its confidence ``s`` with
``score="probability"``; with ``score="logit"`` (the default, as classifiers look through their
softmax) it is ``log(s / (1 - s))``, which for a sigmoid score is the class logit before the
sigmoid. Where the graph has that logit as a tensor (the YOLOv8 layout: ``Concat(boxes,
Sigmoid(logits))``) the head explains the tensor itself; elsewhere the chain rule through the
output gives the same gradient.

Targets (:func:`plan_detections`): ``"detections"`` (every detection above ``conf`` after NMS
at ``iou``), ``"topK"`` (the K best of those), a class id or name (all candidates of that class
above ``conf``, one map of their summed score), a box ``{"box": (x1, y1, x2, y2), "class":
name}`` (the candidate of that class overlapping the box most, IoU > 0.5), or a list of these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .detection_formats import (
    EPS,
    FORMATS,
    Candidates,
    anchor_grid,
    decode,
    seed_row,
    seed_terms,
    target_scores,
)
from .errors import TargetError, UsageError
from .targets import class_id

__all__ = [
    "DEFAULT_CONF",
    "DEFAULT_IOU",
    "FORMATS",
    "Candidates",
    "Detection",
    "DetectionTarget",
    "anchor_grid",
    "decode",
    "nms",
    "plan_detections",
    "seed_row",
    "seed_terms",
    "target_scores",
]

#: default confidence threshold of ``"detections"`` targets
DEFAULT_CONF = 0.25
#: default IoU threshold of the NMS
DEFAULT_IOU = 0.45
#: the most detections one image yields (as Ultralytics' ``max_det``)
MAX_DETECTIONS = 300
#: :func:`nms` first tries the best ``NMS_PREFIX * limit`` boxes (all of them when that
#: prefix keeps fewer than ``limit``)
NMS_PREFIX = 16
_BOX_MATCH_IOU = 0.5


@dataclass(frozen=True)
class Detection:
    """One explained detection (or, for a class target, the class's detections together).

    Attributes:
        box: ``(x1, y1, x2, y2)`` in model-input pixels (a class target: the box enclosing its
            detections).
        score: the detection's confidence (a probability).
        class_id: its class.
        label: the class name when the bundle has labels.
        candidate: the row of the detector's output (anchor or kept box) it comes from; -1 for
            a class target.
        count: how many candidates the explained score sums (1 for a detection).
        image_box: ``box`` in the original image's pixels, where the preprocessing is known.
    """

    box: tuple[float, float, float, float]
    score: float
    class_id: int
    label: str | None = None
    candidate: int = -1
    count: int = 1
    image_box: tuple[float, float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``summary.json``)."""
        return {"box": [round(float(v), 2) for v in self.box], "score": float(self.score),
                "class_id": int(self.class_id), "label": self.label,
                "candidate": int(self.candidate), "count": int(self.count),
                "image_box": None if self.image_box is None else
                [round(float(v), 2) for v in self.image_box]}



@dataclass
class DetectionTarget:
    """One explained map: what it shows and which (candidate, class) scores it sums."""

    detection: Detection
    pairs: list[tuple[int, int]] = field(default_factory=list)


# --- selection -----------------------------------------------------------------------------------
def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with boxes [M, 4] (x1, y1, x2, y2)."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(np.clip(box[2:] - box[:2], 0, None))
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    return inter / np.maximum(area + areas - inter, EPS)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, classes: np.ndarray | None = None,
        limit: int = MAX_DETECTIONS) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best first, at most
    ``limit`` (class-aware when ``classes`` is given: boxes of different classes never suppress
    each other, by Ultralytics' offset of each class's boxes)."""
    boxes = boxes.astype(np.float64)
    if classes is not None and len(boxes):
        span = float(np.abs(boxes).max()) * 2 + 1
        boxes = boxes + (classes.astype(np.float64) * span)[:, None]
    # the best boxes first: a box is kept or not by the boxes before it alone, so when this
    # prefix of the order keeps ``limit`` boxes, the rest need not be sorted or scanned
    prefix = NMS_PREFIX * limit
    if 0 < prefix < len(scores):
        cut = np.partition(scores, len(scores) - prefix)[len(scores) - prefix]
        rows = np.flatnonzero(scores >= cut)  # all ties of the cut: a prefix of the full order
        keep = _greedy(boxes[rows], scores[rows], iou, limit)
        if len(keep) == limit:
            return rows[keep]
    return _greedy(boxes, scores, iou, limit)


def _greedy(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """:func:`nms` of (class-offset) float64 ``boxes``: the kept indices, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best, order = order[0], order[1:]
        keep.append(int(best))
        w = np.clip(np.minimum(x2[best], x2[order]) - np.maximum(x1[best], x1[order]), 0, None)
        h = np.clip(np.minimum(y2[best], y2[order]) - np.maximum(y1[best], y1[order]), 0, None)
        inter = w * h
        overlap = inter / np.maximum(areas[best] + areas[order] - inter, EPS)
        order = order[overlap <= iou]
    return np.array(keep, dtype=np.int64)


def detections(cands: Candidates, conf: float, iou: float,
               labels: Sequence[str] | None = None,
               limit: int = MAX_DETECTIONS) -> list[Detection]:
    """The image's detections: each candidate's best class above ``conf``, then class-aware NMS
    (skipped when the graph selected them already), best first, at most ``limit``."""
    best = cands.scores.argmax(axis=1) if cands.scores.size else np.zeros(0, np.int64)
    score = cands.scores[np.arange(len(best)), best] if cands.scores.size else np.zeros(0)
    rows = np.flatnonzero(score >= conf)
    if not cands.selected:
        rows = rows[nms(cands.boxes[rows], score[rows], iou, best[rows], limit)]
    else:
        rows = rows[np.argsort(-score[rows], kind="stable")][:limit]
    return [_detection(cands, int(a), int(best[a]), labels) for a in rows]


def _detection(cands: Candidates, a: int, c: int, labels: Sequence[str] | None) -> Detection:
    return Detection(tuple(float(v) for v in cands.boxes[a]), float(cands.scores[a, c]), c,
                     _label(labels, c), candidate=a)


def _label(labels: Sequence[str] | None, c: int) -> str | None:
    return labels[c] if labels is not None and 0 <= c < len(labels) else None


_TOP = re.compile(r"^top(\d*)$")


def _class_target(cands: Candidates, c: int, conf: float, iou: float,
                  labels: Sequence[str] | None) -> DetectionTarget | None:
    """All candidates of class ``c`` above ``conf``: one summed score (None when there is none)."""
    n = cands.scores.shape[1]
    if not 0 <= c < n:
        raise TargetError(f"class id {c} is out of range: the detector has {n} classes (valid "
                          f"ids 0..{n - 1})")
    rows = np.flatnonzero(cands.scores[:, c] >= conf)
    if not rows.size:
        return None
    kept = rows if cands.selected else rows[nms(cands.boxes[rows], cands.scores[rows, c], iou)]
    boxes = cands.boxes[kept]
    box = (float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()),
           float(boxes[:, 3].max()))
    detection = Detection(box, float(cands.scores[rows, c].max()), c, _label(labels, c),
                          count=len(rows))
    return DetectionTarget(detection, [(int(a), c) for a in rows])


def _box_target(cands: Candidates, spec: dict[str, Any], conf: float, iou: float,
                labels: Sequence[str] | None, size: tuple[int, int] | None) -> DetectionTarget:
    """The detection (else the candidate) of the given class overlapping ``spec["box"]`` most,
    with IoU > 0.5, as pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` matches boxes."""
    try:
        box = np.asarray(spec["box"], dtype=np.float64).reshape(4)
    except (KeyError, TypeError, ValueError) as err:
        raise TargetError(f"a box target needs 'box': (x1, y1, x2, y2), got {spec!r}") from err
    if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise TargetError(f"box {box.tolist()} is empty or not finite; give x1 < x2, y1 < y2")
    if size is not None:
        h, w = size
        if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
            raise TargetError(f"box {box.tolist()} lies outside the {w}x{h} model input")
    wanted, num_classes = spec.get("class"), cands.scores.shape[1]
    c = None
    if wanted is not None:
        c = class_id(wanted, labels) if isinstance(wanted, str) else int(wanted)
        if not 0 <= c < num_classes:
            raise TargetError(f"class {wanted!r} is out of range: the detector has "
                              f"{num_classes} classes")
    found = [d for d in detections(cands, conf, iou, labels) if c is None or d.class_id == c]
    if found:  # the detector's own detections first
        rows = np.array([d.candidate for d in found])
        classes = np.array([d.class_id for d in found])
    else:
        rows = np.arange(len(cands.boxes))
        classes = (cands.scores.argmax(axis=1) if c is None
                   else np.full(len(rows), c, dtype=np.int64))
    overlap = box_iou(box, cands.boxes[rows].astype(np.float64)) if rows.size else np.zeros(0)
    if not overlap.size or overlap.max() <= _BOX_MATCH_IOU:
        what = f"of class {wanted!r} " if wanted is not None else ""
        raise TargetError(f"no candidate {what}overlaps box {box.tolist()} with IoU > "
                          f"{_BOX_MATCH_IOU}; give the box in model-input pixels")
    j = int(np.argmax(overlap))
    a, k = int(rows[j]), int(classes[j])
    return DetectionTarget(_detection(cands, a, k, labels), [(a, k)])


def _terms(spec: Any) -> list[Any]:
    if spec is None:
        return ["detections"]
    if isinstance(spec, str):
        return [t.strip() for t in spec.split("+") if t.strip()] or ["detections"]
    if isinstance(spec, dict):
        return [spec]
    if isinstance(spec, (list, tuple)):
        return [t for item in spec for t in _terms(item)]
    return [spec]


def plan_detections(
    spec: Any,
    cands: Candidates,
    conf: float = DEFAULT_CONF,
    iou: float = DEFAULT_IOU,
    labels: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
) -> list[DetectionTarget]:
    """What to explain on one image (see the module docstring for the forms of ``spec``).

    Args:
        spec: the target spec.
        cands: the image's decoded candidates.
        conf: confidence threshold.
        iou: NMS IoU threshold.
        labels: class names (names may stand for class ids).
        size: the model input's (H, W), to refuse boxes outside it.

    Raises:
        TargetError: a malformed term, an unknown class, a box no candidate matches.
    """
    check_thresholds(conf, iou)
    found, found_limit = None, 0
    targets: list[DetectionTarget] = []
    for term in _terms(spec):
        if isinstance(term, dict):
            targets.append(_box_target(cands, term, conf, iou, labels, size))
            continue
        if isinstance(term, (int, np.integer)) and not isinstance(term, bool):
            target = _class_target(cands, int(term), conf, iou, labels)
            targets += [target] if target else []
            continue
        if not isinstance(term, str):
            raise TargetError(f"cannot read detection target {term!r}; use 'detections', "
                              "'top3', a class id or name, or {'box': (x1, y1, x2, y2)}")
        raw = term.replace(" ", "").lower()
        top = _TOP.match(raw)
        if raw in ("detections", "all") or top:
            want = int(top.group(1) or 1) if top else MAX_DETECTIONS
            if found is None or (len(found) < want and found_limit < MAX_DETECTIONS):
                found_limit = want if top else MAX_DETECTIONS  # NMS stops after K boxes
                found = detections(cands, conf, iou, labels, found_limit)
            chosen = found[:want]
            targets += [DetectionTarget(d, [(d.candidate, d.class_id)]) for d in chosen]
            continue
        c = int(raw) if raw.isdigit() else class_id(term, labels)
        target = _class_target(cands, c, conf, iou, labels)
        targets += [target] if target else []
    return targets


def check_thresholds(conf: float, iou: float) -> None:
    """Raise :class:`TargetError` unless ``conf`` is in [0, 1] and ``iou`` in (0, 1]."""
    if not 0.0 <= conf <= 1.0 or not 0.0 < iou <= 1.0:
        raise TargetError(f"conf (--conf) must be in [0, 1] and iou (--iou) in (0, 1], got "
                          f"conf={conf}, iou={iou}")


def target_spec(targets: Any, top_k: int | None) -> Any:
    """The detection target spec of ``targets`` or ``top_k`` (``"topK"``); never both.

    Raises:
        TargetError: both are given.
    """
    if top_k is None:
        return targets
    if targets is not None:
        raise TargetError("give either targets or top_k (--targets or --top-k), not both")
    return f"top{int(top_k)}"


#: what ``renormalize=`` may be
RENORMALIZE = (None, "boxes")


def check_renormalize(mode: str | None) -> None:
    """Raise :class:`UsageError` unless ``mode`` is one of :data:`RENORMALIZE`."""
    if mode not in RENORMALIZE:
        raise UsageError(f"unknown renormalize {mode!r}; renormalize must be 'boxes' or None "
                         "(--renormalize boxes on the command line)")


def check_spec(spec: Any, labels: Sequence[str] | None, num_classes: int) -> None:
    """Validate a detection target spec before any image (names, ids, term syntax).

    Raises:
        TargetError: naming the term at fault.
    """
    for term in _terms(spec):
        if isinstance(term, dict):
            if "box" not in term:
                raise TargetError(f"a box target needs 'box': (x1, y1, x2, y2), got {term!r}")
            wanted = term.get("class")
            if isinstance(wanted, str):
                class_id(wanted, labels)
            continue
        if isinstance(term, (int, np.integer)) and not isinstance(term, bool):
            c = int(term)
        elif isinstance(term, str):
            raw = term.replace(" ", "").lower()
            if raw in ("detections", "all") or _TOP.match(raw):
                continue
            c = int(raw) if raw.isdigit() else class_id(term, labels)
        else:
            raise TargetError(f"cannot read detection target {term!r}")
        if not 0 <= c < num_classes:
            raise TargetError(f"class id {c} is out of range: the detector has {num_classes} "
                              f"classes (valid ids 0..{num_classes - 1})")
