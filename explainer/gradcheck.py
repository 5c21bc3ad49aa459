"""Gradient self-check: the head's gradient against finite differences, in ONNX Runtime only.

For each image ``b`` the head computes ``f_b(A) = logits_b(A)[c_b]`` (``c_b`` the explained
class) and its gradient ``g_b = df_b/dA``. Along a direction ``V`` the directional derivative
``<g_b, V_b>`` must match the central difference ``(f_b(A + hV) - f_b(A - hV)) / 2h`` computed
by running the head forward on ONNX Runtime, through the Explainer's graph runs
(:class:`explainer.runner.Runner`).
Needs onnx, numpy and onnxruntime (no torch).

Directions: the first is the gradient itself (the best-conditioned check: it catches scaling,
sign and permutation mistakes); the others are random Gaussian directions, which also see
errors orthogonal to the gradient. Each direction is scaled so that its RMS equals the
activation's RMS, and ``h = eps``: every element moves by about ``eps`` of the activation's
typical size.

The error of one direction is ``|fd - ad| / max(|ad|, |fd|, typical)``, where ``typical`` is
``||g|| * ||V|| / sqrt(n)`` (the size of ``<g, V>`` for a random ``V``), so a direction nearly
orthogonal to the gradient by chance does not blow up the relative error: for a gradient off by
``e`` the error is about ``||e|| / ||g||``.

Finite differences in float32 are only so precise, and ONNX Runtime has no float64 Conv to
escape that: rounding noise is about ``1e-7 * |f| / (h * |<g, V>|)`` (large steps are better)
and every kink (ReLU, MaxPool) the step crosses adds an error that grows with ``h`` (small steps
are better). So the check runs a ladder of steps and keeps, for each image and direction, the
step with the smallest error. A wrong gradient is wrong at every step, so this hides nothing but
the finite differences' own error. Heads that are linear past the target (global pooling and a
classifier, the usual automatic target) agree to ~1e-4; deep heads with many ReLU/MaxPool kinks
typically to a few 1e-3, their worst direction to a few 1e-2, hence the default tolerance of
5e-2. A wrong rule (a missing term, a wrong transpose or scale) gives errors of order 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bundle import Bundle
from .errors import UsageError
from .runtime import Explainer
from .targets import one_hot_seeds

__all__ = ["GradientCheckError", "GradientCheckReport", "check_gradients", "random_inputs"]

log = logging.getLogger(__name__)


class GradientCheckError(UsageError):
    """The gradient check cannot run on these inputs (wrong shape, bad options)."""


@dataclass
class GradientCheckReport:
    """Result of :func:`check_gradients`.

    Attributes:
        errors: [B, D] relative error of each image and direction (direction 0: the gradient),
            at the best step of the ladder.
        analytic: [B, D] directional derivatives ``<g, V>`` from the head's gradient.
        numeric: [B, D] central finite differences at that step.
        steps: [B, D] the relative step each error was measured with.
        class_ids: [B] the classes whose logit was differentiated.
        eps: the ladder of relative steps tried.
        tolerance: the error :attr:`passed` accepts.
        target: the activation tensor.
    """

    errors: np.ndarray
    analytic: np.ndarray
    numeric: np.ndarray
    steps: np.ndarray
    class_ids: np.ndarray
    eps: tuple[float, ...]
    tolerance: float
    target: str

    @property
    def max_error(self) -> float:
        """Largest relative error over images and directions."""
        return float(self.errors.max()) if self.errors.size else 0.0

    @property
    def passed(self) -> bool:
        """Whether every error is within :attr:`tolerance`."""
        return self.max_error <= self.tolerance

    def __str__(self) -> str:
        lines = [
            f"gradient check of {self.target!r}: {self.errors.shape[0]} image(s) x "
            f"{self.errors.shape[1]} direction(s), steps {', '.join(f'{e:g}' for e in self.eps)}",
            f"  {'image':>5} {'class':>6} {'dir':>4} {'analytic':>13} {'numeric':>13} "
            f"{'step':>7} {'rel.error':>10}",
        ]
        for b in range(self.errors.shape[0]):
            for d in range(self.errors.shape[1]):
                kind = "grad" if d == 0 else str(d)
                lines.append(
                    f"  {b:>5} {int(self.class_ids[b]):>6} {kind:>4} {self.analytic[b, d]:>13.6g} "
                    f"{self.numeric[b, d]:>13.6g} {self.steps[b, d]:>7.0e} "
                    f"{self.errors[b, d]:>10.2e}"
                )
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"max relative error {self.max_error:.2e} (tolerance {self.tolerance:g}): {verdict}"
        )
        return "\n".join(lines)


def random_inputs(bundle: Bundle, batch: int | None = None, seed: int = 0) -> np.ndarray:
    """Random model inputs for ``bundle``: uint8 pixels or standard-normal floats.

    Symbolic dimensions take ``batch`` (default 2, or the static batch) and the preprocessing's
    crop size (else 224).
    """
    spec = bundle.spec
    info = spec.input
    shape = list(info.shape)
    if batch is None:
        batch = shape[0] if isinstance(shape[0], int) else 2
    layout = info.layout
    crop = (spec.preprocessing.crop if spec.preprocessing is not None else None) or 224
    crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
    dims = []
    for axis, dim in enumerate(shape):
        if axis == 0:
            dims.append(batch)
        elif isinstance(dim, int):
            dims.append(dim)
        elif len(shape) == 4 and layout[axis] in "HW":
            dims.append(int(crop["HW".index(layout[axis])]))
        else:
            raise GradientCheckError(
                f"input {info.name!r} has symbolic dimension {dim!r} on axis {axis}; pass "
                "inputs explicitly"
            )
    rng = np.random.default_rng(seed)
    if info.dtype == np.uint8:
        return rng.integers(0, 256, size=dims, dtype=np.uint8)
    return rng.standard_normal(dims).astype(np.float32)


def check_gradients(
    bundle: Bundle,
    inputs: np.ndarray | None = None,
    *,
    directions: int = 3,
    eps: float | Sequence[float] = (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4),
    seed: int = 0,
    class_ids: Sequence[int] | np.ndarray | None = None,
    tolerance: float = 5e-2,
    jitter: float = 1e-2,
    explainer: Explainer | None = None,
) -> GradientCheckReport:
    """Compare the head's gradient with central directional finite differences.

    Args:
        bundle: the bundle to check.
        inputs: a model input batch (as for :meth:`explainer.Explainer.explain`); random
            inputs of the model's shape when None (see :func:`random_inputs`).
        directions: random directions per image, on top of the gradient direction.
        eps: relative step(s) (each element moves by about ``eps`` times the activation's
            RMS); with several, each error is taken at its best step (see module docstring).
        seed: seed of the random directions.
        class_ids: the class differentiated for each image (default: the top-1 class); for a
            detector, the flat index into its explained tensor (default: its largest element).
        tolerance: the largest relative error :attr:`GradientCheckReport.passed` accepts.
        jitter: the check runs at the activation plus Gaussian noise of this size relative to
            its RMS (0 for none), so that it does not sit on a kink: a ReLU's exact zeros that
            enter a MaxPool are ties where the function has no derivative and central
            differences average the two sides.
        explainer: an :class:`explainer.Explainer` of ``bundle`` to reuse (built if None).

    Returns:
        A :class:`GradientCheckReport`.
    """
    steps = (float(eps),) if np.isscalar(eps) else tuple(float(e) for e in eps)  # type: ignore[arg-type]
    if directions < 0 or not steps or min(steps) <= 0:
        raise GradientCheckError(f"need directions >= 0 and steps > 0, got {directions}, {eps}")
    explainer = explainer or Explainer(bundle)
    if inputs is None:
        inputs = random_inputs(bundle, seed=seed)
    runner = explainer.runner
    features = runner.run_features(inputs)
    target = runner.spec.target.tensor
    rng = np.random.default_rng(seed)
    activation = _jittered(features[target].astype(np.float32), jitter, rng)
    features[target] = activation
    batch = activation.shape[0]
    explained = runner.run_logits(features)  # [B, classes], or a detector's tensor [B, ...]
    if class_ids is None:  # the largest element of the explained tensor (the top-1 class)
        ids = np.argmax(explained.reshape(batch, -1), axis=1)
    else:
        ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        if ids.shape[0] != batch:
            raise GradientCheckError(f"{ids.shape[0]} class ids for a batch of {batch}")
    size = int(np.prod(explained.shape[1:]))
    seeds = one_hot_seeds(ids[:, None], size).reshape(explained.shape)
    _, gradient = runner.run_head(features, seeds)
    flat_g = gradient.reshape(batch, -1).astype(np.float64)
    v = _directions(activation, flat_g, directions, rng)  # [B, D, n]
    analytic = np.einsum("bn,bdn->bd", flat_g, v)
    rms_a = np.sqrt((v[:, 0] ** 2).mean(axis=1, keepdims=True))
    typical = np.linalg.norm(flat_g, axis=1, keepdims=True) * rms_a  # ||g|| ||V|| / sqrt(n)

    def score(direction: np.ndarray) -> np.ndarray:
        """Logits of the explained classes at activation + direction [B, n]."""
        shifted = (activation.reshape(batch, -1) + direction).reshape(activation.shape)
        logits = runner.run_logits({**features, target: shifted.astype(np.float32)})
        return logits.reshape(batch, -1).astype(np.float64)[np.arange(batch), ids]

    errors, numeric, used = _ladder(score, v, analytic, typical, steps)
    report = GradientCheckReport(
        errors=errors, analytic=analytic, numeric=numeric, steps=used, class_ids=ids,
        eps=steps, tolerance=tolerance, target=target,
    )
    log.info("gradient check of %s: max relative error %.2e over %d directions x %d images",
             target, report.max_error, v.shape[1], batch)
    return report


def _ladder(
    score: Any, v: np.ndarray, analytic: np.ndarray, typical: np.ndarray, steps: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central differences along each direction at each step; for each image and direction,
    the (error, finite difference, step) of the step with the smallest error."""
    errors = np.full(analytic.shape, np.inf)
    numeric, used = np.zeros_like(analytic), np.zeros_like(analytic)
    for h in steps:
        # one head run per (sign, direction) with the image batch: other cut tensors (index
        # tensors computed from the batch size, say) are fed exactly as the features gave them
        fd = np.stack([(score(h * v[:, k]) - score(-h * v[:, k])) / (2 * h)
                       for k in range(v.shape[1])], axis=1)  # [B, D]
        scale = np.maximum(np.maximum(np.abs(analytic), np.abs(fd)), typical)
        error = np.where(scale > 0, np.abs(fd - analytic) / np.where(scale > 0, scale, 1.0), 0.0)
        better = error < errors
        errors = np.where(better, error, errors)
        numeric, used = np.where(better, fd, numeric), np.where(better, h, used)
    return errors, numeric, used


def _jittered(activation: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Exact zeros moved off their ties by Gaussian noise of ``jitter`` x the RMS per image
    (ReLU zeros entering a MaxPool are a kink)."""
    if not jitter:
        return activation
    batch = activation.shape[0]
    rms = np.sqrt((activation.astype(np.float64) ** 2).reshape(batch, -1).mean(axis=1))
    noise = rng.standard_normal(activation.shape) * rms.reshape(-1, *[1] * (activation.ndim - 1))
    return np.where(activation == 0, jitter * noise, activation).astype(np.float32)


def _directions(
    activation: np.ndarray, flat_g: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Directions [B, 1 + count, n]: the gradient, then random Gaussians, each RMS-matched to
    the activation."""
    flat_a = activation.reshape(activation.shape[0], -1).astype(np.float64)
    rms_a = np.sqrt((flat_a**2).mean(axis=1, keepdims=True))
    rms_a = np.where(rms_a > 0, rms_a, 1.0)
    scaled = []
    for v in [flat_g] + [rng.standard_normal(flat_a.shape) for _ in range(count)]:
        rms_v = np.sqrt((v**2).mean(axis=1, keepdims=True))
        scaled.append(v / np.where(rms_v > 0, rms_v, 1.0) * rms_a)
    return np.stack(scaled, axis=1)
