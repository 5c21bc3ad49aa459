"""onnxcam runtime: Grad-CAM and its family computed by ONNX Runtime from a bundle.

Needs numpy, onnx, onnxruntime and Pillow; never imports torch. Names load on first use, so
``import explainer.bundle`` (what the exporters need) does not load ONNX Runtime or Pillow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    BundleError,
    ExplainerError,
    ImageError,
    InputError,
    LabelError,
    MethodError,
    OnnxcamError,
    OutputError,
    ProviderError,
    TargetError,
    UsageError,
    VisualizeError,
)
from .lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "Bundle": "bundle",
    "Manifest": "manifest",
    "Preprocessing": "preprocessing",
    "load_image": "image",
    "preprocess": "image",
    "METHODS": "methods",
    "compute_cams": "methods",
    "Explainer": "runtime",
    "Explanation": "explanation",
    "GradientCheckReport": "gradcheck",
    "check_gradients": "gradcheck",
    "evaluate": "evaluation",
}

__all__ = [
    "BundleError",
    "ExplainerError",
    "ImageError",
    "InputError",
    "LabelError",
    "MethodError",
    "OnnxcamError",
    "OutputError",
    "ProviderError",
    "TargetError",
    "UsageError",
    "VisualizeError",
    "Bundle",
    "Manifest",
    "Preprocessing",
    "load_image",
    "preprocess",
    "METHODS",
    "compute_cams",
    "Explainer",
    "Explanation",
    "GradientCheckReport",
    "check_gradients",
    "evaluate",
]

if TYPE_CHECKING:
    from .bundle import Bundle
    from .evaluation import evaluate
    from .explanation import Explanation
    from .gradcheck import GradientCheckReport, check_gradients
    from .image import load_image, preprocess
    from .manifest import Manifest
    from .methods import METHODS, compute_cams
    from .preprocessing import Preprocessing
    from .runtime import Explainer


__getattr__ = lazy_getattr(__name__, _LAZY, __name__)
