"""CAM methods: how activations and gradients become a class activation map.

Every method is one :class:`~explainer.methods.spec.MethodSpec` in :data:`METHODS`: its numpy
weights and, where it has one, its ONNX emitter for the explanation graph, side by side in one
module, with its title, kind, paper, formula and peers. Every CAM method shares one pipeline
(:func:`compute_cams`): a method only computes weights over the activation's channels (see
:mod:`explainer.methods.core`), the pipeline sums the weighted channels and applies the ReLU.
The pixel-space methods (``kind == "pixel"``) are listed too; :mod:`explainer.pixels` runs them.

Adding a method is its spec and its code in one module (appended to that module's ``SPECS``),
plus its torch reference in ``exporters.torch_reference.REFERENCE_METHODS``; the CLI, the
explanation graph, the tests and the benchmarks read the registry.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from ..errors import MethodError
from . import classifier, eigen, gradient, perturbation, pixel
from .core import CamContext, Method, ModelAccess, Weights, weighted_sum
from .gradient import gradcam_weights
from .spec import KINDS, GraphBuilder, MethodSpec

__all__ = [
    "KINDS",
    "METHODS",
    "CamContext",
    "GraphBuilder",
    "MethodError",
    "MethodSpec",
    "ModelAccess",
    "Weights",
    "compute_cams",
    "get_method",
    "gradcam_weights",
    "in_graph_methods",
]

#: Every method, pixel ones included, in display order: name -> spec.
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for module in (gradient, eigen, classifier, perturbation, pixel)
    for spec in module.SPECS
}


def in_graph_methods() -> list[str]:
    """Names of the methods the explanation graph can compute (those with an ONNX emitter),
    in registry order."""
    return [name for name, spec in METHODS.items() if spec.emit is not None]


def get_method(name: str) -> MethodSpec:
    """The spec of the CAM method ``name`` (one with numpy weights).

    Raises:
        MethodError: for a pixel-space method or an unknown name, listing the CAM methods.
    """
    spec = METHODS.get(name) if isinstance(name, str) else None
    if spec is not None and spec.weights is not None:
        return spec
    cams = ", ".join(sorted(m for m, s in METHODS.items() if s.weights is not None))
    pixels = ", ".join(m for m, s in METHODS.items() if s.kind == "pixel")
    if spec is not None:
        raise MethodError(f"{name!r} is a pixel-space method with no CAM weights (run it with "
                          f"Explainer.explain); CAM methods: {cams}")
    raise MethodError(f"unknown CAM method {name!r}; available: {cams} (pixel-space, "
                      f"Explainer.explain only: {pixels})")


def compute_cams(
    activation: np.ndarray,
    gradient: np.ndarray,
    method: str = "gradcam",
    class_ids: np.ndarray | None = None,
    model: ModelAccess | None = None,
) -> np.ndarray:
    """Raw CAMs [N, h, w] (float32, at activation resolution) of one target per image.

    Args:
        activation: [N, C, h, w] activation (NCHW).
        gradient: [N, C, h, w] gradient of each image's target score with respect to it.
        method: a name in :data:`METHODS` whose spec has weights (not a pixel method).
        class_ids: [N] target classes (needed by methods that run the model again).
        model: graph runs for those methods (:class:`explainer.access.LayerAccess`).
    """
    weigh = cast(Method, get_method(method).weights)  # get_method rejects pixel methods
    weights = weigh(CamContext(activation, gradient, class_ids, model))
    return weighted_sum(activation, weights)
