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
from onnx import helper, numpy_helper

from .bundle import extract, node_inputs

__all__ = ["BACKWARD_PREFIX", "Parts", "SplitHead", "Window", "backward_inputs",
           "concat_parts", "part_backward", "window_backward"]

#: the prefix of the nodes the reverse-mode autodiff emits (the backward of a gradient head)
BACKWARD_PREFIX = "grad/"

#: ops whose output is zero where their first input is
_ZERO_FIRST = frozenset({
    "Conv", "ConvTranspose", "Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Expand",
    "Identity", "Neg", "Cast", "ReduceSum", "ReduceMean", "Split", "Tile", "Flatten", "Resize",
    "Div", "Gather", "GatherElements", "GatherND", "DepthToSpace", "SpaceToDepth",
})
#: ops whose output is zero where any input is
_ZERO_ANY = frozenset({"Mul", "MatMul"})


def backward_inputs(model: onnx.ModelProto, seed: str, outputs: list[str]) -> list[str] | None:
    """The forward tensors the backward of a gradient head reads to compute ``outputs`` (its
    gradients) from ``seed``: what the head's forward must hand over for its backward to run
    alone (:func:`explainer.bundle.extract` of these and the seed). Every output of a forward
    node that gives one of them is included, so that the extraction stops at that node. None
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
    return sorted(read)


@dataclass(frozen=True)
class Parts:
    """The explained tensor as the concatenation of ``tensors`` (forward tensors) along
    ``axis``; the backward splits the seed into ``gradients``, one per part, in order."""

    axis: int
    tensors: tuple[str, ...]
    gradients: tuple[str, ...]


def concat_parts(model: onnx.ModelProto, explained: str, seed: str) -> Parts | None:
    """The parts of the explained tensor where it is a ``Concat`` whose backward is one
    ``Split`` of the seed along the same axis (as the autodiff emits it); None otherwise."""
    nodes = model.graph.node
    concat = next((n for n in nodes if explained in n.output), None)
    readers = [n for n in nodes if seed in node_inputs(n)]
    if concat is None or concat.op_type != "Concat" or len(readers) != 1:
        return None
    split = readers[0]
    axis = next((helper.get_attribute_value(a) for a in concat.attribute if a.name == "axis"), 0)
    split_axis = next((helper.get_attribute_value(a) for a in split.attribute
                       if a.name == "axis"), 0)
    if (split.op_type != "Split" or split.input[0] != seed or split_axis < 0
            or (axis >= 0 and split_axis != axis)  # a negative axis: the Split's, normalized
            or len(split.output) != len(concat.input) or len(concat.input) < 2):
        return None
    return Parts(int(split_axis), tuple(concat.input), tuple(split.output))


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
        """The head's forward: the cut tensors -> :attr:`forward`."""
        return extract(self.head, self.inputs, self.forward)[0]

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

    def part_seed(self, seed: np.ndarray, forward: dict[str, Any], part: int) -> np.ndarray:
        """The slice of the seed rows [B, ...] over ``part`` of the explained tensor."""
        axis = self.parts.axis
        sizes = [np.shape(forward[name])[axis] for name in self.parts.tensors]
        bounds = np.cumsum([0, *sizes])
        return seed[(*(slice(None),) * axis, slice(bounds[part], bounds[part + 1]))]

    def part_of(self, seed: np.ndarray, forward: dict[str, Any]) -> int | None:
        """The one part of the explained tensor where the seed rows [B, ...] are not zero
        (None: several, or the explained tensor has no parts)."""
        if self.parts is None:
            return None
        axis = self.parts.axis
        sizes = [np.shape(forward[name])[axis] for name in self.parts.tensors]
        bounds = np.cumsum([0, *sizes])
        before = (slice(None),) * axis
        live = [i for i in range(len(sizes))
                if np.any(seed[(*before, slice(bounds[i], bounds[i + 1]))])]
        return live[0] if len(live) == 1 else None


#: ops a convolutional head's backward applies position by position (with broadcasting)
_POINTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Sum", "Neg", "Identity", "Sigmoid", "Tanh", "Relu", "Exp",
    "Log", "Sqrt", "Reciprocal", "Abs", "Sign", "Cast", "Where", "Greater", "Less",
    "GreaterOrEqual", "LessOrEqual", "Equal", "Not", "And", "Or", "Max", "Min", "Clip", "Erf",
    "Pow", "LeakyRelu", "HardSigmoid", "Softplus", "Constant",
})


@dataclass(frozen=True)
class Window:
    """A part's backward on a window of its positions: where the seed of a detection is one
    position of a level's map [N, C, H, W] and every backward node from there to the
    gradients is pointwise or a size-preserving stride-1 convolution, the gradients are zero
    farther than :attr:`radius` positions from the seed's nonzero positions, so the backward
    runs on that window of the seed and of the forward tensors it reads (cropped, the
    convolutions' zero padding standing for the zeros outside) and the result is embedded in
    zeros: the same gradients at a fraction of the cost.

    Attributes:
        model: the backward from :attr:`start` (and the part backward's inputs) to the
            gradients, spatial sizes left free.
        start: the seed's part reshaped to the level's map, the model's first input.
        source: the forward tensor whose shape :attr:`start` has, or the constant shape the
            part is reshaped to (ONNX ``Reshape`` semantics: 0 keeps a dim, -1 is inferred).
        radius: how far the gradients reach from a nonzero seed position, per spatial axis.
    """

    model: onnx.ModelProto
    start: str
    source: str | tuple[int, ...]
    radius: tuple[int, int]

    #: a window no smaller than this share of the map runs the dense backward instead
    DENSE_SHARE = 0.5

    def run(self, session: Any, seed_part: np.ndarray, forward: dict[str, Any],
            names: list[str]) -> dict[str, np.ndarray] | None:
        """The gradients ``names`` for the part's seed rows ``seed_part`` (the part's slice of
        the seed), or None where the window would not pay (the seed spreads over the map) or
        a forward tensor is neither the map's size nor broadcast over it."""
        if isinstance(self.source, str):
            start = np.reshape(seed_part, np.shape(forward[self.source]))
        else:
            start = np.reshape(seed_part, [d or seed_part.shape[i]
                                           for i, d in enumerate(self.source)])
        if start.ndim != 4:
            return None
        h, w = start.shape[2:]
        rows = np.flatnonzero(start.any(axis=(0, 1, 3)))
        cols = np.flatnonzero(start.any(axis=(0, 1, 2)))
        if not len(rows):
            return None
        r0, r1 = max(rows[0] - self.radius[0], 0), min(rows[-1] + self.radius[0] + 1, h)
        c0, c1 = max(cols[0] - self.radius[1], 0), min(cols[-1] + self.radius[1] + 1, w)
        if (r1 - r0) * (c1 - c0) >= self.DENSE_SHARE * h * w:
            return None
        crop = (Ellipsis, slice(r0, r1), slice(c0, c1))
        feeds = {self.start: np.ascontiguousarray(start[crop])}
        for value_info in self.model.graph.input[1:]:
            value = forward[value_info.name]
            tail = np.shape(value)[-2:]
            if np.ndim(value) == 4 and tail == (h, w):
                feeds[value_info.name] = np.ascontiguousarray(value[crop])
            elif any(d != 1 for d in tail):
                return None
            else:
                feeds[value_info.name] = value
        results = {}
        for name, value in zip(names, session.run(names, feeds), strict=True):
            full = np.zeros((*value.shape[:2], h, w), value.dtype)
            full[crop] = value
            results[name] = full
        return results


def window_backward(model: onnx.ModelProto, part_gradient: str, outputs: list[str]
                    ) -> Window | None:
    """The :class:`Window` of a part backward ``model`` whose part's seed is the tensor
    ``part_gradient`` (a :class:`Parts` gradient): found where the backward reshapes that
    tensor to the shape of a forward tensor (a level's map) and every node after it up to
    ``outputs`` reads the map position by position; None otherwise."""
    nodes = model.graph.node
    reshape = next((n for n in nodes if n.op_type == "Reshape" and n.input[0] == part_gradient),
                   None)
    if reshape is None or any(a.name == "allowzero" and a.i for a in reshape.attribute):
        return None
    inputs = [i.name for i in model.graph.input]
    source = _shape_source(model, reshape.input[1], inputs)
    if source is None:
        return None
    start = reshape.output[0]
    sub, missing = extract(model, [start, *inputs], outputs)
    if missing:
        return None
    used = {i for n in sub.graph.node for i in node_inputs(n)}
    read = [name for name in inputs if name in used]
    # spatial: what depends on the map or on a forward tensor (cropped alike)
    spatial = {start, *read}
    shapes = {t.name: list(t.dims) for t in sub.graph.initializer}
    shapes.update((n.output[0], list(next(iter(n.attribute)).t.dims)) for n in sub.graph.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value")
    radius = [0, 0]
    for node in sub.graph.node:
        names = [i for i in node.input if i]
        hit = [i in spatial for i in names]
        if not any(hit):
            continue
        if node.op_type == "Conv":
            grown = _conv_growth(node)
            if grown is None or any(hit[1:]):
                return None
            radius = [r + g for r, g in zip(radius, grown, strict=True)]
        elif node.op_type not in _POINTWISE or any(
                not z and not _broadcast(shapes.get(i)) for i, z in zip(names, hit, strict=True)):
            return None
        spatial.update(o for o in node.output if o)
    if not set(outputs) <= spatial:
        return None
    graph = sub.graph
    types = {v.name: v for v in model.graph.input}
    free = [helper.make_tensor_value_info(start, _elem_type(model, part_gradient), None),
            *(_free(types[name]) for name in read)]
    result = helper.make_model(
        helper.make_graph(list(graph.node), graph.name, free,
                          [_free(v) for v in graph.output], list(graph.initializer)),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    result.functions.extend(model.functions)
    return Window(result, start, source, (radius[0], radius[1]))


def _shape_source(model: onnx.ModelProto, shape: str, inputs: list[str]
                  ) -> str | tuple[int, ...] | None:
    """What a ``Reshape``'s ``shape`` input is: the whole ``Shape`` of one of ``inputs`` (its
    name), a constant (its values), or None (computed otherwise)."""
    node = next((n for n in model.graph.node if shape in n.output), None)
    if node is not None and node.op_type == "Shape":
        whole = not any(a.name in ("start", "end") for a in node.attribute)
        return node.input[0] if whole and node.input[0] in inputs else None
    if node is not None and node.op_type == "Constant":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
    else:
        value = next((t for t in model.graph.initializer if t.name == shape), None)
    return None if value is None else tuple(int(d) for d in numpy_helper.to_array(value))


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    """The element type of a graph input (the seed) whose ``Split`` gives ``name``; float
    where it cannot be told."""
    node = next((n for n in model.graph.node if name in n.output), None)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
    return (node is not None and types.get(node.input[0])) or onnx.TensorProto.FLOAT


def _conv_growth(node: onnx.NodeProto) -> list[int] | None:
    """How far a 2-D stride-1 ``Conv`` that keeps its input's size spreads a tensor's nonzero
    positions, per side and axis (the larger of its two pads); None for any other Conv."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kernel = list(attrs.get("kernel_shape", []))
    if len(kernel) != 2 or any(s != 1 for s in attrs.get("strides", [1, 1])):
        return None
    dilations = list(attrs.get("dilations", [1, 1]))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return [d * (k - 1) - d * (k - 1) // 2 for d, k in zip(dilations, kernel, strict=True)]
    if auto not in ("NOTSET", ""):
        return None  # VALID shrinks the map
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if any(pads[i] + pads[i + 2] != d * (k - 1)
           for i, (d, k) in enumerate(zip(dilations, kernel, strict=True))):
        return None
    return [max(pads[i], pads[i + 2]) for i in range(2)]


def _broadcast(dims: list[int] | None) -> bool:
    """Whether a tensor of shape ``dims`` (None: unknown) is the same at every position of a
    map [N, C, H, W] it is broadcast against (its last two dims are 1, or it has fewer)."""
    return dims is not None and all(d == 1 for d in dims[-2:]) and len(dims) <= 4


def _free(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``value`` with its shape left free (a window's spatial size changes per run)."""
    elem = value.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
    return helper.make_tensor_value_info(value.name, elem, None)
