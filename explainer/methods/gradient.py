"""Gradient-weighted methods: one forward and one gradient per target, weights in closed form.

Notation: ``A`` is the activation [N, C, h, w], ``g = dy_c/dA`` the gradient of the target
class score, sums over ``ij`` run over the h x w positions. Every method's map is
``ReLU(sum_k w_k A^k)`` computed by :func:`explainer.methods.core.weighted_sum`. Each method
also has an emitter writing the same weights as ONNX nodes for the explanation graph, and its
:class:`~explainer.methods.spec.MethodSpec` in :data:`SPECS`.
"""

from __future__ import annotations

import numpy as np

from .core import CamContext
from .spec import GraphBuilder, MethodSpec, channel_sums, safe_divide

__all__ = [
    "SPECS",
    "counterfactual_weights",
    "gradcam_elementwise_weights",
    "gradcam_plusplus_weights",
    "gradcam_weights",
    "hirescam_weights",
    "layercam_weights",
    "xgradcam_weights",
]


def gradcam_weights(ctx: CamContext) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391).

    ``w_k = mean_ij g^k_ij``; channel weights [N, C].
    """
    return ctx.gradient.mean(axis=(2, 3))


def counterfactual_weights(ctx: CamContext) -> np.ndarray:
    """Counterfactual Grad-CAM (Selvaraju et al., ICCV 2017, section 4.3 "counterfactual
    explanations"): regions whose removal would raise the class score.

    ``w_k = mean_ij (-g^k_ij)``: Grad-CAM of the negated gradient; channel weights [N, C].
    """
    return -ctx.gradient.mean(axis=(2, 3))


def gradcam_plusplus_weights(ctx: CamContext) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, arXiv:1710.11063, eq. 19).

    ``alpha^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3)`` and ``w_k = sum_ij alpha^k_ij ReLU(g^k_ij)``,
    with ``alpha = 0`` where the gradient or the denominator is 0. Computed as
    ``1 / (2 + S_k g)`` (g^2 divided out), which is exact at any gradient scale.

    Deliberate difference: pytorch-grad-cam adds 1e-6 to the denominator. Where |g| is below
    about 1e-3 (common at the last stage) that constant dominates ``g^2`` and changes the
    weights; without it the formula is the paper's.
    """
    g = ctx.gradient.astype(np.float64)
    sums = ctx.activation.sum(axis=(2, 3), dtype=np.float64)[:, :, None, None]
    denominator = 2 + sums * g
    safe = np.where(denominator != 0, denominator, 1)
    alpha = np.where((g != 0) & (denominator != 0), 1 / safe, 0)
    return (alpha * np.maximum(g, 0)).sum(axis=(2, 3)).astype(np.float32)


def xgradcam_weights(ctx: CamContext) -> np.ndarray:
    """XGrad-CAM (Fu et al., BMVC 2020, arXiv:2008.02312).

    ``w_k = sum_ij (A^k_ij / sum_ab A^k_ab) g^k_ij``, 0 for a channel whose activations sum
    to 0; channel weights [N, C]. pytorch-grad-cam adds 1e-7 to the sum instead (negligible
    next to a sum over the map).
    """
    a = ctx.activation.astype(np.float64)
    sums = a.sum(axis=(2, 3))
    weighted = (a * ctx.gradient).sum(axis=(2, 3))
    return np.divide(weighted, sums, out=np.zeros_like(sums), where=sums != 0).astype(np.float32)


def hirescam_weights(ctx: CamContext) -> np.ndarray:
    """HiResCAM (Draelos & Carin, 2020, arXiv:2011.08891).

    ``w^k_ij = g^k_ij``: the map is ``ReLU(sum_k g^k A^k)`` with no spatial averaging;
    per-position weights [N, C, h, w].
    """
    return ctx.gradient


def gradcam_elementwise_weights(ctx: CamContext) -> np.ndarray:
    """Element-wise Grad-CAM (pytorch-grad-cam's ``GradCAMElementWise``).

    ``ReLU(sum_k ReLU(g^k A^k))``, written as per-position weights ``w^k_ij = g^k_ij`` where
    ``g^k_ij A^k_ij > 0`` and 0 elsewhere; [N, C, h, w].
    """
    g = ctx.gradient
    return np.where(g * ctx.activation > 0, g, 0).astype(g.dtype, copy=False)


def layercam_weights(ctx: CamContext) -> np.ndarray:
    """LayerCAM (Jiang et al., IEEE TIP 2021, doi:10.1109/TIP.2021.3089943).

    ``w^k_ij = ReLU(g^k_ij)``: the map is ``ReLU(sum_k ReLU(g^k) A^k)``; per-position weights
    [N, C, h, w].
    """
    return np.maximum(ctx.gradient, 0)


# --- the same weights as ONNX nodes (explanation graph): activation [B, C, h, w], gradient
# [B, K, C, h, w] -> [B, K, C] channel weights, or per-position weights
def gradcam_emit(b: GraphBuilder, activation: str, gradient: str) -> str:
    """Grad-CAM in the graph: ``w_c = mean_ij g^c_ij`` -> [B, K, C]."""
    return b.reduce("ReduceMean", gradient, [3, 4], keepdims=0)


def counterfactual_emit(b: GraphBuilder, activation: str, gradient: str) -> str:
    """Counterfactual Grad-CAM in the graph: ``w_c = mean_ij (-g^c_ij)`` -> [B, K, C]."""
    return b.op("Neg", gradcam_emit(b, activation, gradient))


def gradcam_plusplus_emit(b: GraphBuilder, activation: str, gradient: str) -> str:
    """Grad-CAM++ in the graph: ``alpha = 1 / (2 + S_c g)`` (g^2 divided out), 0 where the
    denominator is 0; ``w_c = sum_ij alpha ReLU(g)`` -> [B, K, C]."""
    denominator = b.op("Add", b.const(2.0, np.float32),
                       b.op("Mul", channel_sums(b, activation), gradient))
    terms = safe_divide(b, b.op("Relu", gradient), denominator)
    return b.reduce("ReduceSum", terms, [3, 4], keepdims=0)


def xgradcam_emit(b: GraphBuilder, activation: str, gradient: str) -> str:
    """XGrad-CAM in the graph: ``w_c = sum_ij A^c_ij g^c_ij / sum_ab A^c_ab``, 0 where the
    activations sum to 0 -> [B, K, C]."""
    a = b.op("Unsqueeze", activation, b.const([1]))
    weighted = b.reduce("ReduceSum", b.op("Mul", a, gradient), [3, 4], keepdims=0)
    return safe_divide(b, weighted, channel_sums(b, activation, keepdims=0))


def hirescam_emit(b: GraphBuilder, activation: str, gradient: str) -> str:
    """HiResCAM in the graph: ``w^c_ij = g^c_ij`` (per position)."""
    return b.op("Identity", gradient)


def gradcam_elementwise_emit(b: GraphBuilder, activation: str, gradient: str) -> str:
    """Element-wise Grad-CAM in the graph: ``w^c_ij = g^c_ij`` where ``g A > 0``, else 0
    (per position)."""
    product = b.op("Mul", gradient, b.op("Unsqueeze", activation, b.const([1])))
    return b.op("Where", b.op("Greater", product, b.const(0.0, np.float32)), gradient,
                b.const(0.0, np.float32))


def layercam_emit(b: GraphBuilder, activation: str, gradient: str) -> str:
    """LayerCAM in the graph: ``w^c_ij = ReLU(g^c_ij)`` (per position)."""
    return b.op("Relu", gradient)


#: this module's methods, in display order (:data:`explainer.methods.METHODS`)
SPECS = (
    MethodSpec(
        "gradcam", "Grad-CAM", "closed-form", gradcam_weights, gradcam_emit,
        paper="Selvaraju et al., ICCV 2017, arXiv:1610.02391",
        formula="`w_k = mean_ij g^k_ij`; `M = ReLU(sum_k w_k A^k)`",
        peers={"pytorch-grad-cam": "GradCAM", "torchcam": "GradCAM"},
    ),
    MethodSpec(
        "gradcam++", "Grad-CAM++", "closed-form", gradcam_plusplus_weights,
        gradcam_plusplus_emit,
        paper="Chattopadhay et al., WACV 2018, arXiv:1710.11063",
        formula="`alpha^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3)`; "
                "`w_k = sum_ij alpha^k_ij ReLU(g^k_ij)`",
        peers={"pytorch-grad-cam": "GradCAMPlusPlus", "torchcam": "GradCAMpp"},
    ),
    MethodSpec(
        "xgradcam", "XGrad-CAM", "closed-form", xgradcam_weights, xgradcam_emit,
        paper="Fu et al., BMVC 2020, arXiv:2008.02312",
        formula="`w_k = sum_ij (A^k_ij / sum_ab A^k_ab) g^k_ij`",
        peers={"pytorch-grad-cam": "XGradCAM", "torchcam": "XGradCAM"},
    ),
    MethodSpec(
        "hirescam", "HiResCAM", "closed-form", hirescam_weights, hirescam_emit,
        per_position=True, local=True,
        paper="Draelos & Carin, 2020, arXiv:2011.08891",
        formula="`M = ReLU(sum_k g^k A^k)`",
        peers={"pytorch-grad-cam": "HiResCAM"},
    ),
    MethodSpec(
        "gradcam-elementwise", "Element-wise Grad-CAM", "closed-form",
        gradcam_elementwise_weights, gradcam_elementwise_emit, per_position=True, local=True,
        paper="pytorch-grad-cam's GradCAMElementWise (Gildenblat et al., "
              "https://github.com/jacobgil/pytorch-grad-cam)",
        formula="`M = ReLU(sum_k ReLU(g^k A^k))`",
        peers={"pytorch-grad-cam": "GradCAMElementWise"},
    ),
    MethodSpec(
        "layercam", "LayerCAM", "closed-form", layercam_weights, layercam_emit,
        per_position=True, local=True,
        paper="Jiang et al., IEEE TIP 2021, doi:10.1109/TIP.2021.3089943",
        formula="`M = ReLU(sum_k ReLU(g^k) A^k)`",
        peers={"pytorch-grad-cam": "LayerCAM", "torchcam": "LayerCAM"},
    ),
    MethodSpec(
        "counterfactual", "Counterfactual Grad-CAM", "closed-form", counterfactual_weights,
        counterfactual_emit,
        paper="Selvaraju et al., ICCV 2017 (section 4.3), arXiv:1610.02391",
        formula="`w_k = mean_ij (-g^k_ij)`; `M = ReLU(sum_k w_k A^k)`",
    ),
)
