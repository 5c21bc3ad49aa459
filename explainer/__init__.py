"""onnxcam runtime: Grad-CAM computed by ONNX Runtime from a bundle. Never imports torch."""

from __future__ import annotations

from .bundle import Bundle, BundleError
from .image import ImageError, Preprocessing, load_image, preprocess
from .methods import METHODS, MethodError, compute_cams
from .runtime import Explainer, ExplainerError, Explanation, InputError, ProviderError
from .targets import TargetError

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "BundleError",
    "Explainer",
    "ExplainerError",
    "Explanation",
    "ImageError",
    "InputError",
    "METHODS",
    "MethodError",
    "Preprocessing",
    "ProviderError",
    "TargetError",
    "compute_cams",
    "load_image",
    "preprocess",
]
