"""Cut an ONNX model at a target tensor into a features graph and a head graph.

The features graph computes every tensor that does not depend on the target (model inputs ->
target tensor, plus any other tensor the head consumes across the cut). The head graph holds the
nodes that depend on the target: its inputs are the cut tensors, its outputs the model outputs.
Chaining the two reproduces the original outputs exactly, because every node is copied unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from .errors import SplitError
from .graph import Graph, node_inputs

__all__ = ["SplitError", "SplitModel", "split_model"]


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


def _make_model(
    g: Graph,
    nodes: list[onnx.NodeProto],
    inputs: Sequence[str],
    outputs: Sequence[str],
    name: str,
) -> onnx.ModelProto:
    source, graph = g.model, g.model.graph
    missing = [t for t in list(inputs) + list(outputs) if t not in g.types]
    if missing:
        raise SplitError(
            f"no type information for tensor(s) {missing}; run onnx.shape_inference.infer_shapes "
            "on the model first"
        )
    used = {t for n in nodes for t in node_inputs(n)} | set(outputs)
    initializers = [t for t in graph.initializer if t.name in used and t.name not in inputs]
    produced = {o for n in nodes for o in n.output}
    # every known type travels with the nodes (graph outputs of the source included), so the
    # halves need no new shape inference
    value_info = [
        g.value_info(name)
        for name in sorted(produced - set(outputs) - set(inputs))
        if name in g.types
    ]
    new_graph = helper.make_graph(
        nodes,
        name,
        [g.value_info(t) for t in inputs],
        [g.value_info(t) for t in outputs],
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


def _head(g: Graph, targets: list[str], outputs: list[str]
          ) -> tuple[list[onnx.NodeProto], list[str]]:
    """The head's nodes (original order) and the cut tensors (``targets`` first)."""
    downstream = set().union(*(g.descendants(t) for t in targets)) & g.ancestors(outputs)
    if not downstream:
        raise SplitError(f"no model output among {outputs} depends on tensor(s) {targets}")
    head_reads = {t for i in downstream for t in node_inputs(g.nodes[i])}
    # Constant-valued nodes the head reads are copied into the head rather than cut across.
    fixed = [t for t in head_reads if t in g.constant_tensors and t in g.producer]
    head_nodes = [g.nodes[i] for i in sorted(downstream | g.ancestors(fixed))]
    produced = {o for n in head_nodes for o in n.output}
    crossing = {t for n in head_nodes for t in node_inputs(n)}
    cut = list(targets) + sorted(
        t for t in crossing if t not in targets and t not in produced and t not in g.initializers
    )
    return head_nodes, cut


def split_model(
    model: onnx.ModelProto | Graph, target: str, outputs: Sequence[str] | None = None,
    also: Sequence[str] = (),
) -> SplitModel:
    """Cut ``model`` at tensor ``target`` (and at the tensors ``also``, which none of the others
    computes: a detector's head inputs, one per stride).

    Args:
        model: a model with shapes inferred (value_info present for the cut tensors), or its
            :class:`~exporters.graph.Graph`.
        target: name of the tensor to cut at.
        also: more tensors to cut at; they follow ``target`` among the cut tensors.
        outputs: the model outputs the head computes; all graph outputs other than ``target``
            by default.

    Returns:
        A :class:`SplitModel`. Nodes keep their original order, names and attributes.

    Raises:
        SplitError: ``target`` is not a tensor of the model, or no output depends on it.
    """
    g = model if isinstance(model, Graph) else Graph(model)
    graph = g.model.graph
    producers = g.producer
    known = {i.name for i in graph.input} | producers.keys()
    if target not in known:
        raise SplitError(
            f"tensor {target!r} is neither a graph input nor produced by any node of "
            f"model {graph.name!r}; list candidates with exporters.candidate_layers()"
        )
    graph_outputs = [o.name for o in graph.output]
    targets = [target, *also]
    missing = [t for t in also if t not in known]
    if missing:
        raise SplitError(f"tensor(s) {missing} are not tensors of model {graph.name!r}")
    outputs = [o for o in (outputs or graph_outputs) if o not in targets]
    unknown = [o for o in outputs if o not in known]
    if unknown or not outputs:
        raise SplitError(f"outputs {unknown or outputs} are not tensors of the model")

    head_nodes, cut = _head(g, targets, outputs)
    features_nodes = [g.nodes[i] for i in sorted(g.ancestors(cut))]
    features_reads = {t for n in features_nodes for t in node_inputs(n)}
    features_inputs = [
        i.name
        for i in graph.input
        if i.name not in g.initializers and (i.name in cut or i.name in features_reads)
    ]
    features = _make_model(g, features_nodes, features_inputs, cut, f"{graph.name}_features")
    head = _make_model(g, head_nodes, cut, outputs, f"{graph.name}_head")
    return SplitModel(features, head, target, cut, list(outputs))
