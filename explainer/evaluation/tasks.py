"""The scores of detectors, segmenters and text recognizers for the metrics: each explained
item's target held fixed, read from the explained tensor of every perturbed copy by the task's
planner (:mod:`explainer.tasks.planners`).

An explanation's items (detections, regions, characters) say which part of the explained
tensor each map explains; :func:`held_targets` turns them back into the planner's targets, read
on the original image's outputs, so a perturbed copy is scored at the same place:

* a detection: its candidate row (anchor or kept box) and class, whatever the perturbed image's
  own detections are; a class target (``candidate == -1``): the ``count`` candidates of that
  class scoring highest on the original image;
* a region: its class over its mask on the output grid, as predicted on the original image;
* a character: its class at its timesteps; the whole string: every character's.

Each item also has its own region for ``pointing`` and ``energy`` (when ``boxes=`` is not
given), in model-input pixels: a detection's box; a region's mask (the output-grid cells of its
held mask, output cell (i, j) of a ``gh x gw`` grid covering input rows ``[i H / gh, (i + 1) H /
gh)`` and columns ``[j W / gw, (j + 1) W / gw)``); a character's columns (timestep t of T covers
input columns ``[t W / T, (t + 1) W / T)``, as :class:`~explainer.sequence.Character`'s box
says, over the full height; the whole string: every character's columns).

The task score is the mean over the target's terms of the planner's score
(:meth:`~explainer.tasks.planners.Planner.scores`, a sum) — for ``score="probability"``: a
detection's confidence, a region's mean class probability over its mask, a character's mean
probability at its timesteps; these equal the items' own ``score`` on the original image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..detection import DetectionTarget, decode
from ..seeds import WeightedTarget
from ..segmentation import DEFAULT_THRESHOLD, label_regions, predicted
from ..tasks import planner
from .scoring import Scores
from .spec import EvaluationError

__all__ = ["TASK_OPTIONS", "HeldTargets", "TaskScores", "held_targets"]

#: the keys of ``task_options``: the planner options (and targets) the explanation was made with
TASK_OPTIONS = ("targets", "conf", "iou", "threshold")


@dataclass
class HeldTargets:
    """Each explained item's planner target, held fixed for the perturbed copies.

    Attributes:
        targets: the planner targets in pair order (image-major), one per explained item.
        terms: per target, how many terms its planner score sums (candidates, mask pixels,
            timesteps): the score is divided by it.
        keys: [B, K] each pair's index into ``targets`` (-1 where an image has no item k).
        valid: [B, K] True where image b has an item k.
        boxes: per image, per item, ``[box]`` in model-input pixels (a detection's), else None.
        explained: the original batch's explained tensor [B, ...].
        task: the bundle's task.
        size: the model input's (H, W).
    """

    targets: list[Any]
    terms: np.ndarray
    keys: np.ndarray
    valid: np.ndarray
    boxes: list[list[Any]] | None
    explained: np.ndarray
    task: str = "detect"
    size: tuple[int, int] = (0, 0)

    def regions(self) -> list[list[Any]]:
        """Per image, per item, its own region in model-input pixels (see the module
        docstring): ``[box]`` for a detection, a bool mask [H, W] for a region or a
        character (made here, on demand: one mask per item)."""
        if self.boxes is not None:
            return self.boxes
        return [[own_region(self.task, self.targets[int(key)].weights, self.size)
                 for key in row[valid]] for row, valid in zip(self.keys, self.valid,
                                                              strict=True)]


def _outputs(explainer: Any, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The head's outputs of the original batch (by name) and its explained tensor."""
    runner, spec = explainer.runner, explainer.spec
    names = list(dict.fromkeys([spec.head.logits, *spec.head.outputs]))
    features = runner.features(x)
    values = dict(zip(names, (runner.to_numpy(v) for v in runner.run(
        runner.outputs_session, features, names))))
    return values, values[spec.head.logits]


def _same(a: Any, b: Any) -> bool:
    """Two items alike but for their box in the original image."""
    return replace(a, image_box=None) == replace(b, image_box=None)


def _detection(item: Any, cands: Any, b: int, k: int) -> DetectionTarget:
    """A detection's (candidate, class) pairs; a class target's: the ``count`` best
    candidates of its class on the original image (those above the threshold it used)."""
    c = int(item.class_id)
    if item.candidate >= 0:
        if item.candidate >= len(cands.scores):
            raise EvaluationError(f"image {b}, detection {k}: candidate {item.candidate} is "
                                  f"past the detector's {len(cands.scores)} rows; evaluate "
                                  "the explanation of this very input")
        return DetectionTarget(item, [(int(item.candidate), c)])
    column = cands.scores[:, c]
    rows = np.argsort(-column, kind="stable")[: int(item.count)]
    if not rows.size or not np.isclose(column[rows].max(), item.score, rtol=1e-4, atol=1e-6):
        raise EvaluationError(f"image {b}, target {k}: the class-{c} candidates of the input do "
                              "not score as the explanation says; evaluate the explanation of "
                              "this very input")
    return DetectionTarget(item, [(int(a), c) for a in np.sort(rows)])


def _region_mask(item: Any, explained: np.ndarray, fmt: dict[str, Any], threshold: float,
                 size: tuple[int, int]) -> np.ndarray | None:
    """A region's mask on the output grid, as the planner found it on the original image
    (None for a user's mask or box: re-planned from ``targets``)."""
    grid = explained.shape[1:]
    pred = predicted(explained, fmt, threshold)
    c = int(item.class_id)
    if item.kind == "class":
        mask = pred == c
    elif item.kind == "region":
        labels, n = label_regions(pred == c)
        mask = None
        for i in range(1, n + 1):
            ys, xs = np.nonzero(labels == i)
            box = (xs.min() * size[1] / grid[1], ys.min() * size[0] / grid[0],
                   (xs.max() + 1) * size[1] / grid[1], (ys.max() + 1) * size[0] / grid[0])
            if np.allclose(box, item.box, atol=1e-3):
                mask = labels == i
                break
        if mask is None:
            return np.zeros(grid, bool)
    else:
        return None
    return mask


def _weights(shape: tuple[int, ...], c: int, mask: np.ndarray) -> np.ndarray:
    weights = np.zeros(shape, np.float32)
    weights[c][mask] = 1.0
    return weights


def _spans(cells: int, pixels: int) -> np.ndarray:
    """The output cell each of ``pixels`` input pixels lies in, ``cells`` cells spanning them
    evenly: pixel p is in cell ``floor(p * cells / pixels)``, i.e. cell i covers ``[i * pixels
    / cells, (i + 1) * pixels / cells)``."""
    return np.arange(pixels) * cells // pixels


def own_region(task: str, weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A held target's own region as a bool mask [H, W] of the model input (``size``), from
    its weights over the explained tensor: a segmenter's [C, gh, gw] (the cells of any class
    weighted), a text recognizer's [T, V] (the columns of the timesteps weighted, full
    height)."""
    h, w = size
    if task == "segment":
        cells = np.asarray(weights).reshape(-1, *weights.shape[-2:]).any(axis=0)
        return cells[_spans(cells.shape[0], h)[:, None], _spans(cells.shape[1], w)[None, :]]
    steps = np.asarray(weights).any(axis=1)  # [T]
    return np.broadcast_to(steps[_spans(steps.shape[0], w)][None, :], (h, w)).copy()


def held_targets(explainer: Any, x: np.ndarray, explanation: Any, score: str,
                 options: dict[str, Any] | None = None) -> tuple[Any, HeldTargets]:
    """The planner (scoring ``score``) and each explained item's target.

    Args:
        explainer: the Explainer of a detector, segmenter or text recognizer.
        x: the checked input batch the explanation was made for.
        explanation: its Explanation (``items`` per image).
        score: ``"probability"`` or ``"logit"``.
        options: :data:`TASK_OPTIONS` the explanation was made with: ``threshold`` (a binary
            segmenter's) finds its regions again; ``targets`` (with ``conf``, ``iou``,
            ``threshold``) re-plans the targets no item tells alone (a region given as a mask
            or a box).

    Raises:
        EvaluationError: an explanation with no items (``seeds=``), an item the original
            outputs do not give back, an unknown option.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(TASK_OPTIONS))
    if unknown:
        raise EvaluationError(f"task_options {unknown} are unknown; give {list(TASK_OPTIONS)}")
    spec = explainer.spec
    task, fmt = spec.task, spec.format
    if explanation.items is None:
        raise EvaluationError(f"this {task} explanation has no items (made with seeds= or an "
                              "embedding target); the metrics score explained detections, "
                              "regions or characters")
    if score == "logit" and task != "detect" and fmt.get("explained", "logits") != "logits":
        raise EvaluationError(f"score='logit': this {task} bundle explains probabilities (its "
                              "explained tensor holds no logits); use score='probability'")
    plan = planner(task, fmt, spec.labels, spec.num_classes, None, score)
    values, explained = _outputs(explainer, x)
    size = spec.input.size(x)
    threshold = float(options.get("threshold", DEFAULT_THRESHOLD))
    batch, width = explanation.heatmaps.shape[:2]
    keys = np.full((batch, width), -1, np.int64)
    valid = np.zeros((batch, width), bool)
    targets: list[Any] = []
    terms: list[float] = []
    replanned: dict[int, list[Any]] = {}

    def again(b: int) -> list[Any]:
        """Image b's targets planned again from ``targets`` and the options."""
        if b not in replanned:
            extra = {k: options[k] for k in ("conf", "iou", "threshold")
                     if k in options and k in type(plan).options}
            again_plan = planner(task, fmt, spec.labels, spec.num_classes,
                                 options.get("targets"), score, **extra)
            replanned[b] = again_plan.plan({n: v[b] for n, v in values.items()},
                                           explained[b], size)[0]
        return replanned[b]

    for b, row in enumerate(explanation.items):
        outputs = {n: v[b] for n, v in values.items()}
        cands = decode(outputs, fmt, size) if task == "detect" else None
        for k, item in enumerate(row):
            if task == "detect":
                target: Any = _detection(item, cands, b, k)
                count = float(len(target.pairs))
            elif task == "segment":
                mask = _region_mask(item, explained[b], fmt, threshold, size)
                if mask is None:
                    found = [t for t in again(b) if _same(plan.item(t), item)]
                    if not found:
                        raise EvaluationError(
                            f"image {b}, region {k} was given as a {item.kind}: pass the "
                            "targets the explanation was made with as task_options="
                            "{'targets': ...}")
                    target = found[0]
                else:
                    scale = size[0] * size[1] / mask.size
                    if not mask.any() or not np.isclose(mask.sum() * scale, item.area,
                                                        rtol=1e-4, atol=0.5):
                        raise EvaluationError(
                            f"image {b}, region {k} (class {item.class_id}) is not predicted "
                            f"on this input at threshold {threshold}; pass the threshold the "
                            "explanation was made with (task_options={'threshold': ...})")
                    target = WeightedTarget(item, _weights(explained.shape[1:],
                                                           int(item.class_id), mask))
                count = float(target.weights.sum())
            else:
                read = explanation.sequence[b].characters if item.index < 0 else [item]
                weights = np.zeros(explained.shape[1:], np.float32)
                for character in read:
                    weights[list(character.timesteps), character.index] = 1.0
                target, count = WeightedTarget(item, weights), float(weights.sum())
            keys[b, k] = len(targets)
            valid[b, k] = True
            targets.append(target)
            terms.append(max(count, 1.0))
    boxes = ([[[list(item.box)] for item in row] for row in explanation.items]
             if task == "detect" else None)
    return plan, HeldTargets(targets, np.asarray(terms), keys, valid, boxes, explained, task,
                             (int(size[0]), int(size[1])))


class TaskScores(Scores):
    """The task score (see the module docstring) of each held target on the head's explained
    tensor of its perturbed copies: ``keys`` index the held targets."""

    def __init__(self, explainer: Any, plan: Any, held: HeldTargets, score: str = "probability",
                 batch_size: int = 64, bar: Any = None) -> None:
        super().__init__(explainer, score, batch_size, bar)
        self.plan = plan
        self.held = held

    def read(self, explained: np.ndarray, keys: np.ndarray) -> np.ndarray:
        targets = [self.held.targets[int(key)] for key in keys]
        return self.plan.scores(explained, targets) / self.held.terms[keys]

    def seeds(self, explainer: Any, explanation_score: str) -> np.ndarray:
        """Each held target's seed over the original explained tensor, as the explanation made
        it (``explanation_score``): [B, K, ...], zero where an image has no item k (the
        sanity check explains the same targets with these)."""
        spec, held = explainer.spec, self.held
        seeding = planner(spec.task, spec.format, spec.labels, spec.num_classes, None,
                          explanation_score)
        seeds = np.zeros((*held.valid.shape, *held.explained.shape[1:]), np.float32)
        for b, k in zip(*np.nonzero(held.valid)):
            target = held.targets[int(held.keys[b, k])]
            seeding.seed(held.explained[b], target, out=seeds[b, k])
        return seeds
