"""Evaluation metrics of explanations, computed on ONNX Runtime (torch-free).

``evaluate(explainer, x, explanation, metrics=[...])`` scores the maps of one explanation
with faithfulness metrics (Average Drop / Increase in Confidence, deletion and insertion AUC,
ROAD), localisation metrics given boxes (pointing game, energy-based pointing game) and the
model-randomization sanity check; the definitions are in :data:`METRICS`. Detectors,
segmenters and text recognizers are scored by each explained item's own score, its target held
fixed (:mod:`.tasks`); :mod:`.report` writes the evaluation of several methods as one page.
"""

from __future__ import annotations

from .api import DEFAULT_METRICS, EvaluationResult, MetricValue, evaluate
from .spec import METRICS, EvaluationError, MetricSpec, get_metric

__all__ = [
    "DEFAULT_METRICS", "METRICS", "EvaluationError", "EvaluationResult", "MetricSpec",
    "MetricValue", "evaluate", "get_metric",
]
