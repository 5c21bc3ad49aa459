"""The :class:`~explainer.methods.core.ModelAccess` of an Explainer: graph runs for methods.

Built by :meth:`explainer.runtime.Explainer.explain` for one batch and one layer; uses only
the Explainer's public graph runs (:meth:`run_features`, :meth:`run_logits`,
:meth:`run_layer_logits`) and manifest facts. The layer is the bundle's target or, in a layer
sweep, any of its layers: a later layer's activation is a tensor inside the head, so the
methods that replace it (Ablation-CAM) run the part of the head from that tensor on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..activations import from_channels_first
from ..errors import MethodError

if TYPE_CHECKING:
    from ..runtime import Explainer

__all__ = ["ExplainerAccess"]


class ExplainerAccess:
    """Graph runs on an Explainer's bundle for the input batch ``inputs`` being explained.

    Args:
        explainer: the :class:`explainer.runtime.Explainer`.
        inputs: the checked input batch [N, ...] (model layout and dtype).
        layer: the layer explained (a manifest ``target`` or ``layers`` entry: ``tensor``,
            ``layout``, token fields); None for the bundle's target.
        activation: that layer's activation [N, ...] in its own layout (token layouts keep
            their prefix tokens from it when an activation is replaced).
    """

    def __init__(self, explainer: Explainer, inputs: np.ndarray,
                 layer: dict[str, Any] | None = None,
                 activation: np.ndarray | None = None) -> None:
        self.explainer = explainer
        self.inputs = inputs
        self.layer = layer or explainer.bundle.manifest["target"]
        self.activation = activation
        self.first = self.layer["tensor"] == explainer.head_inputs[0]

    def head_graph(self) -> tuple[onnx.ModelProto, str, str, str]:
        """(head graph, the layer's tensor, logits output name, the layer's layout)."""
        e = self.explainer
        return e.bundle.head, self.layer["tensor"], e.logits_name, self.layer["layout"]

    def activation_scores(
        self, rows: np.ndarray, activations: np.ndarray, class_ids: np.ndarray
    ) -> np.ndarray:
        """Logit ``class_ids[m]`` of the head on ``activations[m]`` (NCHW) in place of image
        ``rows[m]``'s activation at the layer: [M]."""
        e = self.explainer
        if self.first and len(e.head_inputs) > 1:
            raise MethodError(
                f"this method replaces the activation, but the head also reads "
                f"{e.head_inputs[1:]} from the features graph; choose a later target layer"
            )
        original = None if self.activation is None else self.activation[rows]
        replaced = np.ascontiguousarray(
            from_channels_first(activations, self.layer, original), dtype=np.float32)
        if self.first:
            logits = e.run_logits({e.head_inputs[0]: replaced})
        else:
            logits = e.run_layer_logits(self.layer["tensor"], replaced)
        return logits[np.arange(len(class_ids)), class_ids]

    def input_scores(
        self, rows: np.ndarray, masks: np.ndarray, class_ids: np.ndarray
    ) -> np.ndarray:
        """Logit ``class_ids[m]`` of the whole model on ``inputs[rows[m]] * masks[m]``: [M]."""
        e = self.explainer
        x = self.inputs[rows]
        masks = masks[:, None] if e.input_layout == "NCHW" else masks[..., None]
        masked = x * masks
        if x.dtype == np.uint8:
            masked = np.rint(masked).astype(np.uint8)
        logits = e.run_logits(e.run_features(masked.astype(x.dtype, copy=False)))
        return logits[np.arange(len(class_ids)), class_ids]

    def input_size(self) -> tuple[int, int]:
        """(H, W) of the model input."""
        shape = self.inputs.shape
        return (shape[2], shape[3]) if self.explainer.input_layout == "NCHW" else shape[1:3]
