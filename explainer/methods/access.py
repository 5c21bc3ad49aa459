"""The :class:`~explainer.methods.core.ModelAccess` of an Explainer: graph runs for methods.

Built by :meth:`explainer.runtime.Explainer.explain` for one batch; uses only the Explainer's
public graph runs (:meth:`run_features`, :meth:`run_logits`) and manifest facts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..errors import MethodError

if TYPE_CHECKING:
    from ..runtime import Explainer

__all__ = ["ExplainerAccess"]


class ExplainerAccess:
    """Graph runs on an Explainer's bundle for the input batch ``inputs`` being explained.

    Args:
        explainer: the :class:`explainer.runtime.Explainer`.
        inputs: the checked input batch [N, ...] (model layout and dtype).
    """

    def __init__(self, explainer: Explainer, inputs: np.ndarray) -> None:
        self.explainer = explainer
        self.inputs = inputs

    def head_graph(self) -> tuple[onnx.ModelProto, str, str, str]:
        """(head graph, activation input name, logits output name, activation layout)."""
        e = self.explainer
        return e.bundle.head, e.head_inputs[0], e.logits_name, e.target_layout

    def activation_scores(
        self, rows: np.ndarray, activations: np.ndarray, class_ids: np.ndarray
    ) -> np.ndarray:
        """Logit ``class_ids[m]`` of the head on ``activations[m]`` (NCHW): [M]."""
        e = self.explainer
        if len(e.head_inputs) > 1:
            raise MethodError(
                f"this method replaces the activation, but the head also reads "
                f"{e.head_inputs[1:]} from the features graph; choose a later target layer"
            )
        if e.target_layout == "NHWC":
            activations = activations.transpose(0, 2, 3, 1)
        feeds = {e.head_inputs[0]: np.ascontiguousarray(activations, dtype=np.float32)}
        logits = e.run_logits(feeds)
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
