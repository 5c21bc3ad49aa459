"""Cut an ONNX model at a target tensor into a features graph and a head graph.

The features graph computes every tensor that does not depend on the target (model inputs ->
target tensor, plus any other tensor the head consumes across the cut). The head graph holds the
nodes that depend on the target: its inputs are the cut tensors, its outputs the model outputs.
Chaining the two reproduces the original outputs exactly, because every node is copied unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

__all__ = ["SplitError", "SplitModel", "split_model", "ancestors", "constant_tensors"]


class SplitError(ValueError):
    """The model cannot be cut where asked (unknown tensor, target not on the output path...)."""


@dataclass
class SplitModel:
    """The two halves of a model cut at ``target``.

    Attributes:
        features: model inputs -> ``cut_tensors`` (``target`` first).
        head: ``cut_tensors`` -> ``outputs``.
        target: the tensor the model was cut at (the activation to explain).
        cut_tensors: every tensor that crosses the cut; ``target`` first.
        outputs: the head's outputs (names of the original model outputs kept).
    """

    features: onnx.ModelProto
    head: onnx.ModelProto
    target: str
    cut_tensors: list[str]
    outputs: list[str]


def _producers(graph: onnx.GraphProto) -> dict[str, int]:
    return {out: i for i, node in enumerate(graph.node) for out in node.output if out}


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """Names a node reads, including those read by its subgraphs (If/Loop bodies)."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for sub in list(attr.g.node if attr.HasField("g") else []) + [
            n for g in attr.graphs for n in g.node
        ]:
            names.extend(i for i in sub.input if i)
    return names


def ancestors(graph: onnx.GraphProto, tensors: Iterable[str]) -> set[int]:
    """Indices of the nodes needed to compute ``tensors``."""
    producers = _producers(graph)
    needed: set[int] = set()
    stack = [producers[t] for t in tensors if t in producers]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(producers[t] for t in _node_inputs(graph.node[i]) if t in producers)
    return needed


def _descendants(graph: onnx.GraphProto, tensor: str) -> set[int]:
    reached = {tensor}
    nodes: set[int] = set()
    for i, node in enumerate(graph.node):  # nodes are topologically sorted in a valid model
        if any(t in reached for t in _node_inputs(node)):
            nodes.add(i)
            reached.update(o for o in node.output if o)
    return nodes


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose value is fixed by the graph: initializers and outputs of nodes that read
    only constants (Constant, Shape-free arithmetic on weights...)."""
    inputs = {i.name for i in graph.input}
    const = {t.name for t in graph.initializer if t.name not in inputs}
    for node in graph.node:
        reads = _node_inputs(node)
        if node.op_type not in ("RandomNormal", "RandomUniform", "Multinomial") and all(
            t in const for t in reads
        ):
            const.update(o for o in node.output if o)
    return const


def _value_infos(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    infos = {v.name: v for v in graph.value_info}
    infos.update({v.name: v for v in graph.input})
    infos.update({v.name: v for v in graph.output})
    return infos


def _make_model(
    source: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    inputs: Sequence[str],
    outputs: Sequence[str],
    name: str,
) -> onnx.ModelProto:
    graph = source.graph
    infos = _value_infos(graph)
    missing = [t for t in list(inputs) + list(outputs) if t not in infos]
    if missing:
        raise SplitError(
            f"no type information for tensor(s) {missing}; run onnx.shape_inference.infer_shapes "
            "on the model first"
        )
    used = {t for n in nodes for t in _node_inputs(n)} | set(outputs)
    initializers = [t for t in graph.initializer if t.name in used and t.name not in inputs]
    produced = {o for n in nodes for o in n.output}
    value_info = [
        v
        for v in graph.value_info
        if v.name in produced and v.name not in outputs and v.name not in inputs
    ]
    new_graph = helper.make_graph(
        nodes,
        name,
        [infos[t] for t in inputs],
        [infos[t] for t in outputs],
        initializer=initializers,
        value_info=value_info,
    )
    model = helper.make_model(
        new_graph,
        opset_imports=list(source.opset_import),
        producer_name=source.producer_name or "onnxcam",
        producer_version=source.producer_version,
        ir_version=source.ir_version,
    )
    model.functions.extend(source.functions)
    return model


def split_model(
    model: onnx.ModelProto, target: str, outputs: Sequence[str] | None = None
) -> SplitModel:
    """Cut ``model`` at tensor ``target``.

    Args:
        model: a model with shapes inferred (value_info present for the cut tensors).
        target: name of the tensor to cut at.
        outputs: the model outputs the head computes; all graph outputs other than ``target``
            by default.

    Returns:
        A :class:`SplitModel`. Nodes keep their original order, names and attributes.

    Raises:
        SplitError: ``target`` is not a tensor of the model, or no output depends on it.
    """
    graph = model.graph
    producers = _producers(graph)
    known = {i.name for i in graph.input} | producers.keys()
    if target not in known:
        raise SplitError(
            f"tensor {target!r} is neither a graph input nor produced by any node of "
            f"model {graph.name!r}; list candidates with exporters.candidate_layers()"
        )
    graph_outputs = [o.name for o in graph.output]
    outputs = [o for o in (outputs or graph_outputs) if o != target]
    unknown = [o for o in outputs if o not in known]
    if unknown or not outputs:
        raise SplitError(f"outputs {unknown or outputs} are not tensors of the model")

    needed = ancestors(graph, outputs)
    downstream = _descendants(graph, target) & needed
    if not downstream:
        raise SplitError(f"no model output among {outputs} depends on tensor {target!r}")

    constants = constant_tensors(graph)
    head_idx = sorted(downstream)
    head_reads = {t for i in head_idx for t in _node_inputs(graph.node[i])}
    # Constant-valued nodes the head reads are copied into the head rather than cut across.
    const_nodes = ancestors(graph, [t for t in head_reads if t in constants and t in producers])
    head_idx = sorted(set(head_idx) | const_nodes)
    head_nodes = [graph.node[i] for i in head_idx]
    produced_in_head = {o for n in head_nodes for o in n.output}
    initializer_names = {t.name for t in graph.initializer}
    cut = [target] + sorted(
        t
        for t in {t for n in head_nodes for t in _node_inputs(n)}
        if t != target and t not in produced_in_head and t not in initializer_names
    )

    features_idx = ancestors(graph, cut)
    features_nodes = [graph.node[i] for i in sorted(features_idx)]
    features_reads = {t for n in features_nodes for t in _node_inputs(n)}
    features_inputs = [
        i.name
        for i in graph.input
        if i.name not in initializer_names and (i.name in cut or i.name in features_reads)
    ]
    features = _make_model(model, features_nodes, features_inputs, cut, f"{graph.name}_features")
    head = _make_model(model, head_nodes, cut, outputs, f"{graph.name}_head")
    return SplitModel(features, head, target, cut, list(outputs))
