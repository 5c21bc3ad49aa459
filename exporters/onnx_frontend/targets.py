"""The target of an ONNX export: a tensor or node the user names, the automatic targets of a
detector, segmenter or text recognizer, and the image input's layout.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import OnnxExportError
from ..graph import Graph
from ..layouts import SUPPORTED_LAYOUTS, shape_layout
from .candidates import Candidate, auto_targets, image_input
from .heads import dense_targets, head_inputs

__all__ = ["input_layout_of", "resolve_target", "task_targets"]


def task_targets(g: Graph, task: str, candidates: list[Candidate], explained: str,
                  outputs: Sequence[str] = ()) -> list[str]:
    """The auto targets of a detector (where its features enter the head, which computes
    the explained tensor and the decoded ``outputs``: one tensor per stride), a segmenter
    (where they enter its decoder, see :func:`dense_targets`), or a text recognizer (the last
    explainable feature map, as for a classifier)."""
    usable = [c.tensor for c in candidates if c.layout == "NCHW" and c.differentiable]
    if task == "detect":
        return head_inputs(g, image_input(g), [explained, *outputs], usable)
    if task == "segment":
        found = dense_targets(g, image_input(g), explained, usable)
        if found:
            return found
    return [c.tensor for c in auto_targets(candidates)[:1] if c.layout != "NLC"]


def resolve_target(g: Graph, candidates: list[Candidate], target: str) -> tuple[str, str, str]:
    """(tensor, producing node name, op) for a tensor name or a node name."""
    if target in g.producer:
        index = g.producer[target]
        return target, g.node_name(index), g.nodes[index].op_type
    for i, node in enumerate(g.nodes):
        if node.name == target:
            return node.output[0], g.node_name(i), node.op_type
    names = [c.tensor for c in candidates if c.explainable][-5:]
    raise OnnxExportError(
        f"target {target!r} is neither a tensor nor a node of the model; explainable "
        f"candidates near the output: {names} (list all with `onnxcam inspect`)"
    )


def input_layout_of(g: Graph, layouts: dict[str, str], given: str) -> str:
    """The image input's layout: ``given`` unless ``"auto"``, else the detected one.

    Raises:
        OnnxExportError: the input is not rank 4, or its layout cannot be told.
    """
    source = image_input(g)
    shape = g.shape(source)
    if shape is None or len(shape) != 4:
        raise OnnxExportError(
            f"input {source!r} has shape {shape}; onnxcam explains rank-4 image inputs"
        )
    if given != "auto":
        return given
    layout = layouts.get(source) or shape_layout(shape, image=True)
    if layout not in SUPPORTED_LAYOUTS:
        raise OnnxExportError(
            f"cannot tell whether input {source!r} {list(shape)} is NCHW or NHWC; pass "
            "input_layout='NCHW' or 'NHWC'"
        )
    return layout
