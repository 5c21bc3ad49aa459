"""onnxcam exporters: split ONNX models, build gradient heads, and the front ends.

What each part needs installed:

* the ONNX parts (:func:`export_onnx`, :func:`candidate_layers`, :func:`split_model`,
  :func:`build_bundle`, :mod:`exporters.graph`, :mod:`exporters.autodiff`): onnx and numpy,
  plus ``explainer``'s data modules (bundle, preprocessing, labels), which load neither ONNX
  Runtime nor Pillow;
* the PyTorch front end (:func:`export_torch`, :func:`validate`, :func:`reference_cams`):
  the ``torch`` extra, imported on first use.

The runtime (``explainer``) never imports this package, except through
:mod:`explainer.bridge`.
"""

from __future__ import annotations

from typing import Any

from explainer.errors import OnnxcamError

from .build import build_bundle
from .errors import ExportError, GradientError, MissingGradientRule, OnnxExportError, SplitError
from .onnx_frontend import Candidate, auto_targets, candidate_layers, export_onnx
from .split import SplitModel, split_model

__all__ = [
    "Candidate",
    "ExportError",
    "GradientError",
    "MissingGradientRule",
    "OnnxExportError",
    "OnnxcamError",
    "SplitError",
    "SplitModel",
    "auto_targets",
    "build_bundle",
    "candidate_layers",
    "export_onnx",
    "export_torch",
    "reference_cams",
    "reference_gradcam",
    "split_model",
    "validate",
]

_TORCH_NAMES = {
    "export_torch", "export_tapped", "reference_cams", "reference_gradcam", "validate",
    "ValidationReport",
}


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from . import torch as torch_frontend

        return getattr(torch_frontend, name)
    raise AttributeError(f"module 'exporters' has no attribute {name!r}")
