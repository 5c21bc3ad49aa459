"""CAM methods: how activations and gradients become a class activation map.

Every method shares one pipeline (:func:`compute_cams`): a method only computes weights over
the activation's channels (see :mod:`explainer.methods.core`), the pipeline sums the weighted
channels and applies the ReLU. Adding a method is one function and one entry in
:data:`METHODS`, plus its row in ``tests/test_methods.py``; each function's docstring gives
its paper and formula.
"""

from __future__ import annotations

import numpy as np

from ..errors import MethodError
from .access import ExplainerAccess
from .classifier import cam_weights
from .core import CamContext, Method, ModelAccess, Weights, weighted_sum
from .eigen import eigencam_weights, eigengradcam_weights
from .gradient import (
    counterfactual_weights,
    gradcam_elementwise_weights,
    gradcam_plusplus_weights,
    gradcam_weights,
    hirescam_weights,
    layercam_weights,
    xgradcam_weights,
)
from .perturbation import ablationcam_weights, scorecam_weights

__all__ = [
    "METHODS",
    "CamContext",
    "ExplainerAccess",
    "MethodError",
    "ModelAccess",
    "Weights",
    "compute_cams",
    "get_method",
    "gradcam_weights",
]

#: Registered methods, the one list of method names: name -> weight function.
METHODS: dict[str, Method] = {
    "gradcam": gradcam_weights,
    "gradcam++": gradcam_plusplus_weights,
    "xgradcam": xgradcam_weights,
    "hirescam": hirescam_weights,
    "gradcam-elementwise": gradcam_elementwise_weights,
    "layercam": layercam_weights,
    "eigencam": eigencam_weights,
    "eigengradcam": eigengradcam_weights,
    "counterfactual": counterfactual_weights,
    "cam": cam_weights,
    "ablationcam": ablationcam_weights,
    "scorecam": scorecam_weights,
}


def get_method(name: str) -> Method:
    """The weight function registered as ``name``.

    Raises:
        MethodError: for an unknown name, listing the available ones.
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise MethodError(
            f"unknown CAM method {name!r}; available: {', '.join(sorted(METHODS))}"
        ) from None


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
        method: a name in :data:`METHODS`.
        class_ids: [N] target classes (needed by methods that run the model again).
        model: graph runs for those methods (:class:`ExplainerAccess`).
    """
    weights = get_method(method)(CamContext(activation, gradient, class_ids, model))
    return weighted_sum(activation, weights)
