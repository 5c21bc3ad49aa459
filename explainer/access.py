"""The :class:`~explainer.methods.core.ModelAccess` of a runner: graph runs for methods.

Built (:meth:`explainer.runner.Runner.access`) for one batch and one layer; uses only the
runner's graph runs (``run_features``, ``run_logits``, ``run_layer_logits``) and the typed
manifest. The layer is the bundle's target or, in a layer sweep, any of its layers: a later
layer's activation is a tensor inside the head, so the methods that replace it (Ablation-CAM)
run the part of the head from that tensor on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import onnx

from .activations import from_channels_first
from .errors import MethodError
from .manifest import LayerSpec, Manifest
from .sessions import to_numpy

__all__ = ["GraphRuns", "LayerAccess", "Scorer"]

#: scores of targets from the head's explained output: (values [M, ...], image rows [M],
#: target ids [M]) -> [M]; None means the logit of class ``ids[m]`` (a classifier)
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class GraphRuns(Protocol):
    """The graph runs :class:`LayerAccess` needs (what :class:`explainer.runner.Runner`
    provides)."""

    spec: Manifest
    head: onnx.ModelProto

    def run_features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The cut tensors of an input batch."""
        ...

    def run_logits(self, features: dict[str, Any]) -> np.ndarray:
        """The head's explained tensor for cut tensors."""
        ...

    def run_layer_logits(self, tensor: str, activation: np.ndarray) -> np.ndarray:
        """The head's explained tensor from a tensor inside the head."""
        ...


class LayerAccess:
    """Graph runs on a bundle for the input batch ``inputs`` being explained, at one layer.

    Args:
        runs: the graph runs (an :class:`explainer.runner.Runner`).
        inputs: the checked input batch [N, ...] (model layout and dtype).
        layer: the layer explained (the target or a layer of a sweep); None for the target.
        activation: that layer's activation [N, ...] in its own layout (token layouts keep
            their prefix tokens from it when an activation is replaced).
        features: the features graph's outputs for ``inputs`` (the other tensors that cross
            the cut are fed as they are when the activation is replaced).
        scorer: how a target's score is read from the head's explained output (a detector's
            detection scores); None: the logit of the target class.
    """

    def __init__(self, runs: GraphRuns, inputs: np.ndarray,
                 layer: LayerSpec | None = None,
                 activation: np.ndarray | None = None,
                 features: dict[str, Any] | None = None,
                 scorer: Scorer | None = None) -> None:
        self.runs = runs
        self.inputs = inputs
        self.features = features
        self.scorer = scorer
        self.layer = layer or runs.spec.target
        self.activation = activation
        #: the layer is a cut tensor (a head input), not a tensor inside the head
        self.first = self.layer.tensor in runs.spec.head.inputs

    def head_graph(self) -> tuple[onnx.ModelProto, str, str, str]:
        """(head graph, the layer's tensor, logits output name, the layer's layout)."""
        return self.runs.head, self.layer.tensor, self.runs.spec.head.logits, self.layer.layout

    def activation_scores(
        self, rows: np.ndarray, activations: np.ndarray, class_ids: np.ndarray
    ) -> np.ndarray:
        """Logit ``class_ids[m]`` of the head on ``activations[m]`` (NCHW) in place of image
        ``rows[m]``'s activation at the layer: [M]."""
        tensor = self.layer.tensor
        others = [name for name in self.runs.spec.head.inputs if name != tensor]
        rows_of = len(self.inputs)
        per_row = self.features is not None and all(
            getattr(self.features[name], "ndim", 0) and self.features[name].shape[0] == rows_of
            and to_numpy(self.features[name]).dtype.kind == "f" for name in others)
        if self.first and others and not per_row:  # a size or an index crosses the cut
            raise MethodError(
                f"this method replaces the activation, but the head also reads "
                f"{others} from the features graph; choose a later target layer"
            )
        original = None if self.activation is None else self.activation[rows]
        replaced = np.ascontiguousarray(
            from_channels_first(activations, self.layer.entry, original), dtype=np.float32)
        if self.first:  # the other cut tensors as the image gave them
            feeds = {name: to_numpy(self.features[name])[rows] for name in others}
            logits = self.runs.run_logits({tensor: replaced, **feeds})
        else:
            logits = self.runs.run_layer_logits(tensor, replaced)
        return self._scores(logits, rows, class_ids)

    def _scores(self, values: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self.scorer is not None:
            return self.scorer(values, rows, ids)
        return values[np.arange(len(ids)), ids]

    def input_scores(
        self, rows: np.ndarray, masks: np.ndarray, class_ids: np.ndarray
    ) -> np.ndarray:
        """Logit ``class_ids[m]`` of the whole model on ``inputs[rows[m]] * masks[m]``: [M]."""
        x = self.inputs[rows]
        masks = masks[:, None] if self.runs.spec.input.layout == "NCHW" else masks[..., None]
        masked = x * masks
        if x.dtype == np.uint8:
            masked = np.rint(masked).astype(np.uint8)
        runs = self.runs
        logits = runs.run_logits(runs.run_features(masked.astype(x.dtype, copy=False)))
        return self._scores(logits, rows, class_ids)

    def input_size(self) -> tuple[int, int]:
        """(H, W) of the model input."""
        return self.runs.spec.input.size(self.inputs)
