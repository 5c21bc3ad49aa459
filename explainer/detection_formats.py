"""Detector output formats: decode each format's outputs into candidate boxes and scores, and
build the seeds and scores of explained detections from the format's terms.

A detection bundle (``manifest["task"] == "detect"``) keeps the detector's outputs in its head
and differentiates ``sum(seed * E)`` for one *explained* tensor ``E`` (``manifest["head"]
["logits"]``): the detector's output itself, or, where the graph has it, the class logits
before the final sigmoid. The manifest's ``format`` says how to read the outputs:

=====================  =============================================  ======================
format                 outputs                                        confidence s
=====================  =============================================  ======================
``yolov8``             ``[N, 4+C, A]``: centre-xywh, C class          class probability
                       probabilities (Ultralytics YOLOv8/YOLO11)
``yolov5``             ``[N, A, 5+C]``: centre-xywh, objectness, C    objectness x class
                       class probabilities (YOLOv5/YOLOv7)            probability
``yolox``              ``[N, A, 5+C]`` as ``yolov5``, the boxes still  objectness x class
                       grid offsets and log sizes (YOLOX exported      probability
                       without decoding: decoded here per stride)
``end2end``            ``[N, K, 6]``: x1, y1, x2, y2, score, class    score
                       (selection inside: YOLOv10/YOLO26 style)
``boxes_scores_labels``  ``boxes [K, 4]``, ``scores [K]``, ``labels``   score
                       ``[K]`` (torchvision detectors exported with
                       their NMS inside)
``picodet``            per stride ``[N, A_s, C]`` class probabilities     class probability
                       and ``[N, A_s, 4 (R+1)]`` box distributions
                       (PicoDet/NanoDet/GFL; decoded here: softmax
                       over R+1 bins, expectation x stride, distances
                       from the cell centre)
=====================  =============================================  ======================

Each format is one :class:`~explainer.tasks.spec.FormatSpec` in :data:`SPECS` (its layout,
decoder and seed terms); :data:`explainer.tasks.FORMATS` lists them with the other tasks'.
Boxes are in model-input pixels; see :mod:`explainer.detection` for how detections are chosen
and what their scores mean.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import UsageError
from .tasks.spec import FormatSpec

if TYPE_CHECKING:
    from .detection import DetectionTarget

__all__ = [
    "EPS",
    "FORMATS",
    "SPECS",
    "Candidates",
    "anchor_grid",
    "decode",
    "seed_row",
    "seed_terms",
    "target_scores",
]

#: the floor of denominators and logarithms' arguments
EPS = 1e-12


@dataclass
class Candidates:
    """A detector's decoded output for one image.

    Attributes:
        boxes: [A, 4] x1, y1, x2, y2 in model-input pixels.
        scores: [A, C] confidence of every class (zero where a format gives one class per row).
        selected: the rows are already the model's final detections (NMS inside the graph).
    """

    boxes: np.ndarray
    scores: np.ndarray
    selected: bool = False



def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    xy, wh = xywh[:, :2], xywh[:, 2:4]
    return np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)


def _sparse_scores(scores: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    dense = np.zeros((len(scores), num_classes), dtype=np.float32)
    ids = np.clip(classes.astype(np.int64), 0, num_classes - 1)
    dense[np.arange(len(scores)), ids] = scores
    return dense


_Size = tuple[int, int]


def _decode_yolov8(out: dict[str, np.ndarray], p: dict[str, Any], size: _Size) -> Candidates:
    rows = out[p["outputs"]["predictions"]]  # [4+C, A]
    # each part transposed into its own array: a row-contiguous [A, C] argmax is 2x faster
    return Candidates(_xywh_to_xyxy(rows[:4].T.astype(np.float32)),
                      np.ascontiguousarray(rows[4:].T, dtype=np.float32))


def _decode_yolov5(out: dict[str, np.ndarray], p: dict[str, Any], size: _Size) -> Candidates:
    rows = out[p["outputs"]["predictions"]].astype(np.float32)  # [A, 5+C]
    return Candidates(_xywh_to_xyxy(rows[:, :4]), rows[:, 4:5] * rows[:, 5:])


def anchor_grid(size: _Size, strides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell corners (x, y) [A, 2] and strides [A] of a dense head at input ``size`` (H, W),
    stride by stride, row-major within each (ceil(H / s) x ceil(W / s) cells)."""
    cells, steps = [], []
    for s in strides:
        h, w = -(-size[0] // s), -(-size[1] // s)
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        steps.append(np.full(h * w, s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)


def _decode_yolox(out: dict[str, np.ndarray], p: dict[str, Any], size: _Size) -> Candidates:
    rows = out[p["outputs"]["predictions"]].astype(np.float32)  # [A, 5+C], raw boxes
    grid, stride = anchor_grid(size, p.get("strides", (8, 16, 32)))
    if len(grid) != len(rows):
        raise UsageError(f"format yolox: {len(rows)} rows, but strides {p.get('strides')} give "
                         f"{len(grid)} cells at {size[0]}x{size[1]}; set the format's strides")
    xy = (rows[:, :2] + grid) * stride[:, None]
    wh = np.exp(np.minimum(rows[:, 2:4], 20.0)) * stride[:, None]
    return Candidates(_xywh_to_xyxy(np.concatenate([xy, wh], axis=1)),
                      rows[:, 4:5] * rows[:, 5:])


def _decode_end2end(out: dict[str, np.ndarray], p: dict[str, Any], size: _Size) -> Candidates:
    rows = out[p["outputs"]["predictions"]].astype(np.float32)  # [K, 6]
    return Candidates(rows[:, :4], _sparse_scores(rows[:, 4], rows[:, 5], _classes(p, rows[:, 5])),
                      selected=True)


def _decode_bsl(out: dict[str, np.ndarray], p: dict[str, Any], size: _Size) -> Candidates:
    names = p["outputs"]
    boxes = out[names["boxes"]].reshape(-1, 4).astype(np.float32)
    scores = out[names["scores"]].reshape(-1).astype(np.float32)
    labels = out[names["labels"]].reshape(-1)
    return Candidates(boxes, _sparse_scores(scores, labels, _classes(p, labels)), selected=True)


def _decode_picodet(out: dict[str, np.ndarray], p: dict[str, Any], size: _Size) -> Candidates:
    names, strides, bins = p["outputs"], p["strides"], p["reg_max"] + 1
    scores = np.concatenate([out[n].reshape(-1, out[n].shape[-1]) for n in names["scores"]])
    boxes = []
    for name, stride in zip(names["boxes"], strides, strict=True):
        dist = out[name].reshape(-1, 4, bins).astype(np.float64)
        dist = np.exp(dist - dist.max(axis=2, keepdims=True))
        dist /= dist.sum(axis=2, keepdims=True)
        ltrb = (dist * np.arange(bins)).sum(axis=2) * stride  # [A_s, 4]
        cells, _ = anchor_grid(size, (stride,))
        if len(cells) != len(ltrb):
            raise UsageError(f"format picodet: output {name!r} has {len(ltrb)} rows, but stride "
                             f"{stride} gives {len(cells)} cells at {size[0]}x{size[1]}")
        centre = (cells + 0.5) * stride
        boxes.append(np.concatenate([centre - ltrb[:, :2], centre + ltrb[:, 2:]], axis=1))
    return Candidates(np.concatenate(boxes).astype(np.float32), scores.astype(np.float32))


def _classes(p: dict[str, Any], ids: np.ndarray) -> int:
    """The class count: the format's, else one past the largest class id seen."""
    return int(p.get("classes") or (int(ids.max()) + 1 if ids.size else 1))


# (candidate, class) -> indices into one image's explained tensor whose product is the
# confidence (or, for a logit tensor, the index of the logit)
_Terms = Callable[[int, int, dict[str, Any]], tuple[tuple[int, ...], ...]]


def _terms_yolov8(a: int, c: int, p: dict[str, Any]) -> tuple[tuple[int, ...], ...]:
    return ((c, a),) if p.get("explained") == "logits" else ((4 + c, a),)


def _terms_yolov5(a: int, c: int, p: dict[str, Any]) -> tuple[tuple[int, ...], ...]:
    return ((a, 4), (a, 5 + c))


_PREDICTIONS = ("outputs", "classes", "explained")

#: the detection formats, in display order (see :class:`~explainer.tasks.spec.FormatSpec`)
SPECS = (
    FormatSpec("yolov8", "detect", "[N, 4+C, A]",
               "centre-xywh, C class probabilities (Ultralytics YOLOv8/YOLO11); confidence: the "
               "class probability", _PREDICTIONS, _decode_yolov8, _terms_yolov8),
    FormatSpec("yolov5", "detect", "[N, A, 5+C]",
               "centre-xywh, objectness, C class probabilities (YOLOv5/YOLOv7); confidence: "
               "objectness x class probability", _PREDICTIONS, _decode_yolov5, _terms_yolov5),
    FormatSpec("yolox", "detect", "[N, A, 5+C]",
               "as `yolov5`, the boxes still grid offsets and log sizes (YOLOX exported without "
               "decoding: decoded per stride)", (*_PREDICTIONS, "strides"), _decode_yolox,
               _terms_yolov5),
    FormatSpec("end2end", "detect", "[N, K, 6]",
               "x1, y1, x2, y2, score, class (selection inside the graph: YOLOv10/YOLO26 "
               "style); confidence: the score", _PREDICTIONS, _decode_end2end,
               lambda k, c, p: ((k, 4),)),
    FormatSpec("boxes_scores_labels", "detect", "boxes [K, 4], scores [K], labels [K]",
               "torchvision detectors exported with their NMS inside; confidence: the score",
               _PREDICTIONS, _decode_bsl, lambda k, c, p: ((k,),)),
    FormatSpec("picodet", "detect", "per stride [N, A_s, C] and [N, A_s, 4 (R+1)]",
               "class probabilities and box distributions (PicoDet/NanoDet/GFL: softmax over "
               "R+1 bins, expectation x stride, distances from the cell centre)",
               (*_PREDICTIONS, "strides", "reg_max", "scores_tensor"), _decode_picodet,
               lambda a, c, p: ((a, c),)),
)
#: the detection formats by manifest name
FORMATS: dict[str, FormatSpec] = {spec.name: spec for spec in SPECS}


def _format(params: dict[str, Any]) -> FormatSpec:
    try:
        return FORMATS[params["name"]]
    except KeyError:
        raise UsageError(f"unknown detection format {params.get('name')!r}; known formats: "
                         f"{sorted(FORMATS)}") from None


def decode(outputs: dict[str, np.ndarray], params: dict[str, Any], size: _Size) -> Candidates:
    """Decode one image's outputs (each without its batch axis) with the manifest's format,
    for a model input of ``size`` (H, W)."""
    return _format(params).decode(outputs, params, size)


# --- scores and seeds ----------------------------------------------------------------------------
def _pair_terms(pairs: list[tuple[int, int]], params: dict[str, Any]):
    terms = _format(params).terms
    return [terms(a, c, params) for a, c in pairs]


def seed_terms(explained: np.ndarray, target: DetectionTarget, params: dict[str, Any],
               score: str) -> dict[tuple[int, ...], float]:
    """The nonzero elements (index -> value, summed in float64) of the seed over one image's
    explained tensor whose vector-Jacobian product is the gradient of the target's score
    (``"logit"`` or ``"probability"``, summed over its pairs)."""
    terms: defaultdict[tuple[int, ...], float] = defaultdict(float)
    logits = params.get("explained") == "logits"
    for indices in _pair_terms(target.pairs, params):
        values = np.array([explained[i] for i in indices], dtype=np.float64)
        if logits:  # a logit tensor: d z = 1, d sigmoid(z) = s (1 - s)
            s = 1.0 / (1.0 + np.exp(-values[0]))
            terms[indices[0]] += 1.0 if score == "logit" else s * (1 - s)
            continue
        s = float(np.prod(values))
        scale = 1.0 if score == "probability" else 1.0 / max(s * (1 - s), EPS)
        for k, index in enumerate(indices):  # d prod = sum_k prod_{j != k} v_j
            terms[index] += scale * float(np.prod(np.delete(values, k)))
    return dict(terms)


def seed_row(explained: np.ndarray, target: DetectionTarget, params: dict[str, Any],
             score: str, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`seed_terms` as a dense seed: added (in float64) into ``out`` (zeros of the
    explained tensor's shape when None) and returned."""
    out = np.zeros(explained.shape, np.float32) if out is None else out
    for index, value in seed_terms(explained, target, params, score).items():
        out[index] = np.float32(float(out[index]) + value)
    return out


def target_scores(explained: np.ndarray, targets: Sequence[DetectionTarget],
                  params: dict[str, Any], score: str) -> np.ndarray:
    """Each target's score on the matching row of ``explained`` [M, ...] (one row per target):
    the sum over its pairs of the logit or the confidence."""
    logits = params.get("explained") == "logits"
    out = np.zeros(len(targets), dtype=np.float64)
    for m, target in enumerate(targets):
        for indices in _pair_terms(target.pairs, params):
            values = np.array([explained[m][i] for i in indices], dtype=np.float64)
            if logits:
                z = values[0]
                out[m] += z if score == "logit" else 1.0 / (1.0 + np.exp(-z))
                continue
            s = float(np.prod(values))
            out[m] += s if score == "probability" else np.log(max(s, EPS) / max(1 - s, EPS))
    return out
