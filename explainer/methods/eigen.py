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

Cost: ``v`` is the dominant eigenvector of the smaller Gram matrix (``X X^T`` [hw, hw] or
``X^T X`` [C, C]), found by repeated squaring with einsum loops in float64: no LAPACK call,
because ``np.linalg.svd``/``eigh`` run OpenBLAS threads that kept spinning and slowed the next
ONNX Runtime run (measured on 2 cores: resnet18 ``layer4``, 2 photos, ``explain`` took 208 ms
with eigencam through ``eigh`` against 92 ms for Grad-CAM; ``svd`` of one 49 x 960 matrix took
100 ms threaded, 2 ms on one thread). With einsum, eigencam on mobilenet_v3_large
``features.16`` (49 x 960, 2 photos) takes 10.9 ms against 8.8 ms for Grad-CAM, and a
784 x 256 map (a mid layer) about 135 ms per image and target.
"""

from __future__ import annotations

import numpy as np

from .core import CamContext, Weights
from .spec import MethodSpec

__all__ = [
    "SPECS", "dominant_eigenvector", "eigencam_weights", "eigengradcam_weights", "first_component",
]


#: most repeated squarings of the Gram matrix (power 2**40); stops earlier once converged
MAX_SQUARINGS = 40


def dominant_eigenvector(gram: np.ndarray) -> tuple[np.ndarray, float]:
    """(unit eigenvector, eigenvalue) of the largest eigenvalue of a symmetric positive
    semi-definite matrix, by repeated squaring with einsum (no LAPACK, no BLAS threads).

    ``gram^(2^k)`` tends to ``lambda_1^(2^k) u u^T``; its largest column is ``u`` up to sign
    once ``(lambda_2 / lambda_1)^(2^k)`` is negligible. When the top two eigenvalues are
    nearly equal the first component itself is ill-defined, for any algorithm.
    """
    top = np.abs(gram).max()
    if top == 0:
        return np.zeros(gram.shape[0]), 0.0
    power = gram / top
    for _ in range(MAX_SQUARINGS):
        previous = power
        power = np.einsum("ij,jk->ik", power, power)
        power /= np.abs(power).max()
        if np.abs(power - previous).max() < 1e-13:
            break
    vector = power[:, np.argmax(np.einsum("ij,ij->j", power, power))]
    for _ in range(2):  # polish against the original matrix
        vector = np.einsum("ij,j->i", gram, vector)
        vector /= np.sqrt(np.einsum("i,i->", vector, vector))
    return vector, float(np.einsum("i,ij,j->", vector, gram, vector))


def first_component(matrix: np.ndarray) -> np.ndarray:
    """First right singular vector [C] of a centered [P, C] float64 matrix, sign as it comes
    (0 for a zero matrix), from the smaller of the two Gram matrices."""
    positions, channels = matrix.shape
    if positions <= channels:
        u, value = dominant_eigenvector(np.einsum("pc,qc->pq", matrix, matrix))
        if value <= 0:
            return np.zeros(channels)
        return np.einsum("pc,p->c", matrix, u) / np.sqrt(value)
    v, value = dominant_eigenvector(np.einsum("pc,pd->cd", matrix, matrix))
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
