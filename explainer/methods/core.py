"""The pipeline every CAM method shares, and what a method is given to compute its weights.

A method maps a :class:`CamContext` to weights over the activation ``A`` [N, C, h, w]:

* channel weights [N, C] (Grad-CAM and most of the family), or
* per-position weights [N, C, h, w] (HiResCAM, LayerCAM, ...), or
* :class:`Weights`: either of the above plus a per-image offset [N] (the eigen methods project
  *centered* activations, which is a weighted sum minus a constant).

:func:`weighted_sum` then computes ``ReLU(sum_k w_k A^k + offset)`` for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import onnx

from ..errors import MethodError

__all__ = ["CamContext", "Method", "ModelAccess", "Weights", "weighted_sum"]


class Weights(NamedTuple):
    """Weights over the activation's channels plus a per-image offset added before the ReLU.

    Attributes:
        weights: [N, C] channel weights or [N, C, h, w] per-position weights.
        offset: [N] added to every position of image n's map, or None.
    """

    weights: np.ndarray
    offset: np.ndarray | None = None


class ModelAccess(Protocol):
    """The graph runs a method may ask for besides (activation, gradient).

    :class:`explainer.runtime.Explainer` provides one per :meth:`~Explainer.explain` call;
    methods that need only the activation and its gradient never use it.
    """

    #: the model input batch [N, ...] being explained, in the model's layout and dtype
    inputs: np.ndarray

    def head_graph(self) -> tuple[onnx.ModelProto, str, str, str]:
        """(head graph, activation input name, logits output name, activation layout)."""
        ...

    def activation_scores(
        self, rows: np.ndarray, activations: np.ndarray, class_ids: np.ndarray
    ) -> np.ndarray:
        """Logit ``class_ids[m]`` of the head run on ``activations[m]`` ([M, C, h, w], NCHW)
        in place of image ``rows[m]``'s activation: returns [M]."""
        ...

    def input_scores(
        self, rows: np.ndarray, masks: np.ndarray, class_ids: np.ndarray
    ) -> np.ndarray:
        """Logit ``class_ids[m]`` of the whole model on image ``rows[m]`` multiplied by
        ``masks[m]`` ([M, H, W] at input resolution): returns [M]."""
        ...

    def input_size(self) -> tuple[int, int]:
        """(H, W) of the model input."""
        ...


@dataclass
class CamContext:
    """What a method computes its weights from, for one target class per image.

    Attributes:
        activation: [N, C, h, w] activation at the target layer (NCHW whatever the model's
            layout).
        gradient: [N, C, h, w] gradient of the target class score with respect to it.
        class_ids: [N] the target class of each image, or None when unknown.
        model: graph runs for methods that need more (Score-CAM, Ablation-CAM, CAM), or None.
    """

    activation: np.ndarray
    gradient: np.ndarray
    class_ids: np.ndarray | None = None
    model: ModelAccess | None = None

    def require_model(self, method: str) -> ModelAccess:
        """The :class:`ModelAccess` and class ids, or a :class:`MethodError` naming ``method``."""
        if self.model is None or self.class_ids is None:
            raise MethodError(
                f"CAM method {method!r} runs the model again; call it through Explainer.explain"
            )
        return self.model


#: A CAM method: context -> weights (see the module docstring).
Method = Callable[[CamContext], "np.ndarray | Weights"]


def weighted_sum(activation: np.ndarray, weights: np.ndarray | Weights) -> np.ndarray:
    """``ReLU(sum_k w_k A^k + offset)``: raw CAMs [N, h, w] float32 from any method's weights.

    Plain elementwise products and einsum loops, never BLAS: BLAS threads left spinning after
    a matmul would slow the next ONNX Runtime run on the same cores.
    """
    if not isinstance(weights, Weights):
        weights = Weights(np.asarray(weights))
    # float16 graphs: sum in float32 (a float16 einsum rounds every partial sum)
    activation = activation.astype(np.float32, copy=False)
    w = weights.weights.astype(np.float32, copy=False)
    if w.ndim == 2:
        cams = np.einsum("nc,nchw->nhw", w, activation)
    elif w.shape == activation.shape:
        cams = np.einsum("nchw,nchw->nhw", w, activation)
    else:
        raise MethodError(
            f"CAM weights must be [N, C] or {list(activation.shape)}, got {list(w.shape)}"
        )
    if weights.offset is not None:
        cams = cams + weights.offset[:, None, None]
    return np.maximum(cams, 0).astype(np.float32)
