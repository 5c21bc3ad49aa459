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
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    kind = {start: GRADIENT, **dict.fromkeys(read, FORWARD)}
    found = Reach((0, 0), {}, {}, kind)
    dropped = found.dropped
    grid = _Scales()
    grid.join([start], 1)
    # a gradient's nonzero positions lie within [s*lo - before, s*(hi + 1) - 1 + after] on its
    # grid of scale s, per axis, [lo, hi] the seed's on its own map: (before, after) per axis
    reach: dict[str, list[tuple[int, int]]] = {start: [(0, 0), (0, 0)]}
    shaped: dict[str, set[str]] = {}  # a SIZE tensor -> the tensors whose shapes it reads
    pending: dict[str, tuple[Any, ...]] = {}  # a ConvTranspose's result before Pad/Slice
    for node in model.graph.node:
        names = [i for i in node.input if i]
        kinds = [kind.get(i) for i in names]
        if not any(kinds):
            continue  # weights and constants
        op, out = node.op_type, [o for o in node.output if o]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "Shape" and kinds[0] in (GRADIENT, FORWARD):
            if "start" in attrs or "end" in attrs:
                return None
            kind[out[0]], shaped[out[0]] = SIZE, {names[0]}
            dropped.update(out)
        elif SIZE in kinds and PENDING not in kinds:
            if op not in _SHAPE_OPS or any(k not in (SIZE, None) for k in kinds):
                return None
            kind.update(dict.fromkeys(out, SIZE))
            dropped.update(out)
            shaped[out[0]] = set().union(*(shaped[i] for i in names if i in shaped))
        elif PENDING in kinds:
            if op == "Pad" and kinds[0] == PENDING and len(out) == 1:
                pads = _pad_begin(node, names, consts)
                if pads is None:
                    return None
                scale, stride, extent, offset, bounds, raw = pending[names[0]]
                pending[out[0]] = (scale, stride, extent,
                                   [o - p for o, p in zip(offset, pads, strict=True)], bounds,
                                   raw)
                kind[out[0]] = PENDING
                dropped.add(out[0])
            elif op == "Slice" and kinds[0] == PENDING:
                landed = _slice_back(node, names, consts, kind, shaped, pending[names[0]])
                if landed is None:
                    return None
                scale, bounds, to_shape, shift = landed
                if not grid.join([out[0], *to_shape], scale):
                    return None
                kind[out[0]], reach[out[0]] = GRADIENT, bounds
                _, stride, extent, _, _, raw = pending[names[0]]
                found.landed[out[0]] = (raw, stride, extent, shift)
            else:
                return None
        elif op == "ConvTranspose":
            if kinds[0] != GRADIENT or any(kinds[1:]):
                return None
            step = _transposed(attrs, grid.of(names[0]))
            if step is None:
                return None
            scale, stride, extent, begin = step
            if begin is None:  # cut to size by a Pad and a Slice after it
                kind[out[0]], pending[out[0]] = PENDING, (scale, stride, extent, [0, 0],
                                                          reach[names[0]], out[0])
            else:
                grid.join([out[0]], scale * stride)
                kind[out[0]] = GRADIENT
                reach[out[0]] = _landed(stride, reach[names[0]], extent, begin)
                found.landed[out[0]] = (out[0], stride, extent, begin)
        elif op == "Conv":
            grown = _conv_growth(attrs)
            if grown is None or kinds[0] != GRADIENT or any(kinds[1:]):
                return None
            grid.join([names[0], out[0]])
            kind[out[0]] = GRADIENT
            reach[out[0]] = [(b + g, a + g) for (b, a), g in zip(reach[names[0]], grown)]
        elif op in ("Split", "Concat"):
            axis = attrs.get("axis", 0)
            data = names if op == "Concat" else names[:1]
            if axis not in (1, -3) or (op == "Concat" and any(k != GRADIENT for k in kinds)) or (
                    op == "Split" and (kinds[0] != GRADIENT or any(kinds[1:]))):
                return None
            if not grid.join([*data, *out]):
                return None
            kind.update(dict.fromkeys(out, GRADIENT))
            bounds = union([reach[i] for i in data])
            reach.update(dict.fromkeys(out, bounds))
        elif op in _POINTWISE:
            spatial = [i for i, k in zip(names, kinds, strict=True) if k]
            if any(not k and not _broadcast(consts.get(i)) for i, k in zip(names, kinds)):
                return None
            gradients = [i for i, k in zip(names, kinds, strict=True) if k == GRADIENT]
            if gradients and not (
                    op in _LINEAR_ANY or (op == "Div" and kinds[0] == GRADIENT
                                          and GRADIENT not in kinds[1:])
                    or (op in _LINEAR_ALL and len(gradients) == len(names))
                    or (op == "Where" and _zero_branches(names, kinds, consts))):
                return None
            if not grid.join([*spatial, *out]):
                return None
            kind.update(dict.fromkeys(out, GRADIENT if gradients else FORWARD))
            if gradients:
                reach.update(dict.fromkeys(out, union([reach[i] for i in gradients])))
        else:
            return None
    if any(kind.get(o) != GRADIENT for o in outputs):
        return None
    if any(grid.of(n) is None for n in [*read, *outputs] if kind.get(n) != SIZE):
        return None
    radius = [0, 0]
    for name, bounds in reach.items():
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
    found.bounds = reach
    found.scale = {n: grid.of(n) for n, k in kind.items() if k in (GRADIENT, FORWARD)}
    return found


def union(bounds: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """The reach (before, after) per axis that covers each of ``bounds``."""
    return [(max(b[axis][0] for b in bounds), max(b[axis][1] for b in bounds))
            for axis in range(2)]


def _broadcast(value: np.ndarray | None) -> bool:
    """Whether a constant is the same at every position of a map [N, C, H, W] it is
    broadcast against (its last two dims are 1, or it has fewer)."""
    return value is not None and value.ndim <= 4 and all(d == 1 for d in value.shape[-2:])


def _zero_branches(names: list[str], kinds: list[str | None], consts: dict[str, np.ndarray]
                   ) -> bool:
    """A ``Where`` whose condition is no gradient and whose branches are gradients or
    zeros."""
    return kinds[0] != GRADIENT and all(
        k == GRADIENT or (n in consts and not np.any(consts[n]))
        for n, k in zip(names[1:], kinds[1:], strict=True))


def _conv_growth(attrs: dict[str, Any]) -> list[int] | None:
    """How far a 2-D stride-1 ``Conv`` that keeps its input's size spreads nonzero positions,
    per side and axis (its larger pad); None for any other Conv."""
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


def _transposed(attrs: dict[str, Any], scale: int | None
                ) -> tuple[int, int, list[int], list[int] | None] | None:
    """A 2-D ``ConvTranspose`` with equal strides s (the backward of a strided convolution):
    (its input's scale, s, the kernel's extent (k-1)*d per axis, its begin pads where its
    output is s times its input's size, or None where it has no pads and a ``Pad`` and a
    ``Slice`` after it cut it to size); None for any other."""
    kernel = list(attrs.get("kernel_shape", []))
    strides = list(attrs.get("strides", [1, 1]))
    auto = attrs.get("auto_pad", b"NOTSET")
    if (scale is None or len(kernel) != 2 or len(set(strides)) != 1 or "output_shape" in attrs
            or (auto.decode() if isinstance(auto, bytes) else auto) != "NOTSET"):
        return None
    stride = strides[0]
    extent = [d * (k - 1) for d, k in zip(attrs.get("dilations", [1, 1]), kernel, strict=True)]
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    extra = list(attrs.get("output_padding", [0, 0]))
    if all(e + 1 - pads[i] - pads[i + 2] + extra[i] == stride for i, e in enumerate(extent)):
        return scale, stride, extent, pads[:2]
    if any(pads) or any(extra):
        return None
    return scale, stride, extent, None


def _landed(stride: int, bounds: list[tuple[int, int]], extent: list[int], offset: list[int]
            ) -> list[tuple[int, int]]:
    """The reach of a transposed convolution's result, its element i at ``i + offset`` of
    the full transposed convolution (no pads) of a tensor of reach ``bounds``: an input
    position o gives s*o .. s*o + extent."""
    return [(max(stride * before + off, 0), max(stride * after - stride + 1 + e - off, 0))
            for (before, after), e, off in zip(bounds, extent, offset, strict=True)]


def _pad_begin(node: onnx.NodeProto, names: list[str], consts: dict[str, np.ndarray]
               ) -> list[int] | None:
    """The zeros a constant ``Pad`` of a 4-D tensor adds before each spatial axis (none on
    the batch and channel axes); None for any other Pad."""
    mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"),
                b"constant")
    if mode not in (b"constant", "constant") or len(names) < 2 or names[1] not in consts:
        return None
    if len(names) > 2 and (names[2] not in consts or np.any(consts[names[2]])) or len(names) > 3:
        return None
    pads = [int(p) for p in consts[names[1]]]
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None
    return pads[2:4]


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
    return scale * stride, _landed(stride, bounds, extent, shift), shaped[names[2]], shift
