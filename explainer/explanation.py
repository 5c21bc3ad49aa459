"""What :meth:`explainer.Explainer.explain` returns, and the small steps that build it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TargetError
from .layers import LayerMaps
from .targets import TargetPlan

__all__ = ["Explanation", "contrast_ids", "softmax"]


@dataclass
class Explanation:
    """CAMs for a batch of B images and K target classes each.

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
    """

    heatmaps: np.ndarray
    cams: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray
    labels: list[list[str]] | None
    logits: np.ndarray
    method: str = "gradcam"
    contrast_ids: np.ndarray | None = None
    score: str = "logit"
    pixels: np.ndarray | None = None
    layers: dict[str, LayerMaps] | None = None

    def titles(self, index: int) -> list[str]:
        """Human titles ``"<label or class id> <probability>"`` for image ``index``."""
        names = self.labels[index] if self.labels else [str(c) for c in self.class_ids[index]]
        return [f"{n} {p:.3g}" for n, p in zip(names, self.probabilities[index])]

    @classmethod
    def of(
        cls, logits: np.ndarray, class_ids: np.ndarray, names: list[str] | None, **maps: object
    ) -> Explanation:
        """An explanation of ``class_ids`` [B, K] given the logits [B, C] (scores,
        probabilities and labels follow) and the maps (``heatmaps``, ``cams``...)."""
        probabilities = softmax(logits.astype(np.float64)).astype(np.float32)
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


