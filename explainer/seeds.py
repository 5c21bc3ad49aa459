"""Seeds for scores that are weighted sums over a dense output (segmentation masks, CTC
timesteps, an embedding), and the scores themselves.

The head differentiates ``sum(seed * explained)`` for one image's explained tensor. A
*weighted target* is a constant weight array ``W`` of the explained tensor's shape (a class
channel under a mask, a character's timesteps): its score is ``sum(W * f(z))`` where ``z`` is
the explained tensor and ``f`` what ``score=`` asks for:

* explained logits (the export found the activation's input): ``f(z) = z`` for
  ``score="logit"``; ``f = sigmoid`` (binary maps) or ``f = softmax`` along the class axis for
  ``score="probability"``;
* explained probabilities (no logits in the graph): ``f(p) = p`` for ``"probability"``; for
  ``"logit"``, ``log(p / (1 - p))`` for sigmoid maps and ``log p`` (a log-softmax, equal to the
  logits up to a per-pixel constant) for softmax outputs.

The seed is ``dscore/dz``, computed here in numpy from the forward values (the head's seed is
a plain array, whatever ``f`` is). ``params`` is the manifest's ``format``: ``explained``
(``"logits"`` / ``"probabilities"``), ``activation`` (``"sigmoid"`` / ``"softmax"``) and
``axis`` (the class axis of one image's explained tensor).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import TargetError

__all__ = ["WeightedTarget", "embedding_seed", "embedding_score", "probabilities",
           "weighted_scores", "weighted_seed"]

_EPS = 1e-12
EMBEDDING_SCORES = ("dot", "cosine")


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _activated(z: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    if params.get("activation") == "softmax":
        return _softmax(z, params.get("axis", 0))
    return 1.0 / (1.0 + np.exp(-z))


def probabilities(explained: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """One image's explained tensor as probabilities (float64): its activation (sigmoid, or
    softmax along ``params["axis"]``) where it holds logits, else the tensor itself."""
    z = explained.astype(np.float64)
    return _activated(z, params) if params.get("explained", "logits") == "logits" else z


def weighted_seed(explained: np.ndarray, weights: np.ndarray, params: dict[str, Any],
                  score: str) -> np.ndarray:
    """The seed whose vector-Jacobian product is the gradient of ``sum(W * f(z))`` (see the
    module docstring) over one image's explained tensor."""
    if params.get("explained", "logits") == "logits" and score == "logit":
        return weights.astype(np.float32, copy=False)  # d z = 1
    z = explained.astype(np.float64)
    w = weights.astype(np.float64)
    if params.get("explained", "logits") == "logits":
        p = _activated(z, params)
        if params.get("activation") == "softmax":  # d/dz_j sum_i w_i p_i = p_j (w_j - w.p)
            axis = params.get("axis", 0)
            return (p * (w - (w * p).sum(axis=axis, keepdims=True))).astype(np.float32)
        return (w * p * (1.0 - p)).astype(np.float32)
    if score == "probability":
        return weights.astype(np.float32)
    p = np.clip(z, _EPS, 1.0 - _EPS)
    if params.get("activation") == "softmax":
        return (w / p).astype(np.float32)  # d log p
    return (w / (p * (1.0 - p))).astype(np.float32)  # d logit(p)


def weighted_scores(explained: np.ndarray, weights: list[np.ndarray], params: dict[str, Any],
                    score: str) -> np.ndarray:
    """``sum(W_m * f(z_m))`` for each row ``m`` of ``explained`` [M, ...] and its weights."""
    out = np.zeros(len(weights), dtype=np.float64)
    for m, w in enumerate(weights):
        if params.get("explained", "logits") == "logits" and score == "logit":
            out[m] = float((w * explained[m]).sum(dtype=np.float64))  # no float64 copies
            continue
        z = explained[m].astype(np.float64)
        if params.get("explained", "logits") == "logits":
            f = _activated(z, params)  # score "probability" (the logit case returned above)
        elif score == "probability":
            f = z
        else:
            p = np.clip(z, _EPS, 1.0 - _EPS)
            f = np.log(p) if params.get("activation") == "softmax" else np.log(p / (1 - p))
        out[m] = float((w * f).sum())
    return out


def _reference(vector: Any, size: int) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if v.size != size or not np.isfinite(v).all():
        raise TargetError(f"the reference embedding has {v.size} values; the explained output "
                          f"has {size} per image (all finite)")
    if not v.any():
        raise TargetError("the reference embedding is all zeros")
    return v


def embedding_score(embedding: np.ndarray, vector: Any, score: str) -> float:
    """The dot product (``"dot"``) or cosine similarity (``"cosine"``) of one image's
    embedding with the reference ``vector``."""
    e = embedding.astype(np.float64).reshape(-1)
    v = _reference(vector, e.size)
    dot = float(e @ v)
    if score == "cosine":
        return dot / max(float(np.linalg.norm(e) * np.linalg.norm(v)), _EPS)
    return dot


def embedding_seed(embedding: np.ndarray, vector: Any, score: str) -> np.ndarray:
    """The seed over one image's embedding: ``v`` for the dot product; for the cosine,
    ``v / (|e||v|) - (e.v) e / (|e|^3 |v|)``."""
    if score not in EMBEDDING_SCORES:
        raise TargetError(f"an embedding target's score is 'dot' or 'cosine' (--score), got "
                          f"{score!r}")
    e = embedding.astype(np.float64).reshape(-1)
    v = _reference(vector, e.size)
    if score == "dot":
        return v.reshape(embedding.shape).astype(np.float32)
    ne, nv = max(float(np.linalg.norm(e)), _EPS), float(np.linalg.norm(v))
    seed = v / (ne * nv) - float(e @ v) * e / (ne ** 3 * nv)
    return seed.reshape(embedding.shape).astype(np.float32)


class WeightedTarget:
    """One explained map of a segmenter or a text recognizer: what it shows (``item``: a
    :class:`~explainer.segmentation.Region` or :class:`~explainer.sequence.Character`) and the
    weights ``W`` of its score over one image's explained tensor."""

    __slots__ = ("item", "weights")

    def __init__(self, item: Any, weights: np.ndarray) -> None:
        self.item = item
        self.weights = weights
