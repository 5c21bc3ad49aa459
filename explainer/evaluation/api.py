""":func:`evaluate`: the metrics of one explanation of a batch, as an :class:`EvaluationResult`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import Pairs, Values, confidence, localisation, perturbation_curve, road
from .sanity import ExplainFn, head_layers, sanity
from .scoring import SCORES, Scores, to_chw
from .spec import METRICS, EvaluationError, get_metric
from .tasks import TaskScores, held_targets

__all__ = ["DEFAULT_METRICS", "EvaluationResult", "MetricValue", "evaluate"]

#: what :func:`evaluate` computes when no metrics are given (no boxes, no extra models)
DEFAULT_METRICS = ("avg-drop", "increase", "deletion", "insertion")
#: the normal quantile of the two-sided 95% confidence interval of a mean
Z95 = 1.959963984540054


@dataclass(frozen=True)
class MetricValue:
    """One metric of one (image, target) pair.

    Attributes:
        image: the image's index in the batch.
        target: the target's index among the image's maps (a detection's, region's or
            character's column).
        class_id: the class explained (a character's vocabulary index; -1 for a whole
            decoded string).
        metric: the metric's name (:data:`~.spec.METRICS`).
        value: its value.
        details: what it was computed from (a curve, the scores), or None.
    """

    image: int
    target: int
    class_id: int
    metric: str
    value: float
    details: Any = None


@dataclass
class EvaluationResult:
    """The metrics of one explanation, per image, per target, per metric.

    Attributes:
        method: the CAM method evaluated.
        values: one :class:`MetricValue` per (image, target, metric).
        options: the options the metrics ran with.
        sanity: the sanity check's verdict (``passed``, ``message``, the per-layer results),
            or None when it did not run.
        runs: graph runs of the scoring passes.
        seconds: wall-clock seconds the evaluation took.
        images: the batch size.
        task: the bundle's task.
        items: for a detector, segmenter or text recognizer, per image the explained items
            as JSON-ready dicts (a detection's box, class, score, candidate...), else None.
    """

    method: str
    values: list[MetricValue]
    options: dict[str, Any] = field(default_factory=dict)
    sanity: dict[str, Any] | None = None
    runs: int = 0
    seconds: float = 0.0
    images: int = 0
    task: str = "classify"
    items: list[list[dict[str, Any]]] | None = None

    @property
    def metrics(self) -> list[str]:
        """The metrics computed, in order."""
        return list(dict.fromkeys(v.metric for v in self.values))

    def table(self, metric: str) -> np.ndarray:
        """The values of ``metric`` as an array [B, K] (NaN where a target is missing)."""
        rows = [v for v in self.values if v.metric == metric]
        if not rows:
            raise EvaluationError(f"metric {metric!r} was not computed; have {self.metrics}")
        out = np.full((max(v.image for v in rows) + 1, max(v.target for v in rows) + 1), np.nan)
        for v in rows:
            out[v.image, v.target] = v.value
        return out

    def means(self) -> dict[str, float]:
        """Each metric's mean over every (image, target) pair (NaN values left out)."""
        means = {}
        for metric in self.metrics:
            table = self.table(metric)
            means[metric] = float(np.nanmean(table)) if np.isfinite(table).any() else float("nan")
        return means

    def rows(self) -> list[dict[str, Any]]:
        """One row per (image, target): its class, its item (a detection, region or
        character, where the task has them) and each metric's value."""
        out: dict[tuple[int, int], dict[str, Any]] = {}
        for v in self.values:
            row = out.setdefault((v.image, v.target), {
                "image": v.image, "target": v.target, "class_id": v.class_id, "metrics": {}})
            if self.items is not None and "item" not in row:
                row["item"] = self.items[v.image][v.target]
            row["metrics"][v.metric] = v.value
        return list(out.values())

    def intervals(self) -> dict[str, tuple[float, float, int]]:
        """Each metric's 95% confidence interval of the mean, by the normal approximation:
        ``mean -/+ 1.96 * s / sqrt(n)`` over the n (image, target) values (``s`` the sample
        standard deviation); (low, high, n), NaN bounds below two values."""
        out = {}
        for metric in self.metrics:
            table = self.table(metric)
            finite = table[np.isfinite(table)]
            n = int(finite.size)
            if n < 2:
                out[metric] = (float("nan"), float("nan"), n)
                continue
            mean, half = float(finite.mean()), Z95 * float(finite.std(ddof=1)) / np.sqrt(n)
            out[metric] = (mean - half, mean + half, n)
        return out

    def to_dict(self, details: bool = True) -> dict[str, Any]:
        """A JSON-ready dict: method, means, 95% intervals (``ci95``: [low, high], None where
        undefined; ``count``: the values averaged), directions, per-(pair, metric) values,
        per-pair rows (``targets``, see :meth:`rows`), sanity verdict, timing."""
        intervals = self.intervals()
        return {
            "method": self.method,
            "task": self.task,
            "means": self.means(),
            "ci95": {m: [None if np.isnan(lo) else lo, None if np.isnan(hi) else hi]
                     for m, (lo, hi, _) in intervals.items()},
            "count": {m: n for m, (_, _, n) in intervals.items()},
            "better": {m: METRICS[m].direction for m in self.metrics},
            "values": [{"image": v.image, "target": v.target, "class_id": v.class_id,
                        "metric": v.metric, "value": v.value,
                        **({"details": v.details} if details and v.details is not None else {})}
                       for v in self.values],
            "targets": self.rows(),
            "sanity": self.sanity,
            "options": self.options,
            "runs": self.runs,
            "seconds": self.seconds,
            "images": self.images,
        }


def _bar(progress: bool, description: str, total: int) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=description, total=total, unit="input", leave=False)


def _rows(groups: set[str], pairs: int, images: int, steps: int, percentiles: int,
          independent: bool, layers: int) -> int:
    """Model inputs the groups run: the progress bar's total."""
    per_pair = {"confidence": 2, "deletion": steps + 1, "insertion": steps + 1,
                "road": 2 * percentiles + 1}
    total = sum(per_pair.get(g, 0) for g in groups) * pairs
    if "sanity" in groups:
        total += images * layers * (2 if independent else 1)
    return total


def evaluate(
    explainer: Any,
    x: np.ndarray,
    explanation: Any,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    score: str = "probability",
    batch_size: int = 64,
    progress: bool = True,
    steps: int = 50,
    deletion_baseline: str = "zero",
    insertion_baseline: str = "blur",
    mean: Sequence[float] | None = None,
    percentiles: Sequence[float] = tuple(range(10, 100, 10)),
    noise: float = 0.01,
    seed: int = 0,
    boxes: Sequence[Any] | None = None,
    sanity_threshold: float = 0.9,
    independent: bool = True,
    explain_fn: ExplainFn | None = None,
    task_options: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Evaluate the maps of ``explanation`` (made by ``explainer`` for the batch ``x``).

    Definitions: :data:`explainer.evaluation.METRICS` and ``docs/evaluate.md``. Every
    perturbed copy of the images goes through the model in runs of ``batch_size`` rows.

    A detector's, segmenter's or text recognizer's explanation is scored by its task score
    (:mod:`explainer.evaluation.tasks`): each explained detection, region or character is held
    fixed (its candidate row, its mask on the original image, its timesteps) and read from the
    explained tensor of every perturbed copy.

    Args:
        explainer: the :class:`~explainer.runtime.Explainer` that made the explanation.
        x: the model input batch the explanation was made for (model layout, preprocessed).
        explanation: its :class:`~explainer.explanation.Explanation` (``heatmaps`` [B, K, H,
            W] at the input's size, ``class_ids`` [B, K], ``method``; ``items`` for the tasks).
        metrics: metric names (:data:`~.spec.METRICS`).
        score: ``"probability"`` (``p``, default) or ``"logit"``: the score the metrics read.
            For the tasks: the detection's confidence, the region's mean class probability, the
            character's mean probability (or the matching logits, where the explained tensor
            holds logits; a detection's logit is ``log(s / (1 - s))``).
        batch_size: rows per graph run.
        progress: show a tqdm progress bar.
        steps: deletion and insertion steps.
        deletion_baseline: ``"zero"`` (default), ``"blur"`` or ``"mean"``.
        insertion_baseline: ``"blur"`` (default, RISE's), ``"zero"`` or ``"mean"``.
        mean: per-channel values of the ``"mean"`` baseline, in the model input's scale.
        percentiles: ROAD's percentiles.
        noise: ROAD's imputation noise (0: none).
        seed: seed of ROAD's noise and of the sanity check's random weights.
        boxes: for ``pointing`` and ``energy``, per image a list of ``[x0, y0, x1, y1]``
            boxes in model input pixels (end exclusive) or a bool mask [H, W]; a task's
            explanation without them uses each item's own region: a detection's box, a
            region's mask, a character's input columns (:mod:`explainer.evaluation.tasks`).
        sanity_threshold: the sanity check fails when the mean Spearman correlation at full
            randomization is above it.
        independent: the sanity check also randomizes each head layer alone.
        explain_fn: how the sanity check makes maps with a randomized explainer,
            ``(explainer, x, class_ids) -> heatmaps``; default ``explainer.explain`` with the
            explanation's method (for the tasks: with each held target's seed).
        task_options: for the tasks, what the explanation was made with where its items do not
            tell: ``threshold`` (a binary segmenter's), ``targets`` with ``conf``/``iou``/
            ``threshold`` (regions given as a mask or a box are planned again).

    Raises:
        EvaluationError: an unknown metric or option, missing boxes, an explanation with
            nothing to score.
    """
    started = time.perf_counter()
    names = list(dict.fromkeys(metrics))
    specs = [get_metric(name) for name in names]
    if score not in SCORES:
        raise EvaluationError(f"score={score!r} is not one of {SCORES}")
    if getattr(explanation, "contrast_ids", None) is not None:
        raise EvaluationError("the metrics score the explained class alone; evaluate an "
                              "explanation made without contrast=")
    task = explainer.task
    if getattr(explanation, "task", task) != task:
        raise EvaluationError(f"the explanation is of a {explanation.task!r} model; this "
                              f"bundle's task is {task!r}")
    x = explainer.runner.check_input(x)
    layout = explainer.spec.input.layout
    images = np.stack([to_chw(row, layout) for row in x])
    heatmaps = np.asarray(explanation.heatmaps)
    groups = {spec.name if spec.group in ("deletion", "insertion") else spec.group
              for spec in specs}
    if task == "classify":
        pairs = Pairs.of(images, heatmaps, explanation.class_ids)
        scores: Scores = Scores(explainer, score, batch_size)
    else:
        plan, held = held_targets(explainer, x, explanation, score, task_options)
        own = held.regions() if "localisation" in groups and boxes is None else None
        pairs = Pairs.of(images, heatmaps, explanation.class_ids, keys=held.keys,
                         valid=held.valid, boxes=own)
        scores = TaskScores(explainer, plan, held, score, batch_size)
        if "sanity" in groups and explain_fn is None:
            seeds = {explainer.spec.head.logits: scores.seeds(explainer, explanation.score)}

            def explain_fn(other: Any, xs: np.ndarray, _: np.ndarray) -> np.ndarray:
                return other.explain(xs, seeds=seeds, method=explanation.method).heatmaps
    if not len(pairs):
        notes = "; ".join(getattr(explanation, "notes", None) or [])
        raise EvaluationError("the explanation has no target to evaluate"
                              + (f" ({notes})" if notes else ""))
    layers = len(head_layers(explainer.bundle.head)) if "sanity" in groups else 0
    total = _rows(groups, len(pairs), x.shape[0], steps, len(percentiles), independent, layers)
    bar = _bar(progress, f"evaluating {explanation.method}", total)
    scores.bar = bar
    options = {"score": score, "batch_size": batch_size, "steps": steps,
               "deletion_baseline": deletion_baseline, "insertion_baseline": insertion_baseline,
               "percentiles": list(percentiles), "noise": noise, "seed": seed}
    computed: Values = {}
    verdict = None
    try:
        for spec in specs:
            if spec.name in computed:
                continue
            if spec.group == "confidence":
                computed.update(confidence(pairs, scores))
            elif spec.name in ("deletion", "insertion"):
                baseline = deletion_baseline if spec.name == "deletion" else insertion_baseline
                computed.update(perturbation_curve(pairs, scores, spec.name, steps, baseline,
                                                   mean))
            elif spec.group == "road":
                computed.update(road(pairs, scores, percentiles, noise, seed))
            elif spec.group == "localisation":
                computed.update(localisation(pairs, boxes))
            else:
                values, verdict = sanity(pairs, explainer, x, explanation.method, explain_fn,
                                         seed, sanity_threshold, independent, bar)
                computed.update(values)
    finally:
        if bar is not None:
            bar.close()
    rows = []
    for b, k in pairs:
        for name in names:
            table, details = computed[name]
            rows.append(MetricValue(b, k, int(pairs.class_ids[b, k]), name,
                                    float(table[b, k]),
                                    None if details is None else details[b][k]))
    items = ([[item.to_dict() for item in row] for row in explanation.items]
             if task != "classify" else None)
    return EvaluationResult(explanation.method, rows, options, verdict, scores.runs,
                            time.perf_counter() - started, int(x.shape[0]), task, items)
