"""Graph rewrites that make a cut possible."""

from __future__ import annotations

import copy
import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import Graph, attribute, rename_values, sort_topologically, unique_name

__all__ = ["add_batch_axis", "read_batch_from"]

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
