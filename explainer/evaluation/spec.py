"""What an evaluation metric is: one :class:`MetricSpec` per metric, in :data:`METRICS`.

Notation of the definitions: ``E`` is the map upsampled to the input and min-max scaled to
[0, 1]; ``s`` the explained score; ``p`` the softmax probability of the explained class (the
default score of the metrics, ``score="probability"``; for a detector, segmenter or text
recognizer its task score, see :mod:`.tasks`); ``x`` the model input in the model's layout
after preprocessing; ``N`` the number of (image, target) pairs averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["DIRECTIONS", "METRICS", "EvaluationError", "MetricSpec", "get_metric"]

#: which way a metric is better
DIRECTIONS = ("higher", "lower")


class EvaluationError(UsageError):
    """An evaluation cannot run: an unknown metric, a missing input (boxes), a task or option
    the metrics do not support."""


@dataclass(frozen=True)
class MetricSpec:
    """One evaluation metric.

    Attributes:
        name: API and CLI name (``"deletion"``).
        title: display name (``"Deletion AUC"``).
        direction: ``"higher"`` or ``"lower"``: which values are better.
        definition: the exact definition, as Markdown.
        needs: what it needs beyond the model, the input and the maps (``"boxes"``,
            ``"randomized head"``), or an empty tuple.
        group: metrics of one group are computed together (one set of model runs).
        paper: where the metric comes from.
    """

    name: str
    title: str
    direction: str
    definition: str
    needs: tuple[str, ...] = ()
    group: str = ""
    paper: str = ""


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec(
        "avg-drop", "Average Drop %", "lower",
        "`100/N * sum max(0, Y - O) / Y`, `Y = p(x)`, `O = p(E * x)`. pytorch-grad-cam's "
        "`DropInConfidence` reports `max(0, Y - O)` without dividing by `Y`; torchcam divides "
        "by `Y + 1e-7` and reports a fraction instead of a percentage.",
        group="confidence", paper="Chattopadhyay et al. 2018, Grad-CAM++, arXiv:1710.11063"),
    MetricSpec(
        "increase", "Increase in Confidence %", "higher",
        "`100/N * sum 1[O > Y]`, `Y = p(x)`, `O = p(E * x)`.",
        group="confidence", paper="Chattopadhyay et al. 2018, Grad-CAM++, arXiv:1710.11063"),
    MetricSpec(
        "deletion", "Deletion AUC", "lower",
        "Pixels ranked by `E` (highest first); at step `i = 0..steps` the first "
        "`round(i * H * W / steps)` of them are set to the baseline (default zero), all "
        "channels; `AUC = trapezoid area of p over the fraction i / steps`.",
        group="deletion", paper="Petsiuk et al. 2018, RISE, arXiv:1806.07421"),
    MetricSpec(
        "insertion", "Insertion AUC", "higher",
        "Start from the baseline (default the blurred input) and insert the pixels of `x` "
        "ranked by `E` (highest first), `round(i * H * W / steps)` at step `i = 0..steps`; "
        "`AUC = trapezoid area of p over the fraction i / steps`.",
        group="insertion", paper="Petsiuk et al. 2018, RISE, arXiv:1806.07421"),
    MetricSpec(
        "road-morf", "ROAD MoRF", "lower",
        "Mean over percentiles `q = 10..90` of `p(x_q) - p(x)`, where `x_q` is `x` with the "
        "pixels `E >= percentile(E, q)` replaced by noisy linear imputation.",
        group="road", paper="Rong et al. 2022, ROAD, arXiv:2202.00449"),
    MetricSpec(
        "road-lerf", "ROAD LeRF", "higher",
        "Mean over percentiles `q = 10..90` of `p(x_q) - p(x)`, where `x_q` is `x` with the "
        "pixels `1 - E >= percentile(1 - E, q)` replaced by noisy linear imputation.",
        group="road", paper="Rong et al. 2022, ROAD, arXiv:2202.00449"),
    MetricSpec(
        "road", "ROAD combined", "higher",
        "`(LeRF - MoRF) / 2`, as pytorch-grad-cam's `ROADCombined`.",
        group="road", paper="Rong et al. 2022, ROAD, arXiv:2202.00449"),
    MetricSpec(
        "pointing", "Pointing game", "higher",
        "`1` when the argmax of `E` lies inside a box (or mask) of the image, else `0`.",
        needs=("boxes",), group="localisation",
        paper="Zhang et al. 2016, Excitation Backprop, arXiv:1608.00507"),
    MetricSpec(
        "energy", "Energy-based pointing game", "higher",
        "`sum(E inside the boxes) / sum(E)`.", needs=("boxes",), group="localisation",
        paper="Wang et al. 2020, Score-CAM, arXiv:1910.01279"),
    MetricSpec(
        "sanity", "Model randomization (Spearman)", "lower",
        "Spearman rank correlation between the original map and the map of the same method "
        "once every head layer is randomized (cascading, from the output layer down); the "
        "check fails above the threshold (default 0.9). SSIM and the per-layer cascading and "
        "independent results are in the details.",
        needs=("randomized head",), group="sanity",
        paper="Adebayo et al. 2018, Sanity Checks for Saliency Maps, arXiv:1810.03292"),
)}


def get_metric(name: str) -> MetricSpec:
    """The spec of metric ``name``.

    Raises:
        EvaluationError: naming the unknown metric and the known ones.
    """
    try:
        return METRICS[name]
    except KeyError:
        raise EvaluationError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}"
                              ) from None
