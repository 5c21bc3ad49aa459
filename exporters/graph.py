"""Graph facts and edits, written once: the toolkit the split, the autodiff and the front end share.

A :class:`Graph` wraps an ONNX model and answers what the exporters ask of it: producers and
consumers, value types and shapes (from one shape inference per export), constant values, the
opset, the float data path between two tensors, node names. The free functions edit graphs:
topological sort, dead-node removal, unique names, and the names a node's subgraphs capture.

Needs onnx and numpy only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from explainer.bundle import node_inputs, subgraphs
from explainer.static_dims import SKELETON_LIMIT, infer_skeleton, shape_skeleton

__all__ = [
    "DEFAULT_DOMAINS",
    "FLOAT_TYPES",
    "MIN_OPSET",
    "QUANTIZED",
    "Dim",
    "Graph",
    "attribute",
    "default_opset",
    "infer_shapes",
    "shape_skeleton",
    "is_default_domain",
    "node_inputs",
    "rename_values",
    "prune",
    "sort_topologically",
    "unique_name",
    "value_shape",
]

log = logging.getLogger(__name__)

#: A dimension: an ``int`` when static, a ``str`` when symbolic, ``None`` when unknown.
Dim = int | str | None

FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)
DEFAULT_DOMAINS = ("", "ai.onnx")
#: Ops whose integer outputs carry a quantized value on the float data path: static (QDQ) and
#: dynamic quantization (``DynamicQuantizeLinear`` feeding ``ConvInteger``/``MatMulInteger``,
#: as onnxruntime's ``quantize_dynamic`` writes them).
QUANTIZED = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"})
#: Oldest default-domain opset the exporters support; older models are converted.
MIN_OPSET = 13


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset (0 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def is_default_domain(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is an op of the default ONNX domain."""
    return node.domain in DEFAULT_DOMAINS


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with data propagation (keeps symbolic dims such as the batch).

    Best effort: a model the inference rejects is returned as it is (rules then ask for the
    shapes they need and name what is missing).
    """
    try:
        if all(math.prod(t.dims) <= SKELETON_LIMIT for t in model.graph.initializer):
            return onnx.shape_inference.infer_shapes(model, check_type=False, data_prop=True)
        # on the weights' types only (serialized into the inference and back four times, a
        # vgg16's 528 MB took most of its 2.5 s), the shapes then written into a copy
        inferred = infer_skeleton(model, data_prop=True)
    except Exception as err:  # InferenceError, or a protobuf over 2 GB
        log.warning("shape inference failed (%s); continuing without it", err)
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    for have, found in zip(out.graph.output, inferred.graph.output, strict=True):
        have.CopyFrom(found)
    return out


def value_shape(info: onnx.ValueInfoProto | onnx.TypeProto) -> list[Dim] | None:
    """Dims of a typed value (ints, symbols, None when unnamed); None when it has no shape."""
    type_ = info.type if isinstance(info, onnx.ValueInfoProto) else info
    tensor_type = type_.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in tensor_type.shape.dim
    ]


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """Value of attribute ``name`` of ``node`` (strings decoded), or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def rename_values(graph: onnx.GraphProto, rename: Callable[[str], str],
                  node_names: bool = False) -> None:
    """Rename, in place, the values ``graph``'s nodes read and write and its value infos (and
    with ``node_names`` the nodes), and everything of its subgraphs, their own inputs, outputs
    and initializers included: one consistent renaming. ``graph``'s own inputs, outputs and
    initializers are left to the caller."""
    for node in graph.node:
        if node_names and node.name:
            node.name = rename(node.name)
        node.input[:] = [rename(n) if n else n for n in node.input]
        node.output[:] = [rename(n) if n else n for n in node.output]
        for sub in subgraphs(node):
            rename_values(sub, rename, node_names)
            for field in (sub.input, sub.output, sub.initializer):
                for item in field:
                    item.name = rename(item.name)
    for info in graph.value_info:
        info.name = rename(info.name)


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... whichever is not in ``taken`` (then added to it)."""
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


def sort_topologically(
    nodes: Sequence[onnx.NodeProto], available: Iterable[str]
) -> list[onnx.NodeProto]:
    """Stable topological order of ``nodes`` (names in ``available`` are given).

    Nodes whose inputs can never be resolved (a cycle, an unknown name) keep their order at
    the end.
    """
    done, ordered, pending = set(available), [], list(nodes)
    while pending:
        waiting = []
        for node in pending:
            if all(x in done for x in node_inputs(node)):
                ordered.append(node)
                done.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            ordered.extend(waiting)
            break
        pending = waiting
    return ordered


def prune(graph: onnx.GraphProto, outputs: Iterable[str], keep_inputs: bool = True) -> None:
    """Dead-node removal in place: keep the nodes, initializers and value infos ``outputs`` need.

    Args:
        graph: the graph to edit.
        outputs: the tensors to keep computing; graph outputs not among them are dropped.
        keep_inputs: keep every graph input (else only those still read).
    """
    wanted = list(outputs)
    needed = set(wanted)
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(node_inputs(node))
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    produced = {o for node in graph.node for o in node.output}
    for field, keep in (
        (graph.initializer, lambda t: t.name in needed),
        (graph.output, lambda v: v.name in wanted),
        (graph.input, lambda v: keep_inputs or v.name in needed),
        (graph.value_info, lambda v: v.name in produced),
    ):
        # deleted in place: re-adding the survivors would copy every kept weight
        for i in reversed([i for i, item in enumerate(field) if not keep(item)]):
            del field[i]


class Graph:
    """Facts of one ONNX model: nodes, producers, consumers, types, shapes, constants, opset.

    Build it once per model (``Graph(model, infer=True)`` runs the one shape inference) and pass
    it on; nothing here copies the model.

    Attributes:
        model: the model (the inferred copy when ``infer=True``).
        nodes: the graph's nodes, in order.
        producer: tensor name -> index of the node that outputs it.
        consumers: tensor name -> indices of the nodes that read it.
        types: tensor name -> TypeProto (inputs, outputs, value infos, initializers).
        initializers: initializer name -> TensorProto.
        opset: default-domain opset.
    """

    def __init__(self, model: onnx.ModelProto, infer: bool = False) -> None:
        self.model = infer_shapes(model) if infer else model
        graph = self.model.graph
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.output:
                if name:
                    self.producer[name] = i
            for name in node_inputs(node):
                self.consumers.setdefault(name, []).append(i)
        self.initializers = {t.name: t for t in graph.initializer}
        self.types: dict[str, onnx.TypeProto] = {}
        for info in [*graph.value_info, *graph.input, *graph.output]:
            if info.type.HasField("tensor_type"):
                self.types[info.name] = info.type
        for tensor in graph.initializer:
            self.types.setdefault(
                tensor.name, helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))
            )
        self.opset = default_opset(self.model)

    # --- values --------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[Dim, ...] | None:
        """Shape of a value: ints, symbols or None per dim; None when its rank is unknown."""
        type_ = self.types.get(name)
        shape = value_shape(type_) if type_ is not None else None
        return None if shape is None else tuple(shape)

    def rank(self, name: str) -> int | None:
        """Rank of a value, or None when unknown."""
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def elem_type(self, name: str) -> int:
        """ONNX element type of a value (``TensorProto.UNDEFINED`` when unknown)."""
        type_ = self.types.get(name)
        return type_.tensor_type.elem_type if type_ is not None else TensorProto.UNDEFINED

    def is_float(self, name: str) -> bool:
        """Whether a value is floating point (an unknown type counts as float)."""
        elem_type = self.elem_type(name)
        return elem_type == TensorProto.UNDEFINED or elem_type in FLOAT_TYPES

    def value_info(self, name: str) -> onnx.ValueInfoProto | None:
        """A ValueInfoProto for ``name`` when its type is known."""
        type_ = self.types.get(name)
        if type_ is None:
            return None
        info = onnx.ValueInfoProto(name=name)
        info.type.CopyFrom(type_)
        return info

    @cached_property
    def constants(self) -> dict[str, onnx.TensorProto]:
        """Initializers and ``Constant`` outputs (tensor values only)."""
        constants = dict(self.initializers)
        for node in self.nodes:
            if node.op_type == "Constant" and is_default_domain(node):
                value = attribute(node, "value")
                if isinstance(value, onnx.TensorProto):
                    constants[node.output[0]] = value
        return constants

    def constant_value(self, name: str) -> np.ndarray | None:
        """Value of an initializer or ``Constant`` output, else None."""
        tensor = self.constants.get(name) if name else None
        return None if tensor is None else numpy_helper.to_array(tensor)

    @cached_property
    def constant_tensors(self) -> set[str]:
        """Tensors fixed by the graph: initializers, and outputs of nodes reading only those."""
        inputs = {i.name for i in self.model.graph.input}
        fixed = {name for name in self.initializers if name not in inputs}
        for node in self.nodes:
            random = node.op_type.startswith("Random") or node.op_type == "Multinomial"
            if not random and all(t in fixed for t in node_inputs(node)):
                fixed.update(o for o in node.output if o)
        return fixed

    @cached_property
    def names(self) -> set[str]:
        """Every tensor and node name in use (for :func:`unique_name`)."""
        graph = self.model.graph
        taken = {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
        taken.update(self.initializers)
        for node in self.nodes:
            taken.update(node.input)
            taken.update(node.output)
            taken.add(node.name)
        return taken

    def node_name(self, index: int) -> str:
        """Name of node ``index`` (``OpType_index`` when it has none)."""
        node = self.nodes[index]
        return node.name or f"{node.op_type}_{index}"

    def graph_inputs(self) -> list[str]:
        """Inputs that are not initializers."""
        return [i.name for i in self.model.graph.input if i.name not in self.initializers]

    # --- reachability --------------------------------------------------------------------------
    def ancestors(self, tensors: Iterable[str]) -> set[int]:
        """Indices of the nodes needed to compute ``tensors``."""
        needed: set[int] = set()
        stack = [self.producer[t] for t in tensors if t in self.producer]
        while stack:
            i = stack.pop()
            if i not in needed:
                needed.add(i)
                stack.extend(self.producer[t] for t in node_inputs(self.nodes[i])
                             if t in self.producer)
        return needed

    def descendants(self, tensor: str) -> set[int]:
        """Indices of the nodes that depend on ``tensor`` (nodes are in topological order)."""
        reached, found = {tensor}, set()
        for i, node in enumerate(self.nodes):
            if any(t in reached for t in node_inputs(node)):
                found.add(i)
                reached.update(o for o in node.output if o)
        return found

    def active(self, start: str) -> set[str]:
        """Float tensors that depend on ``start`` (``start`` included): the float data path.

        Integer side computations (``Shape``, indices) are not on it; the integer outputs of
        quantization (:data:`QUANTIZED`) are (their gradient is a straight-through estimator).
        """
        active = {start}
        for node in self.nodes:
            if any(i in active for i in node.input if i):
                quantized = node.op_type in QUANTIZED  # its first output: the values
                active.update(o for k, o in enumerate(node.output)
                              if o and ((quantized and k == 0) or self.is_float(o)))
        return active

    def path(self, start: str, output: str) -> tuple[list[int], set[str]]:
        """Nodes on the float path ``start -> output`` (topological order) and its tensors.

        Returns:
            (node indices, tensors on the path); both empty when ``output`` does not depend
            on ``start`` through float tensors.
        """
        active = self.active(start)
        if output not in active:
            return [], set()
        needed = {output}
        on_path: list[int] = []
        for i in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[i]
            if any(o in needed for o in node.output if o) and any(
                x in active for x in node.input if x
            ):
                on_path.append(i)
                needed.update(x for x in node.input if x in active)
        on_path.reverse()
        return on_path, needed
