"""Which output holds the class scores: choosing it, looking through a final softmax, and
flattening ``[batch, 1, 1, classes]`` outputs.

When the explained output is a ``Softmax`` (or ``LogSoftmax``) over the classes, the bundle
explains its input, the pre-softmax logits (logged, and recorded in the manifest's ``export``
section); ``pre_softmax=False`` keeps the probabilities.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import onnx
from onnx import TensorProto, helper

from ..errors import OnnxExportError
from ..graph import Graph, attribute, unique_name

__all__ = ["resolve_output", "softmax_input"]

log = logging.getLogger(__name__)

_SOFTMAX_OPS = ("Softmax", "LogSoftmax")
# ops between a Softmax and the model output that keep its meaning (float16 graphs cast it
# back to float32, QDQ models quantize it)
_PASS_THROUGH_OPS = ("Identity", "Cast", "QuantizeLinear", "DequantizeLinear")
_LOW_PRECISION = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def softmax_input(g: Graph, name: str) -> tuple[str, str] | None:
    """(pre-softmax tensor, op type) when ``name`` is a softmax over its last axis."""
    index = g.producer.get(name)
    while index is not None and g.nodes[index].op_type in _PASS_THROUGH_OPS:
        index = g.producer.get(g.nodes[index].input[0])
    if index is None or g.nodes[index].op_type not in _SOFTMAX_OPS:
        return None
    node = g.nodes[index]
    rank = g.rank(node.input[0])
    axis = attribute(node, "axis", -1)
    if rank is None or axis not in (-1, rank - 1):
        return None
    return node.input[0], node.op_type


def _choose(g: Graph, output: str | None, pre_softmax: bool) -> str:
    outputs = [o.name for o in g.model.graph.output if g.is_float(o.name)]
    if not outputs:
        raise OnnxExportError("the model has no floating-point output to explain")
    if output is not None:
        if output not in [o.name for o in g.model.graph.output]:
            raise OnnxExportError(
                f"output {output!r} is not an output of the model; its outputs are "
                f"{[o.name for o in g.model.graph.output]}"
            )
        return output
    shaped = [o for o in outputs if (g.rank(o) or 0) >= 2] or outputs
    # a softmax output says which tensor holds the class scores
    scored = [o for o in shaped if softmax_input(g, o) is not None] if pre_softmax else []
    chosen = (scored or shaped)[0]
    if len(outputs) > 1:
        log.info("model outputs %s; explaining %r (pass output= to choose)", outputs, chosen)
    return chosen


def resolve_output(
    g: Graph, output: str | None, pre_softmax: bool
) -> tuple[onnx.ModelProto, str, dict[str, Any]]:
    """Choose the output to explain; expose pre-softmax logits / flatten [B,1,1,C] outputs.

    Args:
        g: the shape-inferred model.
        output: the output asked for, or None to choose (the first softmax output, else the
            first floating-point output of rank >= 2).
        pre_softmax: look through a final softmax.

    Returns:
        (a copy of the model whose graph outputs include the explained tensor, with value infos
        for what was added, the explained tensor's name, manifest notes).
    """
    output = _choose(g, output, pre_softmax)
    notes: dict[str, Any] = {"output": output}
    explained = output
    if pre_softmax and (found := softmax_input(g, output)) is not None:
        explained, op = found
        log.info("output %r is a %s; explaining the pre-softmax logits %r instead",
                 output, op, explained)
        notes["softmax"] = op
    model = copy.deepcopy(g.model)
    graph = model.graph
    if explained != output:
        info = g.value_info(explained)
        if info is None:
            raise OnnxExportError(f"no type information for tensor {explained!r}")
        kept = [o for o in graph.output if o.name not in (output, explained)]
        del graph.output[:]
        graph.output.extend([info, *kept])
    shape, dtype = g.shape(explained), g.elem_type(explained)
    dims = None if shape is None else list(shape)
    if shape is not None and len(shape) > 2:
        wide = [d for d in shape[1:] if d != 1]
        if len(wide) > 1:
            raise OnnxExportError(
                f"output {explained!r} has shape {list(shape)}; expected [batch, classes] (or "
                "[batch, 1, ..., classes])"
            )
        flat = unique_name(explained + "_flat", set(g.names))
        graph.node.append(helper.make_node("Flatten", [explained], [flat], axis=1,
                                           name=flat + "_node"))
        dims = [shape[0], wide[0] if wide else 1]
        graph.output.append(helper.make_tensor_value_info(flat, g.elem_type(explained), dims))
        log.info("output %r has shape %s; explaining it flattened to [batch, classes]",
                 explained, list(shape))
        explained = flat
    if dtype in _LOW_PRECISION:  # float16 logits: the bundle's logits and
        cast = unique_name(explained + "_float", set(g.names))  # seeds stay float32
        graph.node.append(helper.make_node("Cast", [explained], [cast], to=TensorProto.FLOAT,
                                           name=cast + "_node"))
        kept = [o for o in graph.output if o.name != explained]
        del graph.output[:]
        graph.output.extend([helper.make_tensor_value_info(cast, TensorProto.FLOAT, dims), *kept])
        explained = cast
    notes["explained"] = explained
    return model, explained, notes
