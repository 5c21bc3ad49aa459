"""onnxcam exporters: split ONNX models, build gradient heads, and the PyTorch front end.

The ONNX parts need onnx and numpy only (:func:`export_onnx`, :func:`candidate_layers`,
:func:`check_gradients` included); :func:`export_torch`, :func:`validate` and
:func:`reference_gradcam` import torch on first use (the ``torch`` extra).
"""

from __future__ import annotations

from typing import Any

from .build import build_bundle
from .check import GradientCheckError, GradientCheckReport, check_gradients
from .onnx import Candidate, OnnxExportError, candidate_layers, export_onnx
from .split import SplitError, SplitModel, split_model

__all__ = [
    "Candidate",
    "GradientCheckError",
    "GradientCheckReport",
    "OnnxExportError",
    "SplitError",
    "SplitModel",
    "build_bundle",
    "candidate_layers",
    "check_gradients",
    "export_onnx",
    "export_torch",
    "reference_gradcam",
    "split_model",
    "validate",
]

_TORCH_NAMES = {
    "export_torch", "export_tapped", "reference_gradcam", "validate", "ValidationReport",
}


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from . import torch as torch_frontend

        return getattr(torch_frontend, name)
    raise AttributeError(f"module 'exporters' has no attribute {name!r}")
