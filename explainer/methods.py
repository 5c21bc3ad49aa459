"""CAM methods: how activations and gradients become a class activation map.

Every method shares one pipeline (see :func:`compute_cams`): it only chooses the channel
weights. Adding a method is one function registered in :data:`METHODS` plus a test row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import MethodError

__all__ = ["METHODS", "MethodError", "compute_cams", "gradcam_weights"]

WeightFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def gradcam_weights(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., ICCV 2017): alpha_k = mean over (i, j) of dy/dA^k_ij.

    Args:
        activation: [N, C, h, w] activation (unused; weights come from the gradient alone).
        gradient: [N, C, h, w] gradient of the class score w.r.t. the activation.

    Returns:
        [N, C] channel weights.
    """
    return gradient.mean(axis=(2, 3))


#: Registered methods: name -> weight function (activation, gradient) -> [N, C].
METHODS: dict[str, WeightFn] = {"gradcam": gradcam_weights}


def compute_cams(
    activation: np.ndarray, gradient: np.ndarray, method: str = "gradcam"
) -> np.ndarray:
    """ReLU(sum_k w_k A^k) for activation and gradient in NCHW: returns raw CAMs [N, h, w]."""
    try:
        weight_fn = METHODS[method]
    except KeyError:
        raise MethodError(f"unknown CAM method {method!r}; available: {sorted(METHODS)}") from None
    weights = weight_fn(activation, gradient)
    # plain einsum loop, not BLAS: BLAS threads spinning after the call would slow the next
    # ONNX Runtime run on the same cores
    cams = np.einsum("nc,nchw->nhw", weights, activation)
    return np.maximum(cams, 0).astype(np.float32)
