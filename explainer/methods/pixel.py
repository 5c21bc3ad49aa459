"""Pixel-space methods: maps over the input pixels, from the bundle's input-gradient graph.

They have no CAM weights (``weights`` and ``emit`` are None); :mod:`explainer.pixels` runs
them, reading ``needs_cam`` to know whether the guided gradient is multiplied by Grad-CAM.
"""

from __future__ import annotations

from .spec import MethodSpec

__all__ = ["SPECS"]

#: this module's methods, in display order (:data:`explainer.methods.METHODS`)
SPECS = (
    MethodSpec(
        "guided-backprop", "Guided Backpropagation", "pixel", None, None,
        paper="Springenberg et al., ICLR 2015 workshop, arXiv:1412.6806",
        formula="`dy_c/dX`, where every ReLU passes only positive gradients and only where "
                "its input was positive",
        peers={"pytorch-grad-cam": "GuidedBackpropReLUModel"},
    ),
    MethodSpec(
        "guided-gradcam", "Guided Grad-CAM", "pixel", None, None, needs_cam=True,
        paper="Selvaraju et al., ICCV 2017, arXiv:1610.02391",
        formula="the guided gradient times the Grad-CAM heatmap of the same class, upsampled "
                "to the input",
        peers={"pytorch-grad-cam": "GradCAM x GuidedBackpropReLUModel"},
    ),
)
