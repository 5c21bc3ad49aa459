"""Eigen methods: the first principal component of the activation (or gradient x activation).

For one image let ``X`` be the [h*w, C] matrix of a map's positions by channels, centered per
channel (``X = M - mean_ij M``). Its first right singular vector ``v`` [C] gives the
projection ``p = X v`` [h*w], reshaped to [h, w]. SVD leaves the sign of ``v`` free; onnxcam
fixes it as pytorch-grad-cam's ``get_2d_projection_with_sign_correction`` does (Seg-Eigen-CAM,
Chung & Ying 2025, eq. 13): ``p`` is negated when ``|min p| > |max p|``, so the dominant
extreme is positive. pytorch-grad-cam 1.5.7's ``EigenCAM``/``EigenGradCAM`` take LAPACK's sign
as it comes (arbitrary), so its maps equal ours or those of ``-p``.

``p`` is returned as :class:`~explainer.methods.core.Weights` (``v`` and the offset
``-v . mean``), so the shared pipeline computes ``ReLU(p)`` like every other method.

Cost: ``v`` is found with einsum loops and elementwise numpy in float64: no LAPACK call,
because ``np.linalg.svd``/``eigh`` run OpenBLAS threads that kept spinning and slowed the next
ONNX Runtime run (measured on 2 cores: resnet18 ``layer4``, 2 photos, ``explain`` took 208 ms
with eigencam through ``eigh`` against 92 ms for Grad-CAM; ``svd`` of one 49 x 960 matrix took
100 ms threaded, 2 ms on one thread). :func:`first_component` first runs power iteration with
``X`` itself (``v <- X^T (X v)``, ``2 P C`` per step), which pays while it needs fewer than
``min(P, C) / 2`` steps, the cost of forming the smaller Gram matrix (``X X^T`` [hw, hw] or
``X^T X`` [C, C]); when the convergence rate it measures predicts more steps, power iteration
on that Gram matrix, and when the top two eigenvalues are too close for that too, repeated
squaring of the Gram matrix. Measured on a shared, noisy 2-core machine (medians, the former
squaring-only code alternating with this one in one process) on the centered YOLOv8n maps of
a 640 x 640 input (``lambda_2 / lambda_1`` 0.65, 0.35, 0.24): 6400 x 64 13.9 -> 16.9 ms (power
iteration with ``X`` gives up after 4 steps, then the Gram matrix as before: ~10 ms of
einsum), 1600 x 128 17.2 -> 7.3 ms and 400 x 256 51.4 -> 3.2 ms (27 and 19 steps with ``X``);
a whole ``explain(x, targets="top1", method="eigencam", conf=0.0)`` 230 -> 163 ms (Grad-CAM
147 / 143 ms in the same run). Synthetic 784 x 256 matrices: 63-72 -> 5-15 ms for ratios
0.2-0.65, 90 -> 42 ms at 0.9, 10-14 % slower at 0.99 and 0.999 (110-145 ms: squaring after
the power iterations gave up); 49 x 960: 2.1 -> 1.7 ms at 0.2, 0.7-0.8 ms slower (3 ms) where
it squares.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .core import CamContext, Weights
from .spec import MethodSpec

__all__ = [
    "SPECS", "dominant_eigenvector", "eigencam_weights", "eigengradcam_weights", "first_component",
]


#: most repeated squarings of the Gram matrix (power 2**40); stops earlier once converged
MAX_SQUARINGS = 40
#: the power iteration stops once its estimated distance (2-norm) to the eigenvector is below
TOLERANCE = 1e-12
#: fewest power steps taken before the iteration may give up on its predicted number of steps
MIN_STEPS = 4
#: a power step's fixed numpy overhead in multiply-adds (~16 us: einsum calls, norms)
STEP_OVERHEAD = 40_000
#: the Gram power iteration's budget, in squarings' worth of work (squaring would need more)
SQUARINGS_WORTH = 6


def _norm(vector: np.ndarray) -> float:
    """Euclidean norm of a vector (einsum: no BLAS)."""
    return math.sqrt(float(np.einsum("i,i->", vector, vector)))


def _power_iteration(apply: Callable[[np.ndarray], np.ndarray], vector: np.ndarray,
                     max_steps: int) -> tuple[np.ndarray, bool]:
    """Power iteration ``v <- A v / |A v|`` of a symmetric positive semi-definite operator
    ``apply`` from ``vector``: (unit vector, converged).

    The step ``d_k = |v_k+1 - v_k|`` shrinks by ``rate = lambda_2 / lambda_1`` per step, so
    ``d_k / d_k-1`` estimates the rate and ``d_k rate / (1 - rate)`` the distance left to the
    eigenvector; converged once that is under :data:`TOLERANCE`. Gives up (not converged)
    after ``max_steps``, as soon as the rate predicts more than that or is >= 1 (a start
    closer to another eigenvector: the step grows while the top one takes over), or on
    ``v = 0`` or ``A v = 0``; it predicts after :data:`MIN_STEPS` and an eighth of
    ``max_steps`` only, as the first rates can be far off. When the top eigenvalues are equal
    it converges to some unit vector of their eigenspace.
    """
    length = _norm(vector)
    if length == 0:
        return vector, False
    vector = vector / length
    change = math.inf
    for step in range(1, max_steps + 1):
        image = apply(vector)
        size = _norm(image)
        if size == 0:
            return vector, False
        image /= size
        new_change = _norm(image - vector)
        vector = image
        if new_change == 0:
            return vector, True
        rate, change = new_change / change, new_change
        steps_left = math.inf  # no rate yet, or not converging yet
        if step > 1 and rate < 1:
            error = change * rate / (1 - rate)
            if error < TOLERANCE:
                return vector, True
            steps_left = math.log(TOLERANCE / error) / math.log(rate)
        if step >= max(MIN_STEPS, max_steps // 8) and step + steps_left > max_steps:
            break
    return vector, False


def _squared_eigenvector(gram: np.ndarray) -> np.ndarray:
    """Unit dominant eigenvector of a nonzero symmetric positive semi-definite matrix by
    repeated squaring (the fallback: cost ``log2(steps)`` matrix products, not ``steps``).

    ``gram^(2^k)`` tends to ``lambda_1^(2^k) u u^T``; its largest column is ``u`` up to sign
    once ``(lambda_2 / lambda_1)^(2^k)`` is negligible. The change between squarings then
    falls quadratically; it stops under 1e-13, or one squaring after it fell under 1e-8
    (rounding noise can keep it above 1e-13, and tied eigenvalues make it grow again).
    """
    power = gram / np.abs(gram).max()
    previous_change = math.inf
    for _ in range(MAX_SQUARINGS):
        previous = power
        power = np.einsum("ij,jk->ik", power, power)
        power /= np.abs(power).max()
        change = np.abs(power - previous).max()
        if change < 1e-13 or previous_change < 1e-8:
            break
        previous_change = change
    vector = power[:, np.argmax(np.einsum("ij,ij->j", power, power))]
    for _ in range(2):  # polish against the original matrix
        vector = np.einsum("ij,j->i", gram, vector)
        vector /= _norm(vector)
    return vector


def dominant_eigenvector(gram: np.ndarray,
                         start: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(unit eigenvector, eigenvalue) of the largest eigenvalue of a symmetric positive
    semi-definite matrix, with einsum (no LAPACK, no BLAS threads); (0, 0) for a zero matrix.

    Power iteration from ``start`` (None: a fixed random vector) while it costs less than
    :data:`SQUARINGS_WORTH` squarings, else repeated squaring. When the top two eigenvalues
    are nearly equal the first component itself is ill-defined, for any algorithm.
    """
    size = gram.shape[0]
    if np.abs(gram).max() == 0:
        return np.zeros(size), 0.0
    budget = SQUARINGS_WORTH * size**3 // (size * size + STEP_OVERHEAD)
    converged = False
    vector = np.zeros(size)
    if budget > MIN_STEPS:  # else squaring is cheap
        if start is None:
            start = np.random.default_rng(0).standard_normal(size)
        vector, converged = _power_iteration(lambda v: np.einsum("ij,j->i", gram, v), start,
                                             budget)
    if not converged:
        vector = _squared_eigenvector(gram)
    return vector, float(np.einsum("i,ij,j->", vector, gram, vector))


def first_component(matrix: np.ndarray) -> np.ndarray:
    """First right singular vector [C] of a centered [P, C] float64 matrix, sign as it comes
    (0 for a zero matrix).

    First power iteration with ``matrix`` itself, ``v <- X^T (X v)`` (``2 P C`` per step),
    for at most ``min(P, C) / 2`` steps: forming the smaller Gram matrix costs
    ``min(P, C)^2 max(P, C)``, as much as that many steps. When the convergence rate predicts
    more steps, :func:`dominant_eigenvector` of that Gram matrix continues from the vector.
    """
    positions, channels = matrix.shape
    budget = min(positions, channels) // 2
    v: np.ndarray | None = None
    if budget > MIN_STEPS:  # else the Gram matrix is cheap
        v, converged = _power_iteration(
            lambda w: np.einsum("pc,p->c", matrix, np.einsum("pc,c->p", matrix, w)),
            np.random.default_rng(0).standard_normal(channels), budget)
        if converged:
            return v
    if positions <= channels:
        u, value = dominant_eigenvector(np.einsum("pc,qc->pq", matrix, matrix),
                                        None if v is None else np.einsum("pc,c->p", matrix, v))
        if value <= 0:
            return np.zeros(channels)
        return np.einsum("pc,p->c", matrix, u) / np.sqrt(value)
    v, value = dominant_eigenvector(np.einsum("pc,pd->cd", matrix, matrix), v)
    return v if value > 0 else np.zeros(channels)


def _principal_weights(maps: np.ndarray, scale: np.ndarray | None) -> Weights:
    """Weights reproducing the sign-corrected first-component projection of ``maps``
    [N, C, h, w] = ``scale * A`` (``scale`` None: 1), as a weighted sum of ``A`` plus offset."""
    n, c = maps.shape[:2]
    channel_weights = np.zeros((n, c))
    offsets = np.zeros(n)
    for i in range(n):
        matrix = maps[i].reshape(c, -1).T.astype(np.float64)
        mean = matrix.mean(axis=0)
        centered = matrix - mean
        v = first_component(centered)
        projection = np.einsum("pc,c->p", centered, v)
        sign = -1.0 if abs(projection.min()) > abs(projection.max()) else 1.0
        channel_weights[i] = sign * v
        offsets[i] = -sign * float(np.einsum("c,c->", v, mean))
    weights = channel_weights if scale is None else channel_weights[:, :, None, None] * scale
    return Weights(weights, offsets)  # float64: the offset cancels most of the sum


def eigencam_weights(ctx: CamContext) -> Weights:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299).

    The map is ``ReLU(p)``, ``p`` the first principal component projection of the centered
    activation (see the module docstring for the sign). Class-agnostic: the gradient is not
    used. Channel weights [N, C] plus offset.
    """
    return _principal_weights(ctx.activation, None)


def eigengradcam_weights(ctx: CamContext) -> Weights:
    """Eigen-Grad-CAM (pytorch-grad-cam's ``EigenGradCAM``: Eigen-CAM of ``g * A``).

    The map is ``ReLU(p)``, ``p`` the first principal component projection of the centered
    ``g * A`` (sign as in the module docstring). Per-position weights ``v_k g^k_ij`` plus offset.
    """
    return _principal_weights(ctx.gradient * ctx.activation, ctx.gradient)


#: this module's methods, in display order (:data:`explainer.methods.METHODS`)
SPECS = (
    MethodSpec(
        "eigencam", "Eigen-CAM", "closed-form", eigencam_weights, None, uses_gradient=False,
        paper="Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299",
        formula="`M = ReLU(p)`, `p` the first principal component projection of the centered "
                "activation (sign: the dominant extreme positive)",
        peers={"pytorch-grad-cam": "EigenCAM"},
    ),
    MethodSpec(
        "eigengradcam", "Eigen-Grad-CAM", "closed-form", eigengradcam_weights, None,
        per_position=True,
        paper="pytorch-grad-cam's EigenGradCAM (Gildenblat et al., "
              "https://github.com/jacobgil/pytorch-grad-cam)",
        formula="`M = ReLU(p)`, `p` the first principal component projection of the centered "
                "`g * A`",
        peers={"pytorch-grad-cam": "EigenGradCAM"},
    ),
)
