"""Graph rewrites that make a cut possible."""

from __future__ import annotations

import copy
import logging

from ..graph import Graph, attribute, sort_topologically

__all__ = ["read_batch_from"]

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
