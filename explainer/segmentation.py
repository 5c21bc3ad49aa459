"""Segmenters (``task="segment"``): which regions of a mask output to explain, and their seeds.

Formats (the manifest's ``format["name"]``):

* ``masks``: ``[N, C, h, w]`` class scores (logits, or probabilities after a Softmax over the
  classes); the predicted mask of class c is ``argmax == c``.
* ``binary``: ``[N, 1, h, w]``, one sigmoid map (binary segmentation, DBNet-style text
  detection); a pixel is in the mask where its probability exceeds ``threshold``.

``h, w`` may differ from the input's size (Segformer: a quarter of it); boxes and areas are
reported in model-input pixels. A map explains ``sum(W * f(z))`` (see :mod:`explainer.seeds`)
where ``W`` is the class's channel under a region held constant, as pytorch-grad-cam's
``SemanticSegmentationTarget`` and Seg-Grad-CAM define it.

Targets (one map each; terms combine with ``+`` or in a list):

* ``"classes"`` (the default of ``masks``): every predicted class, largest area first (a class
  labelled ``background`` is left out);
* ``"regions"`` (the default of ``binary``): every connected region (8-connected) of the
  mask, largest first: each text region of a DBNet map; for ``masks``, each connected region
  of each predicted class;
* ``"topK"``: the K largest of the default kind;
* a class id or name: that class over its whole predicted mask;
* ``{"mask": array, "class": c}``: class c (default: the class most predicted in the mask)
  over a boolean mask of the input's size or the output's; ``{"box": (x1, y1, x2, y2),
  "class": c}``: over a box in model-input pixels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import TensorProto

from .errors import TargetError
from .seeds import WeightedTarget
from .targets import class_id
from .tasks.spec import FormatSpec

if TYPE_CHECKING:
    from .methods.spec import GraphBuilder

__all__ = ["DEFAULT_THRESHOLD", "SEGMENT_FORMATS", "SPECS", "Region", "check_region_spec",
           "emit_binary", "emit_masks",
           "check_threshold", "class_of", "keyword", "region_terms",
           "label_regions", "mean_probability", "plan_regions", "predicted"]

#: default probability threshold of a ``binary`` map's mask
DEFAULT_THRESHOLD = 0.5
#: regions smaller than this (output pixels) are not explained
MIN_AREA = 4
#: the most regions one image yields
MAX_REGIONS = 200
_TOP = re.compile(r"^top(\d*)$")
_BACKGROUND = ("background", "__background__", "bg", "_background_")


@dataclass(frozen=True)
class Region:
    """One explained region of a segmentation output.

    Attributes:
        box: ``(x1, y1, x2, y2)`` enclosing the region, in model-input pixels.
        class_id: the explained class (0 for a binary map).
        label: its name when the bundle has labels.
        area: the region's area in model-input pixels.
        score: the mean probability of the class inside the region.
        kind: ``"class"`` (a class's predicted mask), ``"region"`` (a connected region),
            ``"mask"`` or ``"box"`` (given by the user).
        image_box: ``box`` in the original image's pixels, where the preprocessing is known.
    """

    box: tuple[float, float, float, float]
    class_id: int
    label: str | None
    area: float
    score: float
    kind: str = "class"
    image_box: tuple[float, float, float, float] | None = None

    def title(self) -> str:
        """``"<label or class id> <score>"``, as figures show it."""
        name = self.label if self.label is not None else str(self.class_id)
        return f"{name} {self.score:.3g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``summary.json``)."""
        return {"box": [round(float(v), 2) for v in self.box], "class_id": int(self.class_id),
                "label": self.label, "area": round(float(self.area), 1),
                "score": float(self.score), "kind": self.kind,
                "image_box": None if self.image_box is None else
                [round(float(v), 2) for v in self.image_box]}


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D boolean mask: (labels int32 [h, w], 0 outside the mask
    and 1..n inside; n). Runs of each row are joined to the overlapping runs of the row above
    (union-find over runs, not pixels)."""
    h, w = mask.shape
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]  # exclusive; same order as the starts
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(h + 1))  # runs of row r: first[r]:first[r+1]
    for r in range(1, h):
        above, here = range(first[r - 1], first[r]), range(first[r], first[r + 1])
        a = iter(above)
        j = next(a, None)
        for i in here:  # both lists are sorted by column: a merge
            while j is not None and ends[j] < starts[i]:  # ends before i (diagonal touch: ==)
                j = next(a, None)
            k = j
            while k is not None and k < first[r] and starts[k] <= ends[i]:
                parent[root(i)] = root(k)
                k += 1
    roots = [root(i) for i in range(len(rows))]
    ids = {r: n + 1 for n, r in enumerate(dict.fromkeys(roots))}
    labels = np.zeros((h, w), np.int32)
    for i, r in enumerate(roots):
        labels[rows[i], starts[i]:ends[i]] = ids[r]
    return labels, len(ids)


def check_threshold(threshold: float) -> None:
    """Raise :class:`TargetError` unless a binary map's ``threshold`` is in (0, 1)."""
    if not 0.0 < threshold < 1.0:
        raise TargetError(f"threshold (--threshold) must be in (0, 1), got {threshold}")


def _predicted_masks(explained: np.ndarray, params: dict[str, Any],
                     threshold: float) -> np.ndarray:
    return explained.argmax(axis=0)


def _predicted_binary(explained: np.ndarray, params: dict[str, Any],
                      threshold: float) -> np.ndarray:
    logits = params.get("explained", "logits") == "logits"
    cut = float(np.log(threshold / (1.0 - threshold))) if logits else threshold
    return np.where(explained[0] > cut, 0, -1)


def predicted(explained: np.ndarray, params: dict[str, Any],
              threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The class map int [h, w] (-1 where no class is predicted) of one image's explained
    tensor [C, h, w]: the argmax (of the logits: the softmax keeps it), or a binary map's
    pixels above ``threshold`` (compared as logits where the tensor holds them)."""
    return _spec(params).decode(explained, params, threshold)  # type: ignore[misc]


def _spec(params: dict[str, Any]) -> FormatSpec:
    """The segmentation format of the manifest's ``params`` (``masks`` when unknown, as the
    export writes one of :data:`SEGMENT_FORMATS`)."""
    return _FORMATS.get(params.get("name"), _FORMATS["masks"])


def mean_probability(explained: np.ndarray, params: dict[str, Any], c: int,
                     mask: np.ndarray) -> float:
    """The mean probability of class ``c`` over ``mask`` (computed at the mask's pixels only)."""
    if params.get("explained", "logits") != "logits":
        return float(explained[c][mask].mean(dtype=np.float64))
    if params.get("activation") == "softmax":  # p_c = 1 / sum_k exp(z_k - z_c)
        z = explained[:, mask]  # [C, n]
        return float((1.0 / np.exp(z - z[c]).sum(axis=0)).mean(dtype=np.float64))
    return float((1.0 / (1.0 + np.exp(-explained[c][mask]))).mean(dtype=np.float64))


def region_terms(spec: Any, params: dict[str, Any]) -> list[Any]:
    """The terms of a segmentation target spec (``+``-joined strings and lists flattened; None:
    the format's default)."""
    if spec is None:
        return [_spec(params).default_targets]
    if isinstance(spec, str):  # names keep their inner spaces ("traffic light")
        return [t.strip() for t in spec.split("+") if t.strip()]
    if isinstance(spec, (list, tuple)):
        return [t for item in spec for t in region_terms(item, params)]
    return [spec]


def keyword(term: Any) -> str | None:
    """``"classes"``, ``"regions"`` or ``"topK"`` (spaces and case ignored) when ``term`` is
    one of these words, else None (a class, a mask or a box)."""
    if not isinstance(term, str):
        return None
    word = term.replace(" ", "").lower()
    return word if word in ("classes", "regions") or _TOP.match(word) else None


def class_of(term: Any, labels: Sequence[str] | None, classes: int) -> int:
    """The class id of a target term: an id, digits or a class name.

    Raises:
        TargetError: an unreadable term or a class out of range.
    """
    if isinstance(term, (int, np.integer)) and not isinstance(term, bool):
        c = int(term)
    elif isinstance(term, str):
        c = int(term) if term.isdigit() else class_id(term, labels)
    else:
        raise TargetError(f"cannot read segmentation target {term!r}; use 'classes', "
                          "'regions', 'top3', a class id or name, or {'mask': ...} / "
                          "{'box': (x1, y1, x2, y2)}")
    if not 0 <= c < classes:
        raise TargetError(f"class id {c} is out of range: the segmenter has {classes} "
                          f"class(es) (valid ids 0..{classes - 1})")
    return c


def check_region_spec(spec: Any, params: dict[str, Any], labels: Sequence[str] | None) -> None:
    """Validate a segmentation target spec before any image (names, ids, term syntax).

    Raises:
        TargetError: naming the term at fault.
    """
    classes = int(params.get("classes") or 1)
    for term in region_terms(spec, params):
        if isinstance(term, dict):
            if ("mask" in term) == ("box" in term):
                raise TargetError(f"a region target needs 'mask' or 'box' (not both), got "
                                  f"{sorted(term)}")
            if term.get("class") is not None:
                class_of(term["class"], labels, classes)
        elif keyword(term):
            continue
        else:
            class_of(term, labels, classes)


def _user_region(term: dict[str, Any], size: tuple[int, int], grid: tuple[int, int]
                 ) -> tuple[np.ndarray, str]:
    """A user's mask or box as a boolean mask on the output grid."""
    h, w = grid
    if "box" in term:
        try:
            x1, y1, x2, y2 = (float(v) for v in term["box"])
        except (TypeError, ValueError) as err:
            raise TargetError(f"a box is (x1, y1, x2, y2), got {term['box']!r}") from err
        sy, sx = h / size[0], w / size[1]
        mask = np.zeros(grid, bool)
        mask[max(int(np.floor(y1 * sy)), 0):int(np.ceil(y2 * sy)),
             max(int(np.floor(x1 * sx)), 0):int(np.ceil(x2 * sx))] = True
        if not mask.any():
            raise TargetError(f"box {term['box']!r} covers no pixel of the {size[1]}x{size[0]} "
                              "input (x1 < x2, y1 < y2, inside the image)")
        return mask, "box"
    mask = np.asarray(term["mask"])
    if mask.ndim != 2 or tuple(mask.shape) not in (tuple(size), tuple(grid)):
        raise TargetError(f"a region mask must be [H, W] of the input {list(size)} or of the "
                          f"output {list(grid)}, got shape {list(mask.shape)}")
    mask = mask.astype(bool)
    if mask.shape != grid:  # nearest sampling from the input's size to the output's
        rows = (np.arange(h) + 0.5) * size[0] / h
        cols = (np.arange(w) + 0.5) * size[1] / w
        mask = mask[rows.astype(int)][:, cols.astype(int)]
    if not mask.any():
        raise TargetError("the region mask is empty (no True pixel on the output grid)")
    return mask, "mask"


def plan_regions(
    spec: Any,
    explained: np.ndarray,
    params: dict[str, Any],
    labels: Sequence[str] | None,
    size: tuple[int, int],
    threshold: float = DEFAULT_THRESHOLD,
) -> list[WeightedTarget]:
    """What to explain on one image (see the module docstring for the forms of ``spec``).

    Args:
        spec: the target spec.
        explained: the image's explained tensor [C, h, w].
        params: the manifest's format.
        labels: class names.
        size: the model input's (H, W).
        threshold: a binary map's probability threshold.

    Raises:
        TargetError: a malformed term, an unknown class, a bad mask or box.
    """
    check_threshold(threshold)
    classes, grid = explained.shape[0], explained.shape[1:]
    pred = predicted(explained, params, threshold)
    scale = (size[0] / grid[0]) * (size[1] / grid[1])
    background = {i for i, name in enumerate(labels or ()) if name.lower() in _BACKGROUND}

    def target(c: int, mask: np.ndarray, kind: str) -> WeightedTarget:
        ys, xs = np.nonzero(mask)
        box = (xs.min() * size[1] / grid[1], ys.min() * size[0] / grid[0],
               (xs.max() + 1) * size[1] / grid[1], (ys.max() + 1) * size[0] / grid[0])
        weights = np.zeros(explained.shape, np.float32)
        weights[c][mask] = 1.0
        region = Region(tuple(float(v) for v in box), c,
                        labels[c] if labels is not None and c < len(labels) else None,
                        float(mask.sum() * scale),
                        mean_probability(explained, params, c, mask), kind)
        return WeightedTarget(region, weights)

    def by_class() -> list[WeightedTarget]:
        ids, counts = np.unique(pred[pred >= 0], return_counts=True)
        order = [int(ids[i]) for i in np.argsort(-counts, kind="stable")]
        return [target(c, pred == c, "class") for c in order if c not in background]

    def by_region() -> list[WeightedTarget]:
        found = []
        for c in np.unique(pred[pred >= 0]):
            if int(c) in background:
                continue
            regions, n = label_regions(pred == c)
            areas = np.bincount(regions.ravel(), minlength=n + 1)
            found += [(areas[i], int(c), i, regions) for i in range(1, n + 1)
                      if areas[i] >= MIN_AREA]
        found.sort(key=lambda f: -f[0])
        return [target(c, regions == i, "region") for _, c, i, regions in found[:MAX_REGIONS]]

    default = by_region if _spec(params).default_targets == "regions" else by_class
    out: list[WeightedTarget] = []
    for term in region_terms(spec, params):
        if isinstance(term, dict):
            mask, kind = _user_region(term, size, grid)
            c = term.get("class")
            if c is None:
                inside = pred[mask]
                inside = inside[inside >= 0]
                c = int(np.bincount(inside).argmax()) if inside.size else 0
            out.append(target(class_of(c, labels, classes), mask, kind))
            continue
        word = keyword(term) or ""
        top = _TOP.match(word)
        if word == "classes":
            out += by_class()
        elif word == "regions":
            out += by_region()
        elif top:
            out += default()[: int(top.group(1) or 1)]
        else:
            c = class_of(term, labels, classes)
            if (pred == c).any():
                out.append(target(c, pred == c, "class"))
    return out


# --- in-graph emitters of the explanation graph ---------------------------------------------
def emit_masks(b: GraphBuilder, scores: str, params: dict[str, Any], classes: int
               ) -> tuple[str, str, str]:
    """A ``masks`` segmenter's (predicted class [B, 1, h, w]; probabilities [B, C, h, w]; areas
    [B, C]: each class's predicted pixels) as ONNX nodes, as :func:`predicted` computes them."""
    logits = params.get("explained", "logits") == "logits"
    probs = b.op("Softmax", scores, axis=1) if logits else scores
    pred = b.op("ArgMax", scores, axis=1, keepdims=1)
    one_hot = b.op("OneHot", pred, b.const(classes), b.const([0.0, 1.0], np.float32),
                   axis=1)  # [B, C, 1, h, w]
    return pred, probs, b.reduce("ReduceSum", one_hot, [2, 3, 4], keepdims=0)


def emit_binary(b: GraphBuilder, scores: str, params: dict[str, Any], classes: int
                ) -> tuple[str, str, str]:
    """A ``binary`` map's (predicted [B, 1, h, w]: 0 inside, -1 outside; probabilities; area
    [B, 1]) at threshold 0.5, as ONNX nodes."""
    logits = params.get("explained", "logits") == "logits"
    probs = b.op("Sigmoid", scores) if logits else scores
    inside = b.op("Greater", probs, b.const(0.5, np.float32))
    pred = b.op("Sub", b.op("Cast", inside, to=TensorProto.INT64), b.const(1))
    area = b.reduce("ReduceSum", b.op("Cast", inside, to=TensorProto.FLOAT), [2, 3], keepdims=0)
    return pred, probs, area


_VALUES = ("outputs", "classes", "explained", "activation", "tensor", "axis")
#: the segmentation formats (see :class:`~explainer.tasks.spec.FormatSpec`)
SPECS = (
    FormatSpec("masks", "segment", "[N, C, h, w]",
               "class scores (logits, or probabilities after a Softmax over the classes); the "
               "predicted mask of class c is `argmax == c`", _VALUES, _predicted_masks,
               emit=emit_masks, default_targets="classes"),
    FormatSpec("binary", "segment", "[N, 1, h, w]",
               "one sigmoid map (binary segmentation, DBNet-style text detection); a pixel is "
               "in the mask where its probability exceeds the threshold", _VALUES,
               _predicted_binary, emit=emit_binary, default_targets="regions"),
)
_FORMATS = {spec.name: spec for spec in SPECS}
#: mask formats
SEGMENT_FORMATS = tuple(_FORMATS)
