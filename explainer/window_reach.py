"""How far a detection's gradient reaches through a part backward: the graph analysis of
:mod:`explainer.backward_window` (:func:`reach`).

From the seed's map, every node is classified by what its output carries: the gradient (it
depends on the seed), a forward tensor (read from the head's forward), a size (a ``Shape``).
Gradient tensors grow by each stride-1 convolution's reach and move s times finer through a
strided convolution's transposed backward (``ConvTranspose``, then ``Pad``/``Slice``); tensors
on one grid share a scale (union-find, :class:`_Scales`). Anything that would not keep a crop
exact makes :func:`reach` return None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .window_ops import broadcast, conv_growth, landed, pad_begin, transposed

__all__ = ["FORWARD", "GRADIENT", "Reach", "reach", "union"]

#: ops applied position by position (with broadcasting)
_POINTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Sum", "Neg", "Identity", "Sigmoid", "Tanh", "Relu", "Exp",
    "Log", "Sqrt", "Reciprocal", "Abs", "Sign", "Cast", "Where", "Greater", "Less",
    "GreaterOrEqual", "LessOrEqual", "Equal", "Not", "And", "Or", "Max", "Min", "Clip", "Erf",
    "Pow", "LeakyRelu", "HardSigmoid", "Softplus",
})
#: pointwise ops whose output is zero where their gradient inputs are, whichever they are
_LINEAR_ANY = frozenset({"Mul", "Neg", "Identity", "Cast", "Relu", "Abs", "Sign"})
#: ... where all of their inputs carry the gradient
_LINEAR_ALL = frozenset({"Add", "Sub", "Sum", "Max", "Min"})
#: integer arithmetic on shapes
_SHAPE_OPS = frozenset({"Slice", "Add", "Sub", "Gather", "Concat", "Squeeze", "Unsqueeze",
                        "Cast", "Identity"})

GRADIENT, FORWARD, SIZE, PENDING = "gradient", "forward", "size", "pending"


class _Scales:
    """Union-find of tensors that share a grid, each class with its scale once known."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.scale: dict[str, int] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def join(self, names: list[str], scale: int | None = None) -> bool:
        """Put ``names`` on one grid (of ``scale`` where given); False on a conflict."""
        roots = {self.find(n) for n in names}
        known = {self.scale[r] for r in roots if r in self.scale} | (
            set() if scale is None else {scale})
        if len(known) > 1:
            return False
        root = min(roots)
        for other in roots:
            self.parent[other] = root
        if known:
            self.scale[root] = known.pop()
        return True

    def of(self, name: str) -> int | None:
        return self.scale.get(self.find(name))


@dataclass
class Reach:
    """What :func:`reach` finds: how far the seed's gradient reaches, tensor by tensor.

    Attributes:
        radius: the farthest reach around the seed, per spatial axis, in the seed map's
            positions (a window of one size for every tensor would need this much).
        scales: each forward input -> how many times finer its grid is than the seed's map.
        outputs: each output -> its grid's scale.
        kind: each tensor the walk met -> :data:`GRADIENT`, :data:`FORWARD` or :data:`SIZE`.
        bounds: each gradient tensor -> where it can be nonzero, (before, after) per axis
            around the seed's positions on its own grid (see :func:`reach`).
        scale: each gradient or forward tensor -> its grid's scale.
        landed: each strided convolution's gradient -> (the ``ConvTranspose`` output it is
            cut from, the stride, the kernel's extent per axis, the shift per axis: the
            gradient's position of that output's element 0 at a seed at 0 is ``-shift``).
        dropped: the outputs of nodes a window computes otherwise (sizes, the ``Pad`` and
            ``Slice`` that cut a ``ConvTranspose`` to size).
    """

    radius: tuple[int, int]
    scales: dict[str, int]
    outputs: dict[str, int]
    kind: dict[str, str] = field(default_factory=dict)
    bounds: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    scale: dict[str, int] = field(default_factory=dict)
    landed: dict[str, tuple[str, int, list[int], list[int]]] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)


def reach(model: onnx.ModelProto, start: str, read: list[str], outputs: list[str]
          ) -> Reach | None:
    """Walk the backward from ``start``: the :class:`Reach` of every tensor, or None where a
    node would not keep a crop exact."""
    walk = _Walk(model, start, read)
    if not all(walk.step(node) for node in model.graph.node):
        return None
    return walk.result(read, outputs)


@dataclass
class _Node:
    """A node as the walk reads it: its op, attributes, named inputs (with what each
    carries) and outputs."""

    proto: onnx.NodeProto
    op: str
    attrs: dict[str, Any]
    names: list[str]
    kinds: list[str | None]
    out: list[str]


class _Walk:
    """:func:`reach`'s state over the nodes in order: what each tensor carries, its grid,
    and a gradient's reach: its nonzero positions lie within
    ``[s*lo - before, s*(hi + 1) - 1 + after]`` on its grid of scale s, per axis, ``[lo, hi]``
    the seed's on its own map. Each step returns False where its node would not keep a crop
    exact."""

    def __init__(self, model: onnx.ModelProto, start: str, read: list[str]) -> None:
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in model.graph.node:
            if (node.op_type == "Constant" and node.attribute
                    and node.attribute[0].name == "value"):
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.kind: dict[str, str] = {start: GRADIENT, **dict.fromkeys(read, FORWARD)}
        self.found = Reach((0, 0), {}, {}, self.kind)
        self.grid = _Scales()
        self.grid.join([start], 1)
        self.reach: dict[str, list[tuple[int, int]]] = {start: [(0, 0), (0, 0)]}
        self.shaped: dict[str, set[str]] = {}  # a SIZE tensor -> the tensors whose shapes it reads
        self.pending: dict[str, tuple[Any, ...]] = {}  # a ConvTranspose's result before Pad/Slice

    def step(self, proto: onnx.NodeProto) -> bool:
        """Classify one node's outputs (a node reading nothing the walk tracks is skipped)."""
        names = [i for i in proto.input if i]
        kinds = [self.kind.get(i) for i in names]
        if not any(kinds):
            return True  # weights and constants
        node = _Node(proto, proto.op_type,
                     {a.name: helper.get_attribute_value(a) for a in proto.attribute},
                     names, kinds, [o for o in proto.output if o])
        if node.op == "Shape" and kinds[0] in (GRADIENT, FORWARD):
            return self._shape(node)
        if SIZE in kinds and PENDING not in kinds:
            return self._size(node)
        if PENDING in kinds:
            return self._pad(node) if node.op == "Pad" else self._slice(node)
        if node.op in _STEPS:
            return _STEPS[node.op](self, node)
        return node.op in _POINTWISE and self._pointwise(node)

    def _shape(self, node: _Node) -> bool:
        if "start" in node.attrs or "end" in node.attrs:
            return False
        self.kind[node.out[0]], self.shaped[node.out[0]] = SIZE, {node.names[0]}
        self.found.dropped.update(node.out)
        return True

    def _size(self, node: _Node) -> bool:
        """Integer arithmetic on shapes: dropped (a window computes its sizes otherwise)."""
        if node.op not in _SHAPE_OPS or any(k not in (SIZE, None) for k in node.kinds):
            return False
        self.kind.update(dict.fromkeys(node.out, SIZE))
        self.found.dropped.update(node.out)
        self.shaped[node.out[0]] = set().union(
            *(self.shaped[i] for i in node.names if i in self.shaped))
        return True

    def _pad(self, node: _Node) -> bool:
        """The zeros before a pending transposed convolution's result: its offset moves."""
        if node.kinds[0] != PENDING or len(node.out) != 1:
            return False
        pads = pad_begin(node.proto, node.names, self.consts)
        if pads is None:
            return False
        scale, stride, extent, offset, bounds, raw = self.pending[node.names[0]]
        self.pending[node.out[0]] = (
            scale, stride, extent, [o - p for o, p in zip(offset, pads, strict=True)], bounds,
            raw)
        self.kind[node.out[0]] = PENDING
        self.found.dropped.add(node.out[0])
        return True

    def _slice(self, node: _Node) -> bool:
        """The ``Slice`` that cuts a pending transposed convolution to size: it lands."""
        if node.op != "Slice" or node.kinds[0] != PENDING:
            return False
        step = self.pending[node.names[0]]
        landed = _slice_back(node.proto, node.names, self.consts, self.kind, self.shaped, step)
        if landed is None:
            return False
        scale, bounds, to_shape, shift = landed
        if not self.grid.join([node.out[0], *to_shape], scale):
            return False
        self.kind[node.out[0]], self.reach[node.out[0]] = GRADIENT, bounds
        _, stride, extent, _, _, raw = step
        self.found.landed[node.out[0]] = (raw, stride, extent, shift)
        return True

    def _conv_transpose(self, node: _Node) -> bool:
        """A strided convolution's backward: s times finer, cut to size by its own pads or by
        a ``Pad`` and a ``Slice`` after it (pending until then)."""
        names, out = node.names, node.out[0]
        if node.kinds[0] != GRADIENT or any(node.kinds[1:]):
            return False
        step = transposed(node.attrs, self.grid.of(names[0]))
        if step is None:
            return False
        scale, stride, extent, begin = step
        if begin is None:
            self.kind[out] = PENDING
            self.pending[out] = (scale, stride, extent, [0, 0], self.reach[names[0]], out)
            return True
        self.grid.join([out], scale * stride)
        self.kind[out] = GRADIENT
        self.reach[out] = landed(stride, self.reach[names[0]], extent, begin)
        self.found.landed[out] = (out, stride, extent, begin)
        return True

    def _conv(self, node: _Node) -> bool:
        """A stride-1 convolution of the gradient: its reach grows by the kernel's."""
        grown = conv_growth(node.attrs)
        if grown is None or node.kinds[0] != GRADIENT or any(node.kinds[1:]):
            return False
        source, out = node.names[0], node.out[0]
        self.grid.join([source, out])
        self.kind[out] = GRADIENT
        self.reach[out] = [(b + g, a + g) for (b, a), g in zip(self.reach[source], grown)]
        return True

    def _channels(self, node: _Node) -> bool:
        """``Split``/``Concat`` of gradients along the channels: one grid, the union reach."""
        concat = node.op == "Concat"
        data = node.names if concat else node.names[:1]
        kinds = node.kinds
        if node.attrs.get("axis", 0) not in (1, -3) or (
                concat and any(k != GRADIENT for k in kinds)) or (
                not concat and (kinds[0] != GRADIENT or any(kinds[1:]))):
            return False
        if not self.grid.join([*data, *node.out]):
            return False
        self.kind.update(dict.fromkeys(node.out, GRADIENT))
        self.reach.update(dict.fromkeys(node.out, union([self.reach[i] for i in data])))
        return True

    def _pointwise(self, node: _Node) -> bool:
        """Position by position: a gradient stays where its inputs' are, provided the op is
        zero where they are (:data:`_LINEAR_ANY`, :data:`_LINEAR_ALL`, a ``Div`` by a forward
        tensor, a ``Where`` between gradients and zeros)."""
        op, names, kinds = node.op, node.names, node.kinds
        spatial = [i for i, k in zip(names, kinds, strict=True) if k]
        if any(not k and not broadcast(self.consts.get(i)) for i, k in zip(names, kinds)):
            return False
        gradients = [i for i, k in zip(names, kinds, strict=True) if k == GRADIENT]
        if gradients and not (
                op in _LINEAR_ANY or (op == "Div" and kinds[0] == GRADIENT
                                      and GRADIENT not in kinds[1:])
                or (op in _LINEAR_ALL and len(gradients) == len(names))
                or (op == "Where" and _zero_branches(names, kinds, self.consts))):
            return False
        if not self.grid.join([*spatial, *node.out]):
            return False
        self.kind.update(dict.fromkeys(node.out, GRADIENT if gradients else FORWARD))
        if gradients:
            self.reach.update(dict.fromkeys(node.out, union([self.reach[i] for i in gradients])))
        return True

    def result(self, read: list[str], outputs: list[str]) -> Reach | None:
        """The :class:`Reach` once every node is walked (None: an output is no gradient, or a
        tensor's grid is unknown)."""
        kind, grid, found = self.kind, self.grid, self.found
        if any(kind.get(o) != GRADIENT for o in outputs):
            return None
        if any(grid.of(n) is None for n in [*read, *outputs] if kind.get(n) != SIZE):
            return None
        radius = [0, 0]
        for name, bounds in self.reach.items():
            scale = grid.of(name)
            if scale is None:
                return None
            radius = [max(r, -(-b // scale), -(-a // scale))
                      for r, (b, a) in zip(radius, bounds, strict=True)]
        scales = {n: grid.of(n) for n in read}
        if any(s is None for s in scales.values()):
            return None
        found.radius, found.scales = (radius[0], radius[1]), scales
        found.outputs = {o: grid.of(o) for o in outputs}
        found.bounds = self.reach
        found.scale = {n: grid.of(n) for n, k in kind.items()
                       if k in (GRADIENT, FORWARD)}
        return found


#: the walk's step for each op other than pointwise ones
_STEPS = {"ConvTranspose": _Walk._conv_transpose, "Conv": _Walk._conv,
          "Split": _Walk._channels, "Concat": _Walk._channels}


def union(bounds: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """The reach (before, after) per axis that covers each of ``bounds``."""
    return [(max(b[axis][0] for b in bounds), max(b[axis][1] for b in bounds))
            for axis in range(2)]


def _zero_branches(names: list[str], kinds: list[str | None], consts: dict[str, np.ndarray]
                   ) -> bool:
    """A ``Where`` whose condition is no gradient and whose branches are gradients or
    zeros."""
    return kinds[0] != GRADIENT and all(
        k == GRADIENT or (n in consts and not np.any(consts[n]))
        for n, k in zip(names[1:], kinds[1:], strict=True))


def _slice_back(node: onnx.NodeProto, names: list[str], consts: dict[str, np.ndarray],
                kind: dict[str, str], shaped: dict[str, set[str]], step: tuple[Any, ...]
                ) -> tuple[int, list[tuple[int, int]], set[str], list[int]] | None:
    """A ``Slice`` of a padded ``ConvTranspose`` result over the two spatial axes: constant
    starts, step 1, ends from the shape of the tensors of its grid. Returns (the result's
    scale, its reach, the tensors whose shape gave the ends, its shift: the transposed
    convolution's element i lands at ``i - shift`` of the result)."""
    if len(names) < 4 or names[1] not in consts or kind.get(names[2]) != SIZE:
        return None
    axes = [int(a) % 4 for a in consts.get(names[3], [])]
    steps = consts.get(names[4]) if len(names) > 4 else np.ones(2)
    if axes != [2, 3] or steps is None or np.any(np.asarray(steps) != 1):
        return None
    scale, stride, extent, offset, bounds, _ = step
    shift = [int(v) + o for v, o in zip(consts[names[1]], offset, strict=True)]
    return scale * stride, landed(stride, bounds, extent, shift), shaped[names[2]], shift
