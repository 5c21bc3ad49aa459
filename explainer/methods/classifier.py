"""CAM: the classifier's own weights, for heads that are global average pooling + one linear layer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import MethodError
from .core import CamContext
from .spec import MethodSpec

__all__ = ["SPECS", "cam_weights", "linear_head_weights"]

_PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Identity"}


def cam_weights(ctx: CamContext) -> np.ndarray:
    """CAM (Zhou et al., CVPR 2016, arXiv:1512.04150).

    For a head ``logits = W GAP(A) + b``, ``M_c = sum_k W_ck A^k``: channel weights
    ``w_k = W_ck`` [N, C], read from the head graph (the bias does not enter the map).
    Equals Grad-CAM times h*w on such heads.

    Raises:
        MethodError: when the head is not global average pooling followed by one linear
            layer (Gemm, or MatMul with an optional Add), naming the op found instead.
    """
    model = ctx.require_model("cam")
    matrix = linear_head_weights(*model.head_graph())
    if matrix.shape[1] != ctx.activation.shape[1]:
        raise MethodError(
            f"CAM: the linear layer takes {matrix.shape[1]} features but the activation has "
            f"{ctx.activation.shape[1]} channels"
        )
    return matrix[ctx.class_ids]


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _reduce_axes(graph: onnx.GraphProto, node: onnx.NodeProto) -> list[int] | None:
    """A ReduceMean's axes: the attribute (opset < 18) or the constant second input."""
    for attribute in node.attribute:
        if attribute.name == "axes":
            return list(onnx.helper.get_attribute_value(attribute))
    axes = _constant(graph, node.input[1]) if len(node.input) > 1 else None
    return None if axes is None else [int(a) for a in np.ravel(axes)]


def linear_head_weights(
    head: onnx.ModelProto, activation: str, logits: str, layout: str = "NCHW"
) -> np.ndarray:
    """The [classes, C] matrix of a head ``logits = W GAP(activation) + b``.

    Walks back from ``logits``: Gemm, or (Add of) MatMul with a constant weight; then only
    Flatten / Reshape / Squeeze / Identity; then GlobalAveragePool (NCHW) or ReduceMean over
    the spatial axes of ``activation``.

    Raises:
        MethodError: naming the node where the head departs from that pattern.
    """
    graph = head.graph
    producers = {out: node for node in graph.node for out in node.output}

    def fail(node: onnx.NodeProto | None, wanted: str) -> MethodError:
        found = f"{node.op_type} node {node.name!r}" if node is not None else "a graph input"
        return MethodError(
            f"CAM needs a head that is global average pooling then one linear layer; expected "
            f"{wanted}, found {found}. Use a gradient method such as gradcam instead"
        )

    node = producers.get(logits)
    if node is not None and node.op_type == "Add":
        node = next((producers.get(i) for i in node.input
                     if getattr(producers.get(i), "op_type", "") in ("MatMul", "Gemm")), node)
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        raise fail(node, "Gemm or MatMul producing the logits")
    weight = _constant(graph, node.input[1])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if weight is None or weight.ndim != 2 or attrs.get("transA", 0):
        raise fail(node, "a linear layer with a constant 2-D weight")
    matrix = (weight if attrs.get("transB", 0) else weight.T) * attrs.get("alpha", 1.0)
    tensor = node.input[0]
    while (node := producers.get(tensor)) is not None and node.op_type in _PASS_THROUGH:
        tensor = node.input[0]
    spatial = [2, 3] if layout == "NCHW" else [1, 2]
    if node is not None and node.op_type == "ReduceMean":
        axes = _reduce_axes(graph, node)
        pooled = axes is not None and sorted(int(a) % 4 for a in axes) == spatial
    else:
        pooled = node is not None and node.op_type == "GlobalAveragePool" and layout == "NCHW"
    if not pooled:
        raise fail(node, "GlobalAveragePool or ReduceMean over the spatial axes")
    if node.input[0] != activation:
        raise fail(producers.get(node.input[0]), f"the pooling of the activation {activation!r}")
    return matrix.astype(np.float32)


#: this module's methods, in display order (:data:`explainer.methods.METHODS`)
SPECS = (
    MethodSpec(
        "cam", "CAM", "model", cam_weights, None,
        paper="Zhou et al., CVPR 2016, arXiv:1512.04150",
        formula="for a head `logits = W GAP(A) + b`, `M_c = ReLU(sum_k W_ck A^k)`",
        peers={"torchcam": "CAM"},
    ),
)
