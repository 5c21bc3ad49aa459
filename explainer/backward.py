"""The gradient head's backward, run on its own after the head's forward.

A bundle's gradient head holds the model's head (its forward) and the reverse-mode backward of
``sum(seed * explained)`` (nodes named ``grad/...``). Where targets are decoded from the
outputs first (a detector's boxes), the forward runs once and only the backward runs per
target (:class:`explainer.runner.Runner`):

* :func:`backward_inputs`: the forward tensors the backward reads, which the forward hands
  over;
* :func:`concat_parts` and :func:`part_backward`: a detector's explained tensor is often the
  concatenation of its levels (strides 8, 16, 32); the seed of one detection is zero outside
  its level, so the backward of the other levels only carries zeros. The part backward drops
  every node whose output is zero whatever the seed's values in that level are (a Conv, a
  product, a reshape of a zero tensor) and turns a sum with zero terms into its other term,
  so only the detection's own level and the paths into it run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .backward_window import Window, window_backward
from .bundle import BACKWARD_PREFIX, extract, node_inputs
from .fast_softmax import elementwise_softmax
from .sparse_seeds import SparseColumn

__all__ = ["BACKWARD_PREFIX", "Parts", "SplitHead", "backward_inputs", "concat_parts",
           "part_backward"]

#: ops whose output is zero where their first input is
_ZERO_FIRST = frozenset({
    "Conv", "ConvTranspose", "Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Expand",
    "Identity", "Neg", "Cast", "ReduceSum", "ReduceMean", "Split", "Tile", "Flatten", "Resize",
    "Div", "Gather", "GatherElements", "GatherND", "DepthToSpace", "SpaceToDepth",
})
#: ops whose output is zero where any input is
_ZERO_ANY = frozenset({"Mul", "MatMul"})
#: unary pointwise ops the backward recomputes from their input where it reads that anyway
#: (the Sigmoid of a SiLU beside its input), instead of the forward handing over both
_RECOMPUTE = frozenset({"Sigmoid", "Tanh", "Relu", "HardSigmoid", "Exp", "Neg", "Abs"})


def backward_inputs(model: onnx.ModelProto, seed: str, outputs: list[str]) -> list[str] | None:
    """The forward tensors the backward of a gradient head reads to compute ``outputs`` (its
    gradients) from ``seed``: what the head's forward must hand over for its backward to run
    alone (:func:`explainer.bundle.extract` of these and the seed). Every output of a forward
    node that gives one of them is included, so that the extraction stops at that node; a
    cheap unary op's result whose input is read too is left to the backward to recompute
    (:data:`_RECOMPUTE`: a SiLU hands over its input alone). None
    where the backward cannot run alone: a forward node reads a backward tensor, or an output
    is no backward tensor."""
    nodes = model.graph.node
    backward = {o for n in nodes if n.name.startswith(BACKWARD_PREFIX) for o in n.output if o}
    if not set(outputs) <= backward:
        return None
    producer = {o: n for n in nodes for o in n.output if o}
    inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    read: set[str] = set()
    needed, seen = list(outputs), set(outputs)
    while needed:
        node = producer.get(needed.pop())
        if node is None:
            continue
        for name in node_inputs(node):
            if name in seen or name == seed:
                continue
            seen.add(name)
            if name in backward:
                needed.append(name)
            elif name in producer or name in inputs:
                read.add(name)  # a forward tensor or a graph input (initializers aside)
    for name in list(read):
        if name in producer:
            read.update(o for o in producer[name].output if o)
    if any(i in backward for n in nodes if not n.name.startswith(BACKWARD_PREFIX)
           for i in node_inputs(n)):
        return None
    source = {name: node_inputs(producer[name]) for name in read if name in producer
              and producer[name].op_type in _RECOMPUTE and len(producer[name].output) == 1}
    again = {name for name, given in source.items() if len(given) == 1 and given[0] in read}
    again = {name for name in again if source[name][0] not in again}  # its input stays read
    return sorted(read - again)


@dataclass(frozen=True)
class Parts:
    """The explained tensor as the concatenation of ``tensors`` (forward tensors) along
    ``axis`` (of the explained tensor), maybe transposed after (``perm``, the concatenation's
    axis ``part_axis``); the backward splits the seed into ``gradients``, one per part, in
    order."""

    axis: int
    tensors: tuple[str, ...]
    gradients: tuple[str, ...]
    perm: tuple[int, ...] | None = None
    part_axis: int | None = None

    def sizes(self, forward: dict[str, Any]) -> list[int]:
        """Each part's size along :attr:`axis`, from the forward tensors."""
        axis = self.axis if self.part_axis is None else self.part_axis
        return [np.shape(forward[name])[axis] for name in self.tensors]

    def seed_of(self, seed: np.ndarray | SparseColumn, forward: dict[str, Any], part: int
                ) -> np.ndarray:
        """The seed rows' gradient for ``part`` as the backward splits it off."""
        bounds = np.cumsum([0, *self.sizes(forward)])
        axis = self.axis if self.part_axis is None else self.part_axis
        if isinstance(seed, SparseColumn):
            return seed.part(self.perm, axis, int(bounds[part]), int(bounds[part + 1]))
        if self.perm is not None:
            seed = np.transpose(seed, np.argsort(self.perm))  # back to the concatenation
        return seed[(*(slice(None),) * axis, slice(bounds[part], bounds[part + 1]))]


def concat_parts(model: onnx.ModelProto, explained: str, seed: str) -> Parts | None:
    """The parts of the explained tensor where it is a ``Concat`` (or a ``Transpose`` of
    one, as YOLOX writes [N, anchors, 5+C]) whose backward is one ``Split`` of the seed along
    the same axis (as the autodiff emits it); None otherwise."""
    nodes = model.graph.node
    producer = {o: n for n in nodes for o in n.output if o}
    concat, perm = producer.get(explained), None
    readers = [n for n in nodes if seed in node_inputs(n)]
    if concat is None or len(readers) != 1:
        return None
    split = readers[0]
    if concat.op_type == "Transpose":
        perm = tuple(next((helper.get_attribute_value(a) for a in concat.attribute
                           if a.name == "perm"), ()))
        concat = producer.get(concat.input[0])
        after = [n for n in nodes if split.output[0] in node_inputs(n)]
        if (not perm or split.op_type != "Transpose" or len(after) != 1 or tuple(
                next((helper.get_attribute_value(a) for a in split.attribute
                      if a.name == "perm"), ())) != tuple(np.argsort(perm))):
            return None
        split = after[0]
    if concat is None or concat.op_type != "Concat":
        return None
    axis = next((helper.get_attribute_value(a) for a in concat.attribute if a.name == "axis"), 0)
    split_axis = next((helper.get_attribute_value(a) for a in split.attribute
                       if a.name == "axis"), 0)
    if (split.op_type != "Split" or split.input[0] != (readers[0].output[0] if perm else seed)
            or split_axis < 0
            or (axis >= 0 and split_axis != axis)  # a negative axis: the Split's, normalized
            or len(split.output) != len(concat.input) or len(concat.input) < 2):
        return None
    if perm is None:
        return Parts(int(split_axis), tuple(concat.input), tuple(split.output))
    return Parts(perm.index(split_axis), tuple(concat.input), tuple(split.output), perm,
                 int(split_axis))


def part_backward(model: onnx.ModelProto, zero: set[str]) -> tuple[onnx.ModelProto, set[str]]:
    """The backward ``model`` (its inputs: the forward's tensors and the seed) without the
    nodes that only carry the zeros of ``zero`` (the gradients of the parts whose seed is
    zero): (the model, its outputs that are zero, which it no longer computes)."""
    graph = model.graph
    zeros = set(zero)
    chosen: list[onnx.NodeProto | None] = []
    dropped: dict[str, int] = {}  # a zero tensor -> the index of the node that computed it
    for index, node in enumerate(graph.node):
        replaced = _without_zeros(node, [i for i in node.input if i], zeros)
        if replaced is None:  # every output is zero
            zeros.update(o for o in node.output if o)
            dropped.update((o, index) for o in node.output if o)
        chosen.append(replaced)
    # a zero tensor that a kept node reads as it is (a Shape, a Concat): computed after all
    needed = [i for n in chosen if n is not None for i in node_inputs(n) if i in dropped]
    while needed:
        index = dropped[needed.pop()]
        if chosen[index] is None:
            chosen[index] = graph.node[index]
            needed.extend(i for i in node_inputs(graph.node[index]) if i in dropped)
    produced = {o for n in chosen if n is not None for o in n.output}
    zero_outputs = {o.name for o in graph.output if o.name in zeros and o.name not in produced}
    live = {o.name for o in graph.output} - zero_outputs
    nodes = []
    for node in reversed([n for n in chosen if n is not None]):  # what the outputs need
        if live.intersection(node.output):
            nodes.append(node)
            live.update(node_inputs(node))
    nodes.reverse()
    produced = {o for n in nodes for o in n.output}
    used = {i for n in nodes for i in node_inputs(n)}
    part = helper.make_graph(
        nodes, graph.name, list(graph.input),
        [o for o in graph.output if o.name not in zero_outputs],
        initializer=[t for t in graph.initializer if t.name in used],
        value_info=[v for v in graph.value_info if v.name in produced])
    result = helper.make_model(part, opset_imports=list(model.opset_import),
                               ir_version=model.ir_version)
    result.functions.extend(model.functions)
    return result, zero_outputs


def _without_zeros(node: onnx.NodeProto, inputs: list[str], zeros: set[str]
                   ) -> onnx.NodeProto | None:
    """``node`` given that the tensors ``zeros`` are zero: None where its outputs are zero,
    the node itself or a cheaper equal one (a sum without its zero terms) otherwise."""
    hit = [i in zeros for i in inputs]
    if not any(hit):
        return node
    op = node.op_type
    # zeros padded with zeros: constant mode, no constant_value given
    padded = op == "Pad" and _is_constant_mode(node) and not (len(inputs) > 2
                                                              and node.input[2])
    if (hit[0] and (op in _ZERO_FIRST or padded)) or op in _ZERO_ANY or (
            op == "Concat" and all(hit)):
        return None
    if op in ("Add", "Sum", "Sub"):
        rest = [i for i, z in zip(inputs, hit, strict=True) if not z]
        if not rest:
            return None
        if op == "Sub" and hit[0]:
            return helper.make_node("Neg", rest, list(node.output), name=node.name)
        if len(rest) == 1:
            return helper.make_node("Identity", rest, list(node.output), name=node.name)
        return helper.make_node("Sum", rest, list(node.output), name=node.name)
    return node


def _is_constant_mode(node: onnx.NodeProto) -> bool:
    """Whether a ``Pad`` pads with a constant (its default)."""
    mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"),
                b"constant")
    return mode in (b"constant", "constant")


class SplitHead:
    """A gradient head run as its forward, once, then its backward per target.

    Args:
        head: the gradient head graph.
        inputs: its inputs (the cut tensors).
        explained, seed: the explained tensor and the seed over it.
        outputs: the model outputs the head keeps.
        layers: (activation, gradient) of every explained layer, the first one's activation
            a cut tensor.

    Raises:
        ValueError: the backward cannot run alone (:func:`backward_inputs`); check with
            :meth:`of` instead.
    """

    def __init__(self, head: onnx.ModelProto, inputs: list[str], explained: str, seed: str,
                 outputs: list[str], layers: list[tuple[str, str]]) -> None:
        self.head, self.inputs, self.seed = head, list(inputs), seed
        #: every layer's gradient (the backward's outputs) -> its activation
        self.gradients = dict((g, a) for a, g in layers)
        saved = backward_inputs(head, seed, list(self.gradients))
        if saved is None:
            raise ValueError("the head's backward reads no forward tensors alone")
        #: what the backward reads (forward tensors and cut tensors)
        self.saved = saved
        self.parts = concat_parts(head, explained, seed)
        later = [a for a, _ in layers[1:] if a not in inputs]
        #: what the forward gives: the explained tensor, the model outputs, the later layers'
        #: activations, the tensors the backward reads and the explained tensor's parts
        self.forward = list(dict.fromkeys(
            [explained, *outputs, *later, *(n for n in saved if n not in inputs),
             *(self.parts.tensors if self.parts else ())]))
        self._models: dict[int | None, tuple[onnx.ModelProto, set[str]]] = {}
        self._windows: dict[int, Window | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, head: onnx.ModelProto, inputs: list[str], explained: str, seed: str,
           outputs: list[str], layers: list[tuple[str, str]]) -> SplitHead | None:
        """The split head, or None where the backward cannot run alone."""
        try:
            return cls(head, inputs, explained, seed, outputs, layers)
        except ValueError:
            return None

    def forward_model(self) -> onnx.ModelProto:
        """The head's forward: the cut tensors -> :attr:`forward` (a softmax over a short axis
        in its elementwise form, :func:`~explainer.fast_softmax.elementwise_softmax`)."""
        model = extract(self.head, self.inputs, self.forward)[0]
        elementwise_softmax(model)
        return model

    def prediction_model(self, features: onnx.ModelProto) -> onnx.ModelProto:
        """The features graph and the head's forward as one graph: the model's input -> the
        cut tensors and :attr:`forward` (one run instead of two: no hand-over of the cut
        tensors, and ONNX Runtime optimizes across the cut)."""
        forward = self.forward_model()
        first, second = features.graph, forward.graph
        constants = {t.name for t in first.initializer}
        outputs = {o.name: o for o in [*first.output, *second.output]}
        made = {o for n in first.node for o in n.output}  # the forward's copies of them: out
        graph = helper.make_graph(
            [*first.node, *(n for n in second.node if not set(n.output) <= made)], first.name,
            [i for i in first.input if i.name not in constants],
            [outputs[n] for n in dict.fromkeys([*self.inputs, *self.forward])],
            initializer=[*first.initializer,
                         *(t for t in second.initializer if t.name not in constants)],
            value_info=[*first.value_info, *second.value_info])
        opsets: dict[str, int] = {}
        for opset in [*features.opset_import, *forward.opset_import]:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
        model = helper.make_model(graph, opset_imports=[
            helper.make_opsetid(domain, version) for domain, version in opsets.items()],
            ir_version=max(features.ir_version, forward.ir_version))
        known = {f.name for f in features.functions}
        model.functions.extend([*features.functions,
                                *(f for f in forward.functions if f.name not in known)])
        return model

    def backward_model(self, part: int | None = None) -> tuple[onnx.ModelProto, set[str]]:
        """The backward (:attr:`saved` and the seed -> :attr:`gradients`), for a seed that is
        zero outside ``part`` of the explained tensor where one is given: (the model, the
        gradients that are then zero, which it does not compute)."""
        part = None if self.parts is None else part
        with self._lock:
            if None not in self._models:
                self._models[None] = (extract(self.head, [*self.saved, self.seed],
                                              list(self.gradients))[0], set())
            if part not in self._models:
                zero = {g for i, g in enumerate(self.parts.gradients) if i != part}
                self._models[part] = part_backward(self._models[None][0], zero)
            return self._models[part]

    def window(self, part: int) -> Window | None:
        """The :class:`Window` of ``part``'s backward, None where it has none."""
        model, zeros = self.backward_model(part)
        with self._lock:
            if part not in self._windows:
                outputs = [g for g in self.gradients if g not in zeros]
                self._windows[part] = window_backward(model, self.parts.gradients[part],
                                                      outputs)
            return self._windows[part]

    def zeros(self, forward: dict[str, Any], names: list[str], columns: tuple[int, int],
              filled: bool = True) -> dict[str, np.ndarray]:
        """Zeros [B, K, ...] for the gradients ``names`` (``columns``: B, K), each shaped as
        its activation in ``forward`` past the batch; uninitialized with ``filled=False``,
        for a reader of a windowed column's regions only (zeroing ten YOLOv8n detections'
        gradients at 640 is 29 MB of memset, about 3 ms)."""
        make = np.zeros if filled else np.empty
        return {n: make((*columns, *np.shape(forward[self.gradients[n]])[1:]), np.float32)
                for n in names}

    def part_seed(self, seed: np.ndarray | SparseColumn, forward: dict[str, Any], part: int
                  ) -> np.ndarray:
        """The seed rows' gradient over ``part`` of the explained tensor, as the backward
        splits it off (:meth:`Parts.seed_of`)."""
        return self.parts.seed_of(seed, forward, part)

    def part_of(self, seed: np.ndarray | SparseColumn, forward: dict[str, Any]) -> int | None:
        """The one part of the explained tensor where the seed rows [B, ...] are not zero
        (None: several, or the explained tensor has no parts)."""
        if self.parts is None:
            return None
        axis = self.parts.axis
        bounds = np.cumsum([0, *self.parts.sizes(forward)])
        # the live positions along the parts' axis (a dense seed: one pass over the rows)
        live = seed.live(axis) if isinstance(seed, SparseColumn) else np.flatnonzero(
            np.any(seed, axis=tuple(i for i in range(seed.ndim) if i != axis)))
        if not live.size:
            return None
        first, last = np.searchsorted(bounds, [live[0], live[-1]], side="right") - 1
        return int(first) if first == last else None

