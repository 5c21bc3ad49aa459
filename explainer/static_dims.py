"""Sizes that a session specialized to one input size knows: shape reads made constants.

A graph that accepts any input size computes some sizes at run time from ``Shape`` nodes. In
a copy whose input size is fixed (:func:`explainer.sessions.specialize`) most of those sizes
are static, but ONNX Runtime folds a ``Shape`` only where the whole shape is (the batch stays
symbolic): the explanation graph's interpolation matrices, computed from the activation's
and the input's heights and widths, were 48 small operators run on every call
(mobilenet_v3_large).
:func:`fold_static_dims` writes the static ones as constants, and ONNX Runtime folds what
depends on them.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .bundle import node_inputs

__all__ = ["SKELETON_LIMIT", "fold_static_dims", "infer_skeleton", "shape_skeleton"]

log = logging.getLogger(__name__)

#: initializers of more than this many elements are left out of shape inference (their types
#: stand for them: :func:`shape_skeleton`)
SKELETON_LIMIT = 4096


def shape_skeleton(graph: onnx.GraphProto, limit: int = SKELETON_LIMIT) -> onnx.GraphProto:
    """A copy of ``graph`` for shape inference without its weights: initializers of more than
    ``limit`` elements become typed inputs (shape inference needs their types; data propagation
    needs only the small integer tensors, which stay). A vgg16 head's 480 MB are neither copied
    nor serialized into the inference."""
    out = onnx.GraphProto(name=graph.name)
    out.node.extend(graph.node)
    out.input.extend(graph.input)
    out.output.extend(graph.output)
    out.value_info.extend(graph.value_info)
    listed = {v.name for v in graph.input}
    for tensor in graph.initializer:
        if math.prod(tensor.dims) <= limit:
            out.initializer.append(tensor)
        elif tensor.name not in listed:
            out.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                           list(tensor.dims)))
    return out


def infer_skeleton(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """ONNX shape inference on ``model``'s :func:`shape_skeleton` (its weights' types only):
    the inferred skeleton, whose value infos and outputs hold the shapes found. Raises what
    the inference raises."""
    light = onnx.ModelProto(ir_version=model.ir_version, graph=shape_skeleton(model.graph))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    return onnx.shape_inference.infer_shapes(light, check_type=False, data_prop=data_prop)


def _static_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each tensor's dims that ONNX shape inference finds (None where not static)."""
    inferred = infer_skeleton(model)
    found = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.tensor_type.HasField("shape"):
            found[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                 for d in value.type.tensor_type.shape.dim]
    return found


def _int(values: dict[str, np.ndarray], name: str, default: int) -> int | None:
    """The one int of a constant input (``default`` where the input is omitted; None where it
    is not a one-element constant)."""
    if not name:
        return default
    value = values.get(name)
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def fold_static_dims(model: onnx.ModelProto, prefix: str) -> int:
    """Make constants (in place) of the dims that nodes named ``prefix...`` read off a shape
    where shape inference finds them static: ``Shape`` with ``start``/``end``, and ``Slice``
    of a whole ``Shape`` (one axis, step 1). Returns how many; 0 where inference fails.

    Only the nodes under ``prefix`` (the explanation graph's own, whose sizes feed its
    matrix products: a wrong size fails there, it cannot pass silently) are folded; the
    model's own graph is left to ONNX Runtime."""
    nodes = [n for n in model.graph.node if n.name.startswith(prefix)
             and n.op_type in ("Shape", "Slice")]
    if not nodes:
        return 0
    try:
        dims = _static_dims(model)
    except Exception as err:  # noqa: BLE001 (an InferenceError: the graph runs as it is)
        log.warning("shape inference failed (%s); the sizes are read at run time", err)
        return 0
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
              if math.prod(t.dims) <= 8}
    producer = {o: n for n in model.graph.node for o in n.output}
    folded: dict[int, onnx.TensorProto] = {}
    for node in nodes:
        if node.op_type == "Shape":
            shape, attrs = dims.get(node.input[0]), {a.name: a.i for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", None)
        else:
            source = producer.get(node.input[0])
            if source is None or source.op_type != "Shape" or source.attribute:
                continue
            shape = dims.get(source.input[0])
            inputs = [*node.input, "", "", ""]
            start, end = _int(values, inputs[1], 0), _int(values, inputs[2], 0)
            if _int(values, inputs[3], 0) != 0 or _int(values, inputs[4], 1) != 1:
                continue  # not axis 0, or not step 1
        if shape is None or start is None or end is None:
            continue
        part = shape[start:end]
        if part and all(isinstance(d, int) and d > 0 for d in part):
            folded[id(node)] = numpy_helper.from_array(np.array(part, np.int64), node.output[0])
    kept = [n for n in model.graph.node if id(n) not in folded]
    read = {i for n in kept for i in node_inputs(n)} | {o.name for o in model.graph.output}
    kept = [n for n in kept if n.op_type != "Shape" or not n.name.startswith(prefix)
            or any(o in read for o in n.output)]  # the Shapes only folded Slices read
    read = {i for n in kept for i in node_inputs(n)}
    # the folded Slices' bounds: ONNX Runtime warns about initializers no node reads
    constants = [t for t in model.graph.initializer
                 if t.name in read or not t.name.startswith(prefix)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.initializer[:]
    model.graph.initializer.extend([*constants, *folded.values()])
    return len(folded)
