"""Validation of a bundle against PyTorch autograd: per-map errors, and BatchNorm statistics
for random-weight models.

Needs the ``torch`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from explainer.bundle import Bundle

from .torch_reference import reference_cams

__all__ = ["ValidationReport", "recalibrate_batchnorm", "relative_l2", "validate"]


@dataclass
class ValidationReport:
    """Per-map relative L2 error between a bundle's raw CAMs and the PyTorch reference.

    Attributes:
        errors: [B, K] relative L2 errors ||cam - ref|| / ||ref||.
        class_ids: [B, K] classes compared.
        logits_error: max abs difference of the logits.
        cams: [B, K, h, w] the bundle's raw CAMs (ONNX Runtime).
        reference: [B, K, h, w] the PyTorch autograd CAMs.
    """

    errors: np.ndarray
    class_ids: np.ndarray
    logits_error: float
    cams: np.ndarray
    reference: np.ndarray

    @property
    def max_error(self) -> float:
        """Largest per-map error."""
        return float(self.errors.max())

    def fraction_below(self, tolerance: float) -> float:
        """Fraction of maps with error at most ``tolerance``."""
        return float((self.errors <= tolerance).mean())


def relative_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / ||b|| per map over the last two axes (0 when both maps are zero)."""
    diff = np.sqrt(((a.astype(np.float64) - b) ** 2).sum(axis=(-2, -1)))
    norm = np.sqrt((b.astype(np.float64) ** 2).sum(axis=(-2, -1)))
    scale = np.maximum(norm, 1e-12)
    return np.where((norm == 0) & (diff == 0), 0.0, diff / scale)


def validate(
    bundle: Bundle,
    model: nn.Module,
    target_layer: nn.Module | str,
    inputs: np.ndarray | torch.Tensor,
    targets: Any = None,
    explainer: Any = None,
    method: str = "gradcam",
) -> ValidationReport:
    """Compare the bundle's raw CAMs (ONNX Runtime) with the PyTorch autograd reference
    (:func:`exporters.torch_reference.reference_cams`) for a CAM method.

    Args:
        bundle: a bundle exported from ``model``.
        model: the PyTorch model.
        target_layer: the layer the bundle explains.
        inputs: a float32 NCHW batch.
        targets: any target spec :meth:`explainer.Explainer.explain` accepts.
        explainer: an existing :class:`explainer.Explainer` for ``bundle`` (built if None).
        method: the CAM method, a name in :data:`explainer.methods.METHODS`.
    """
    from explainer import Explainer

    x = np.ascontiguousarray(np.asarray(inputs, dtype=np.float32))
    explainer = explainer or Explainer(bundle)
    explanation = explainer.explain(x, targets=targets, method=method)
    ref_cams, ref_logits = reference_cams(model, target_layer, x, explanation.class_ids, method)
    return ValidationReport(
        errors=relative_l2(explanation.cams, ref_cams),
        class_ids=explanation.class_ids,
        logits_error=float(np.abs(explanation.logits - ref_logits).max()),
        cams=explanation.cams,
        reference=ref_cams,
    )


def recalibrate_batchnorm(
    model: nn.Module, input_shape: Sequence[int] = (8, 3, 224, 224), batches: int = 3, seed: int = 0
) -> nn.Module:
    """Re-estimate BatchNorm running statistics on random inputs (for random-init models).

    Randomly initialised networks can have vanishing activations (logits ~1e-9), which makes any
    numerical comparison meaningless; cumulative statistics from a few random batches restore
    unit-scale activations. Returns the model in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(batches if norms else 0):
            model(torch.randn(tuple(input_shape), generator=generator))
    return model.eval()
