"""Which output holds the class scores: choosing it, looking through a final softmax, and
flattening ``[batch, 1, 1, classes]`` outputs.

When the explained output is a ``Softmax`` (or ``LogSoftmax``) over the classes, the bundle
explains its input, the pre-softmax logits (logged, and recorded in the manifest's ``export``
section); ``pre_softmax=False`` keeps the probabilities. An explained output that holds a
softmax's probabilities (kept, or whose logits cannot be found) is recorded as such
(``notes["score"] = "probability"``, the manifest's ``head.score``): the runtime then shows the
model's own probabilities, never a softmax of them.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import onnx
from onnx import TensorProto, helper

from ..errors import OnnxExportError
from ..graph import Graph, attribute, unique_name

__all__ = ["outputs_listing", "resolve_output", "softmax_input", "softmax_output"]

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


def softmax_output(g: Graph, name: str) -> str | None:
    """The Softmax node (its name) whose probabilities ``name`` holds, through the ops that keep
    them (:data:`_PASS_THROUGH_OPS`, reshapes, flattens: the wrapper onnx's version converter
    writes around an opset < 13 Softmax), or None. A ``LogSoftmax`` does not count: the
    softmax of log-probabilities is the probabilities again."""
    index = g.producer.get(name)
    while index is not None and g.nodes[index].op_type in (
            *_PASS_THROUGH_OPS, "Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        index = g.producer.get(g.nodes[index].input[0])
    if index is None or g.nodes[index].op_type != "Softmax":
        return None
    return g.node_name(index)


def outputs_listing(g: Graph) -> str:
    """Every output of the model with its shape and type, for messages:
    ``'logits' [batch, 10] float32, 'boxes' [batch, 4] float32``."""
    def entry(name: str) -> str:
        shape = g.shape(name)
        dims = "[?]" if shape is None else "[" + ", ".join(
            "?" if d is None else str(d) for d in shape) + "]"
        elem = g.elem_type(name)
        dtype = helper.tensor_dtype_to_np_dtype(elem).name if elem else "?"
        return f"{name!r} {dims} {dtype}"

    return ", ".join(entry(o.name) for o in g.model.graph.output)


def _choose(g: Graph, output: str | None, pre_softmax: bool) -> str:
    outputs = [o.name for o in g.model.graph.output if g.is_float(o.name)]
    if not outputs:
        raise OnnxExportError("the model has no floating-point output to explain; its outputs: "
                              f"{outputs_listing(g)}")
    if output is not None:
        if output not in [o.name for o in g.model.graph.output]:
            raise OnnxExportError(
                f"output {output!r} is not an output of the model; its outputs: "
                f"{outputs_listing(g)}"
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
    elif (probabilities := softmax_output(g, output)) is not None:
        # no logits to explain: the model's own probabilities are (and are shown as such)
        log.info("output %r holds the probabilities of Softmax node %r%s; explaining them",
                 output, probabilities, "" if not pre_softmax else
                 " (its logits could not be found)")
        notes["score"] = "probability"
    model = copy.deepcopy(g.model)
    graph = model.graph
    if explained != output:
        info = g.value_info(explained)
        if info is None:
            raise OnnxExportError(f"no type information for tensor {explained!r} (before "
                                  f"the softmax of output {output!r}); the model's outputs: "
                                  f"{outputs_listing(g)}")
        kept = [o for o in graph.output if o.name not in (output, explained)]
        del graph.output[:]
        graph.output.extend([info, *kept])
    shape, dtype = g.shape(explained), g.elem_type(explained)
    dims = None if shape is None else list(shape)
    if shape is not None and len(shape) > 2:
        wide = [d for d in shape[1:] if d != 1]
        if len(wide) > 1:
            several = len(g.model.graph.output) > 1
            raise OnnxExportError(
                f"output {explained!r} has shape {list(shape)}; expected [batch, classes] (or "
                "[batch, 1, ..., classes])" + (
                    f"; the model's outputs: {outputs_listing(g)}: pass output= (--output) to "
                    "explain another" if several else "")
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
