"""What a CAM method is: one :class:`MethodSpec` holding its numpy weights, its ONNX emitter
and the facts the docs, the CLI and the tests read.

Each method module (:mod:`.gradient`, :mod:`.eigen`, :mod:`.classifier`,
:mod:`.perturbation`, :mod:`.pixel`) ends with a ``SPECS`` tuple; :data:`explainer.methods.METHODS`
is their concatenation.

An emitter writes a method's weights as ONNX nodes for the one-call explanation graph, through
the three calls of :class:`GraphBuilder` only (``exporters.compose.Builder`` implements
them). It receives the activation ``[B, C, h, w]`` and the gradient ``[B, K, C, h, w]`` (one
row per image and target) and returns channel weights ``[B, K, C]``, or, for a
``per_position`` method, weights broadcastable to ``[B, K, C, h, w]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .core import Method

__all__ = ["KINDS", "Emitter", "GraphBuilder", "MethodSpec", "channel_sums", "safe_divide"]

#: the kinds of method: weights from (activation, gradient) only; weights that need more graph
#: runs or the classifier's weights; input-space maps
KINDS = ("closed-form", "model", "pixel")


class GraphBuilder(Protocol):
    """The node-emitting calls an emitter may use (names are made unique by the builder)."""

    def op(self, op_type: str, *inputs: str, out: str | None = None, outputs: int = 1,
           **attrs: Any) -> Any:
        """Emit one ``op_type`` node; its output name (a list of names when ``outputs > 1``)."""
        ...

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """The name of a constant tensor holding ``value`` as ``dtype``."""
        ...

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 1) -> str:
        """``op_type`` (ReduceSum, ReduceMean, ...) of ``x`` over ``axes``, whatever the opset."""
        ...


#: (builder, activation [B, C, h, w], gradient [B, K, C, h, w]) -> name of the weights tensor
Emitter = Callable[[GraphBuilder, str, str], str]


@dataclass(frozen=True)
class MethodSpec:
    """One CAM method, everything about it in one place.

    Attributes:
        name: API and CLI name (``"gradcam"``, ``"gradcam++"``, ``"guided-gradcam"``).
        title: display name (``"Grad-CAM++"``).
        kind: one of :data:`KINDS`: ``"closed-form"`` (weights from the activation and its
            gradient only), ``"model"`` (runs the model again, or reads the classifier's
            weights), ``"pixel"`` (input-space maps from the input-gradient graph).
        weights: numpy weights, :data:`~explainer.methods.core.Method`; None for pixel methods.
        emit: ONNX emitter of the weights (:data:`Emitter`) for the explanation graph; None
            when the method has no in-graph form.
        per_position: ``weights``/``emit`` give per-position weights rather than channel ones.
        local: the map is zero wherever the gradient is (per-position weights that vanish
            with it, no offset), so a gradient known to be zero outside a region (a
            detection's window) is weighed on that region only.
        needs_cam: a pixel method that multiplies the guided gradient by Grad-CAM.
        uses_gradient: its weights read the gradient (False: the backward is not run where the
            runtime can skip it, e.g. a detector's per-detection backward).
        paper: the source, authors and venue, with an arXiv id or DOI where there is one.
        formula: the map's formula, as Markdown.
        peers: the same method's class in other libraries: library -> class name.
        tolerance: largest error of the bundle's maps against the torch reference in the
            tests (relative L2 per map, see ``exporters.torch.validate``).
    """

    name: str
    title: str
    kind: str
    weights: Method | None
    emit: Emitter | None
    per_position: bool = False
    local: bool = False
    needs_cam: bool = False
    uses_gradient: bool = True
    paper: str = ""
    formula: str = ""
    peers: Mapping[str, str] = field(default_factory=dict)
    tolerance: float = 1e-4


# --- emitter helpers shared by the methods -----------------------------------------------------
def channel_sums(b: GraphBuilder, activation: str, keepdims: int = 1) -> str:
    """``sum_ij A^c_ij`` as [B, 1, C, 1, 1] (broadcasts against the gradient), or [B, 1, C]
    (against channel weights) with ``keepdims=0``."""
    return b.op("Unsqueeze", b.reduce("ReduceSum", activation, [2, 3], keepdims=keepdims),
                b.const([1]))


def safe_divide(b: GraphBuilder, numerator: str, denominator: str) -> str:
    """``numerator / denominator`` where the denominator is not 0, else 0."""
    zero = b.const(0.0, np.float32)
    nonzero = b.op("Not", b.op("Equal", denominator, zero))
    safe = b.op("Where", nonzero, denominator, b.const(1.0, np.float32))
    return b.op("Where", nonzero, b.op("Div", numerator, safe), zero)
