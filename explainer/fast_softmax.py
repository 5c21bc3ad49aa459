"""The detectors' forward graphs with ``Softmax`` over a short axis in its elementwise form.

YOLOv8's and YOLO11's box head takes a softmax over the 16 bins of each box side's
distribution (``[N, 16, 4, A]``, axis 1: 33,600 rows of 16 at 640x640). ONNX Runtime's Softmax
kernel is slow on many short rows: 5.8 ms there on two threads of a Xeon, where ``Exp(x -
ReduceMax(x)) / ReduceSum(...)`` takes 0.6 ms (values equal to float rounding, 2e-7). The
forward graphs the detector runs (:meth:`explainer.backward.SplitHead.forward_model`) use that
form; plain inference of the file keeps the kernel.
"""

from __future__ import annotations

import onnx
from onnx import helper

__all__ = ["SHORT_AXIS", "elementwise_softmax"]

#: the longest softmax axis rewritten (longer rows: the kernel is as fast)
SHORT_AXIS = 32


def elementwise_softmax(model: onnx.ModelProto) -> int:
    """Replace, in place, each ``Softmax`` over a static axis of at most :data:`SHORT_AXIS`
    elements of a tensor of rank 3 or more (shapes from the model's value infos) by
    ReduceMax, Sub, Exp, ReduceSum and Div; its output keeps its name. Returns how many."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                       for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    nodes, done = [], 0
    for node in graph.node:
        shape = shapes.get(node.input[0]) if node.op_type == "Softmax" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if (shape is None or len(shape) < 3 or opset < 13 or node.domain not in ("", "ai.onnx")
                or not shape[axis] or shape[axis] > SHORT_AXIS):
            nodes.append(node)
            continue
        axis %= len(shape)
        x, y, stem = node.input[0], node.output[0], f"{node.name or node.output[0]}/softmax"
        axes = f"{stem}/axes"
        graph.initializer.append(helper.make_tensor(axes, onnx.TensorProto.INT64, [1], [axis]))
        reduce_max = (helper.make_node("ReduceMax", [x, axes], [f"{stem}/max"], keepdims=1)
                      if opset >= 18 else
                      helper.make_node("ReduceMax", [x], [f"{stem}/max"], axes=[axis], keepdims=1))
        nodes += [
            reduce_max,
            helper.make_node("Sub", [x, f"{stem}/max"], [f"{stem}/shifted"]),
            helper.make_node("Exp", [f"{stem}/shifted"], [f"{stem}/exp"]),
            helper.make_node("ReduceSum", [f"{stem}/exp", axes], [f"{stem}/sum"], keepdims=1),
            helper.make_node("Div", [f"{stem}/exp", f"{stem}/sum"], [y]),
        ]
        done += 1
    if done:
        del graph.node[:]
        graph.node.extend(nodes)
    return done
