"""The :class:`~explainer.methods.core.ModelAccess` of an Explainer: graph runs for methods.

Built by :meth:`explainer.runtime.Explainer.explain` for one batch and one layer; uses only
the Explainer's public graph runs (:meth:`run_features`, :meth:`run_logits`,
:meth:`run_layer_logits`) and manifest facts. The layer is the bundle's target or, in a layer
sweep, any of its layers: a later layer's activation is a tensor inside the head, so the
methods that replace it (Ablation-CAM) run the part of the head from that tensor on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..activations import from_channels_first
from ..errors import MethodError

if TYPE_CHECKING:
    from ..runtime import Explainer

__all__ = ["ExplainerAccess", "Scorer"]

#: scores of targets from the head's explained output: (values [M, ...], image rows [M],
#: target ids [M]) -> [M]; None means the logit of class ``ids[m]`` (a classifier)
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class ExplainerAccess:
    """Graph runs on an Explainer's bundle for the input batch ``inputs`` being explained.

    Args:
        explainer: the :class:`explainer.runtime.Explainer`.
        inputs: the checked input batch [N, ...] (model layout and dtype).
        layer: the layer explained (a manifest ``target`` or ``layers`` entry: ``tensor``,
            ``layout``, token fields); None for the bundle's target.
        activation: that layer's activation [N, ...] in its own layout (token layouts keep
            their prefix tokens from it when an activation is replaced).
        features: the features graph's outputs for ``inputs`` (the other tensors that cross
            the cut are fed as they are when the activation is replaced).
        scorer: how a target's score is read from the head's explained output (a detector's
            detection scores); None: the logit of the target class.
    """

    def __init__(self, explainer: Explainer, inputs: np.ndarray,
                 layer: dict[str, Any] | None = None,
                 activation: np.ndarray | None = None,
                 features: dict[str, Any] | None = None,
                 scorer: Scorer | None = None) -> None:
        self.explainer = explainer
        self.inputs = inputs
        self.features = features
        self.scorer = scorer
        self.layer = layer or explainer.bundle.manifest["target"]
        self.activation = activation
        #: the layer is a cut tensor (a head input), not a tensor inside the head
        self.first = self.layer["tensor"] in explainer.head_inputs

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
        others = [name for name in e.head_inputs if name != self.layer["tensor"]]
        rows_of = len(self.inputs)
        per_row = self.features is not None and all(
            getattr(self.features[name], "ndim", 0) and self.features[name].shape[0] == rows_of
            and e._to_numpy(self.features[name]).dtype.kind == "f" for name in others)
        if self.first and others and not per_row:  # a size or an index crosses the cut
            raise MethodError(
                f"this method replaces the activation, but the head also reads "
                f"{others} from the features graph; choose a later target layer"
            )
        original = None if self.activation is None else self.activation[rows]
        replaced = np.ascontiguousarray(
            from_channels_first(activations, self.layer, original), dtype=np.float32)
        if self.first:  # the other cut tensors as the image gave them
            feeds = {name: e._to_numpy(self.features[name])[rows] for name in others}
            logits = e.run_logits({self.layer["tensor"]: replaced, **feeds})
        else:
            logits = e.run_layer_logits(self.layer["tensor"], replaced)
        return self._scores(logits, rows, class_ids)

    def _scores(self, values: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self.scorer is not None:
            return self.scorer(values, rows, ids)
        return values[np.arange(len(ids)), ids]

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
        return self._scores(logits, rows, class_ids)

    def input_size(self) -> tuple[int, int]:
        """(H, W) of the model input."""
        shape = self.inputs.shape
        return (shape[2], shape[3]) if self.explainer.input_layout == "NCHW" else shape[1:3]
