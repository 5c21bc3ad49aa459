"""Pixel-space explanations from a bundle's input-gradient graph.

* ``guided-backprop`` (Springenberg et al., ICLR 2015 workshop): the gradient of the class score
  with respect to the input pixels, where every ReLU passes only positive gradients and only
  where its input was positive (the graph is built with that rule; see
  :mod:`exporters.autodiff.rules.guided`).
* ``guided-gradcam`` (Selvaraju et al., ICCV 2017): the guided gradient times the Grad-CAM
  heatmap of the same class, upsampled to the input, which keeps the fine detail of the
  former where the latter points.

Both return the Grad-CAM heatmaps too; ``Explanation.pixels`` holds the pixel maps
``[B, K, C, H, W]``. A bundle exported without ``input_gradient=True`` has no graph for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import MethodError
from .explanation import softmax
from .methods import METHODS
from .targets import seed_rows

if TYPE_CHECKING:
    from .bundle import Bundle
    from .explanation import Explanation
    from .runner import Runner

__all__ = ["PIXEL_METHODS", "pixel_maps", "require_input_gradient"]

#: pixel-space methods: name -> whether the guided gradient is multiplied by Grad-CAM
PIXEL_METHODS = {m: spec.needs_cam for m, spec in METHODS.items() if spec.kind == "pixel"}


def require_input_gradient(bundle: Bundle, method: str) -> None:
    """Check that ``bundle`` can run the pixel-space ``method`` (before any image is explained).

    Raises:
        MethodError: the bundle has no input-gradient graph (the message says how to get one).
    """
    if bundle.input_gradient is None:
        raise MethodError(
            f"method {method!r} needs the bundle's input-gradient graph; export with "
            "input_gradient=True (export_torch / export_onnx, or onnxcam export "
            "--input-gradient)"
        )


def pixel_maps(runner: Runner, x: np.ndarray, cam: Explanation, method: str) -> np.ndarray:
    """Guided gradients [B, K, C, H, W] of the classes (and contrast classes, and score) that
    the Grad-CAM explanation ``cam`` explains; times its heatmaps for guided Grad-CAM.

    Args:
        runner: the graph runs of the bundle (:attr:`explainer.Explainer.runner`).
        x: the checked input batch ``cam`` explains.
        cam: its Grad-CAM explanation.
        method: a name in :data:`PIXEL_METHODS`.

    Raises:
        MethodError: the bundle has no input-gradient graph.
    """
    require_input_gradient(runner.bundle, method)
    spec = runner.spec
    batch, k = cam.class_ids.shape
    probabilities = None  # explaining logits, or probabilities the head outputs itself
    if cam.score == "probability" and spec.head.score == "logit":
        probabilities = softmax(cam.logits.astype(np.float64))
    seeds = seed_rows(cam.class_ids, spec.num_classes, cam.contrast_ids, probabilities)
    gradient = runner.run_input_gradient(np.repeat(x, k, axis=0), seeds)
    gradient = gradient.reshape(batch, k, *gradient.shape[1:])
    if spec.input.layout == "NHWC":
        gradient = gradient.transpose(0, 1, 4, 2, 3)
    if PIXEL_METHODS[method]:
        gradient = gradient * cam.heatmaps[:, :, None]
    return np.ascontiguousarray(gradient, dtype=np.float32)
