"""Graph rewrites that make a cut possible."""

from __future__ import annotations

import copy
import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import Graph, attribute, rename_values, sort_topologically, unique_name

__all__ = ["add_batch_axis", "fold_softmax_wrappers", "read_batch_from"]

log = logging.getLogger(__name__)


def _reads_only_batch(g: Graph, index: int, rank: int) -> bool:
    """Whether Shape node ``index`` only feeds ``Gather(axis=0, index 0)``."""
    consumers = g.consumers.get(g.nodes[index].output[0], [])
    for c in consumers:
        node = g.nodes[c]
        value = g.constant_value(node.input[1]) if len(node.input) > 1 else None
        if (node.op_type != "Gather" or attribute(node, "axis", 0) != 0
                or value is None or value.reshape(-1).tolist() not in ([0], [-rank])):
            return False
    return bool(consumers)


def read_batch_from(g: Graph, target: str) -> Graph:
    """Make batch-size computations upstream of ``target`` read the batch from ``target``.

    Exporters compute the batch size with ``Shape(x)[0:1]`` of some early tensor (ConvNeXt's
    ``as_strided`` indices come from the input's batch size). Cut at ``target``, such an
    integer tensor would cross into the head as a second input tied to the features' batch.
    Reading the batch from ``target`` (same leading dimension) moves that computation into the
    head, which then reads the activation alone and runs on any number of rows.

    Returns:
        ``g`` itself when nothing reads the batch upstream, else the graph of a rewritten copy
        (value infos kept, so no new shape inference).
    """
    batch = (g.shape(target) or (None,))[0]
    if batch is None:
        return g
    after = {o for i in g.descendants(target) for o in g.nodes[i].output}  # in the head already
    upstream = g.active(g.graph_inputs()[0]) - {target} - after
    feeding_target = g.ancestors([target])  # such a Shape must keep its input (no cycle)
    rewrites = []
    for i, node in enumerate(g.nodes):
        source = node.input[0] if node.op_type == "Shape" else None
        if source is None or source == target or source not in upstream or i in feeding_target:
            continue
        shape = g.shape(source) or (None,)
        if shape[0] != batch:
            continue
        start, end = attribute(node, "start", 0), attribute(node, "end", None)
        if start == 0 and (end == 1 or (end is None and _reads_only_batch(g, i, len(shape)))):
            rewrites.append(i)
    if not rewrites:
        return g
    model = copy.deepcopy(g.model)
    rank = len(g.shape(target) or ())
    for i in rewrites:
        node = model.graph.node[i]
        log.info("batch size read from %r instead of %r (node %s)", target, node.input[0],
                 g.node_name(i))
        node.input[0] = target
        if attribute(g.nodes[i], "end", None) is None:  # the whole shape: now of the target's rank
            for info in model.graph.value_info:
                if info.name == node.output[0]:
                    info.type.tensor_type.shape.dim[0].dim_value = rank
    # a rewritten Shape now reads the target: sort again so it follows the target's producer
    given = {i.name for i in model.graph.input} | set(g.initializers)
    nodes = sort_topologically(list(model.graph.node), given)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return Graph(model)


def add_batch_axis(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model whose one image input is rank 3 ``[C, H, W]`` (torchvision's detectors take a
    list of such images, and torch.onnx exports one), given a batch axis of 1: a new input
    ``[1, C, H, W]`` of the same name, squeezed into the old one, and every output unsqueezed to
    ``[1, ...]``. Other models are returned as they are.

    The runtime then treats the model as one with a static batch of 1 (one image per run).
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        return model
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 3 or dims[0].dim_value not in (1, 3, 4):
        return model
    out = copy.deepcopy(model)
    graph = out.graph
    taken = set(Graph(out).names)
    source = next(i for i in graph.input if i.name == inputs[0].name)
    name = source.name
    renamed = {name: unique_name(f"{name}_chw", taken)}
    renamed.update({o.name: unique_name(f"{o.name}_unbatched", taken) for o in graph.output})
    rename_values(graph, lambda n: renamed.get(n, n))  # graph inputs and outputs keep names
    axes = unique_name("batch_axis", taken)
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes))
    graph.node.insert(0, helper.make_node("Squeeze", [name, axes], [renamed[name]],
                                          name=f"{renamed[name]}_squeeze"))
    source.CopyFrom(helper.make_tensor_value_info(
        name, source.type.tensor_type.elem_type,
        [1, *[d.dim_value or d.dim_param or None for d in dims]]))
    for output in graph.output:
        raw = renamed[output.name]
        graph.node.append(helper.make_node("Unsqueeze", [raw, axes], [output.name],
                                           name=f"{raw}_unsqueeze"))
        kind = output.type.tensor_type
        old_dims = [d.dim_value or d.dim_param or None for d in kind.shape.dim]
        output.CopyFrom(helper.make_tensor_value_info(
            output.name, kind.elem_type, [1, *old_dims] if kind.HasField("shape") else None))
    log.info("input %r is [C, H, W]: given a batch axis of 1 (and every output)", name)
    return out


#: ops that pass a softmax through unchanged (where the rank of a wrapped softmax may be read)
_SAME_SHAPE_OPS = ("Identity", "Cast", "QuantizeLinear", "DequantizeLinear")


def _wrapped_softmax(g: Graph, index: int) -> tuple[int, int, int | None] | None:
    """For a ``Reshape`` node ``index``: (its Softmax node, the Flatten node, the Shape node)
    when it closes the wrapper onnx's version converter writes around an opset < 13
    ``Softmax``/``LogSoftmax``/``Hardmax``: ``Reshape(Softmax(Flatten(x, axis)), Shape(x))``."""
    reshape = g.nodes[index]
    if reshape.op_type != "Reshape" or len(reshape.input) < 2:
        return None
    inner = g.producer.get(reshape.input[0])
    if inner is None or g.nodes[inner].op_type not in ("Softmax", "LogSoftmax", "Hardmax"):
        return None
    flatten = g.producer.get(g.nodes[inner].input[0])
    if flatten is None or g.nodes[flatten].op_type != "Flatten":
        return None
    source = g.nodes[flatten].input[0]
    shape = g.producer.get(reshape.input[1])
    if shape is None or g.nodes[shape].op_type != "Shape" or g.nodes[shape].input[0] != source:
        return None
    if attribute(g.nodes[shape], "start", 0) != 0 or attribute(g.nodes[shape], "end") is not None:
        return None
    if attribute(g.nodes[inner], "axis", -1) not in (-1, 1):
        return None
    private = [g.nodes[inner].output[0], g.nodes[flatten].output[0]]
    if any(len(g.consumers.get(name, [])) != 1 for name in private):
        return None
    return inner, flatten, shape


def _softmax_rank(g: Graph, source: str, output: str) -> tuple[int, ...] | None:
    """The shape of the wrapped softmax's input (that of its output too): known on the input,
    on the output, or on what passes the output on unchanged up to a graph output."""
    for name in (source, output):
        if g.shape(name) is not None:
            return g.shape(name)
    name = output
    while len(g.consumers.get(name, [])) == 1:
        node = g.nodes[g.consumers[name][0]]
        if node.op_type not in _SAME_SHAPE_OPS:
            break
        name = node.output[0]
        if g.shape(name) is not None:
            return g.shape(name)
    return None


def fold_softmax_wrappers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undo the ``Flatten -> Softmax -> Reshape`` wrapper of opset < 13 softmaxes.

    Up to opset 12, ``Softmax(x, axis=a)`` is a softmax over the axes from ``a`` on, flattened;
    onnx's version converter keeps that meaning at opset 13 by writing
    ``Reshape(Softmax(Flatten(x, axis=a), axis=-1), Shape(x))``. When ``a`` is the last axis
    of ``x`` (a classifier's ``[batch, classes]`` scores: PaddleOCR's direction classifier, Keras
    conversions) that is one opset-13 ``Softmax(x, axis=-1)``: this writes it so, under the
    original node's name, so the softmax look-through finds it and its gradient needs no rank of
    the converter's intermediate values. ``x`` gets the output's shape where inference left it
    unknown (a ``Reshape`` to ``Shape(x)`` gives ``x``'s shape).

    Args:
        model: a shape-inferred model.

    Returns:
        ``model`` itself when it holds no such wrapper, else a rewritten copy.
    """
    g = Graph(model)
    folds = []
    for i, node in enumerate(g.nodes):
        found = _wrapped_softmax(g, i)
        if found is None:
            continue
        inner, flatten, shape_node = found
        source = g.nodes[flatten].input[0]
        shape = _softmax_rank(g, source, node.output[0])
        axis = attribute(g.nodes[flatten], "axis", 1)
        if shape is None or axis not in (len(shape) - 1, -1):
            continue
        folds.append((i, inner, flatten, shape_node, source, shape))
    if not folds:
        return model
    out = copy.deepcopy(model)
    graph = out.graph
    dropped: set[int] = set()
    removed: set[str] = set()
    infos = []
    for reshape, inner, flatten, shape_node, source, shape in folds:
        old = g.nodes[inner]
        folded = helper.make_node(old.op_type, [source], [g.nodes[reshape].output[0]],
                                  name=old.name or g.node_name(inner), axis=-1)
        graph.node[reshape].CopyFrom(folded)
        dropped |= {inner, flatten}
        removed |= {g.nodes[inner].output[0], g.nodes[flatten].output[0]}
        if g.consumers.get(g.nodes[shape_node].output[0]) == [reshape]:
            dropped.add(shape_node)
            removed.add(g.nodes[shape_node].output[0])
        dims = [d if not isinstance(d, int) or d > 0 else None for d in shape]
        elem_type = g.elem_type(source) or g.elem_type(g.nodes[reshape].output[0])
        for name in (source, g.nodes[reshape].output[0]):
            if g.shape(name) is None and elem_type:
                infos.append(helper.make_tensor_value_info(name, elem_type, dims))
        log.info("opset-converter softmax wrapper around %r folded into one %s (node %s)",
                 source, old.op_type, folded.name)
    kept = [n for k, n in enumerate(graph.node) if k not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    added = {info.name for info in infos}
    values = [v for v in graph.value_info if v.name not in removed and v.name not in added]
    del graph.value_info[:]
    graph.value_info.extend([*values, *infos])
    for output in graph.output:
        if output.name in added and not output.type.tensor_type.HasField("shape"):
            output.CopyFrom(next(info for info in infos if info.name == output.name))
    return out
