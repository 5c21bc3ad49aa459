"""A detection's backward on the window of the maps its seed reaches.

The seed of one detection is one position of one level's map. A detection head's backward
from there is convolutions, pointwise products and channel concatenations (and the transposed
strided convolutions that carry the gradient back to finer levels): the gradients are zero
farther from the seed than the kernels reach. :func:`window_backward` finds how far, tensor
by tensor (from the graph), and :meth:`Window.run` computes each tensor on its own window
only: a gradient where the seed reaches it (a few positions around the seed on its own map,
more on the finer maps it flows back to), a forward tensor sliced to the window of the
gradient it meets, the convolutions' zero padding standing for the zeros outside. The
gradients are then put into zeros: the same values at a fraction of the cost (YOLOv8n at 640,
one thread, a busy 2-core machine: a stride-32 detection's backward 10 ms, against 16 ms on
one window of the farthest reach for every tensor, 29-31 ms dense).

The analysis (:func:`explainer.window_reach.reach`) accepts only what keeps the crop exact and
refuses (None: the dense backward runs) anything else:

* a tensor carrying the gradient (it depends on the seed) goes through linear,
  zero-preserving ops only: ``Mul``/``Div`` by anything, sums of gradients, a size-preserving
  stride-1 ``Conv``, ``Split``/``Concat`` over channels, and a stride-s ``ConvTranspose``
  followed by ``Pad`` and ``Slice`` (the backward of a strided convolution): its result lies
  on a grid s times finer (computed whole for its input's window, then sliced to its own);
* a forward tensor (read from the head's forward) goes through pointwise ops only;
* a shape (``Shape`` of a cropped tensor) may only give a ``Slice`` its ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from .bundle import extract, node_inputs
from .window_reach import FORWARD, GRADIENT, Reach, reach, union

__all__ = ["Window", "window_backward"]

#: where a tensor of a window lies on its grid, per run: ``("box", scale, (before_h, after_h,
#: before_w, after_w))`` around the seed's positions (clipped to the map), ``("full", scale)``
#: the whole map, or ``("cover", scale, input, stride, extent, shift)`` a transposed
#: convolution's whole result for its input's place ``input``
Place = tuple[Any, ...]


@dataclass(frozen=True)
class Window:
    """A part backward run on a window of its maps (:func:`window_backward`).

    Every tensor of the backward is computed on its own window: where the seed's gradient
    can reach it (:class:`~explainer.window_reach.Reach`), clipped to the map. Between
    tensors of different windows the model moves a tensor with bounds given per run: a
    ``Pad`` for a gradient (the zeros a convolution spreads it into), a ``Slice`` for a
    forward tensor or a transposed convolution's whole result (the part a window reads).

    Attributes:
        model: the backward from :attr:`start`, the forward tensors :attr:`scales` names and
            the bounds of :attr:`moves` to the gradients, spatial sizes left free.
        start: the seed's part reshaped to the level's map [N, C, H, W], the model's first
            input.
        source: the forward tensor whose shape :attr:`start` has, or the constant shape the
            part is reshaped to (ONNX ``Reshape``: 0 keeps a dim, -1 is inferred).
        radius: how far the gradients reach from the seed's nonzero positions, per spatial
            axis, in positions of the seed's map (the farthest tensor's reach).
        scales: each forward input -> how many times finer its grid is than the seed's map.
        outputs: each gradient -> its grid's scale.
        moves: each bounds input of the model -> (``"Pad"`` or ``"Slice"``, the place of
            the tensor it moves, the place the result takes); a Pad's input is its pads
            [8], a Slice's are ``name + "/starts"`` and ``name + "/ends"`` [2].
        placed: each gradient -> where its values lie (:data:`Place`).
    """

    model: onnx.ModelProto
    start: str
    source: str | tuple[int, ...]
    radius: tuple[int, int]
    scales: dict[str, int]
    outputs: dict[str, int]
    moves: dict[str, tuple[str, Place, Place]]
    placed: dict[str, Place]

    #: a window no smaller than this share of the seed's map runs the dense backward instead
    DENSE_SHARE = 0.5
    #: the place of :attr:`start`: the seed's positions
    SEED: Place = ("box", 1, (0, 0, 0, 0))

    def run(self, session: Any, seed_part: np.ndarray, forward: dict[str, Any],
            out: dict[str, np.ndarray], regions: dict[str, tuple[Any, ...]] | None = None
            ) -> bool:
        """Write the gradients (:attr:`outputs`) for the part's slice of the seed rows into
        ``out`` (zeros of their full shapes; the windows' regions are set, no full-size
        copy), and each one's region (its index in ``out[name]``, zero outside) into
        ``regions`` where given; False, leaving both as they were, where the window would not
        pay (the seed spreads over the map) or a tensor's size does not follow its scale."""
        if isinstance(self.source, str):
            start = np.reshape(seed_part, np.shape(forward[self.source]))
        else:
            start = np.reshape(seed_part, [d or seed_part.shape[i]
                                           for i, d in enumerate(self.source)])
        if start.ndim != 4:
            return False
        size = start.shape[2:]
        live = start.any(axis=(0, 1))
        rows, cols = np.flatnonzero(live.any(axis=1)), np.flatnonzero(live.any(axis=0))
        if not len(rows):
            return False
        seed = [(int(found[0]), int(found[-1]) + 1) for found in (rows, cols)]
        if np.prod([min(hi + r, n) - max(lo - r, 0) for (lo, hi), r, n in zip(
                seed, self.radius, size, strict=True)]) >= self.DENSE_SHARE * np.prod(size):
            return False
        grids: dict[int, tuple[int, ...]] = {1: tuple(size)}
        for name, scale in [*self.scales.items(), *self.outputs.items()]:
            tail = tuple(np.shape(forward[name] if name in self.scales else out[name])[-2:])
            if len(tail) != 2 or any(-(-t // scale) != n for t, n in zip(tail, size)) or (
                    grids.setdefault(scale, tail) != tail):
                return False
        places = _Places(seed, grids)
        feeds = {self.start: np.ascontiguousarray(start[places.region(self.SEED)])}
        for name in self.scales:
            feeds[name] = forward[name]
        for name, (op, have, want) in self.moves.items():
            pads = places.pads(have, want)
            if op == "Pad" and pads.min() < 0 or op == "Slice" and pads.max() > 0:
                return False  # not where the graph analysis put it (cannot happen)
            if op == "Pad":
                feeds[name] = pads
            else:
                feeds[name + "/starts"] = -pads[2:4]
                feeds[name + "/ends"] = np.array([hi - lo for lo, hi in places.bounds(want)],
                                                 np.int64) - pads[2:4]
        names = list(self.outputs)
        try:
            values = session.run(names, feeds)
        except (Fail, InvalidArgument, RuntimeException):
            return False  # sizes the graph cannot take on a window: the dense backward runs
        where = [places.region(self.placed[name]) for name in names]
        targets = [out[name][region] for name, region in zip(names, where)]  # views
        if any(t.shape != v.shape for t, v in zip(targets, values, strict=True)):
            return False
        for target, value in zip(targets, values, strict=True):
            target[...] = value
        if regions is not None:
            regions.update(zip(names, where))
        return True


class _Places:
    """Where each :data:`Place` lies for one run: the seed's positions [lo, hi) per axis on
    its map, and each grid scale's map size."""

    def __init__(self, seed: list[tuple[int, int]], grids: dict[int, tuple[int, ...]]) -> None:
        self.seed, self.grids = seed, grids
        self._found: dict[Place, list[tuple[int, int]]] = {}

    def bounds(self, place: Place) -> list[tuple[int, int]]:
        """[begin, end) per spatial axis of ``place`` on its grid (a transposed
        convolution's result may reach past the map: its ``Pad`` crops it)."""
        if place not in self._found:
            kind, scale = place[:2]
            if kind == "full":
                found = [(0, n) for n in self.grids[scale]]
            elif kind == "box":
                found = [(max(scale * lo - before, 0), min(scale * hi + after, n))
                         for (lo, hi), before, after, n in zip(
                             self.seed, place[2][::2], place[2][1::2], self.grids[scale],
                             strict=True)]
            else:  # cover: the whole transposed convolution of its input's place
                _, _, source, stride, extent, shift = place
                found = [(stride * lo - s, stride * (hi - lo - 1) + e + 1 + stride * lo - s)
                         for (lo, hi), e, s in zip(self.bounds(source), extent, shift,
                                                   strict=True)]
            self._found[place] = found
        return self._found[place]

    def region(self, place: Place) -> tuple[Any, ...]:
        """The index of ``place`` in a full map [..., H, W]."""
        return (Ellipsis, *(slice(lo, hi) for lo, hi in self.bounds(place)))

    def pads(self, have: Place, want: Place) -> np.ndarray:
        """ONNX ``Pad`` pads [8] taking a tensor from place ``have`` to place ``want``."""
        (h0, h1), (w0, w1) = self.bounds(have)
        (t0, t1), (u0, u1) = self.bounds(want)
        return np.array([0, 0, h0 - t0, w0 - u0, 0, 0, t1 - h1, u1 - w1], np.int64)


def window_backward(model: onnx.ModelProto, part_gradient: str, outputs: list[str]
                    ) -> Window | None:
    """The :class:`Window` of a part backward ``model`` whose part's seed is the tensor
    ``part_gradient`` (a :class:`~explainer.backward.Parts` gradient) and whose gradients are
    ``outputs``: found where the backward reshapes that tensor to a level's map and every node
    from there keeps a crop exact (see the module's docstring); None otherwise."""
    reshape = next((n for n in model.graph.node
                    if n.op_type == "Reshape" and n.input[0] == part_gradient), None)
    if reshape is None or any(a.name == "allowzero" and a.i for a in reshape.attribute):
        return None
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 11:
        return None  # Pad takes its pads as an input from opset 11
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
    found = reach(sub, start, read, outputs)
    if found is None:
        return None
    if not {found.scale[n] for n in found.bounds} <= {1, *found.scales.values(),
                                                       *found.outputs.values()}:
        return None  # a grid whose size no input or output gives
    windowed = _WindowGraph(list(sub.graph.node), found, start)
    for node in windowed.nodes:
        windowed.add(node)
    nodes, moves = windowed.result, windowed.moves
    types = {v.name: v for v in model.graph.input}
    graph = sub.graph
    free = [helper.make_tensor_value_info(start, _elem_type(model, part_gradient), None),
            *(_free(types[name]) for name in found.scales),
            *(helper.make_tensor_value_info(f"{name}{end}", onnx.TensorProto.INT64, [n])
              for name, (op, _, _) in moves.items()
              for end, n in ((("", 8),) if op == "Pad" else (("/starts", 2), ("/ends", 2))))]
    needed = {i for n in nodes for i in node_inputs(n)}
    result = helper.make_model(
        helper.make_graph(nodes, graph.name, free, [_free(v) for v in graph.output],
                          [*(t for t in graph.initializer if t.name in needed),
                           numpy_helper.from_array(np.array([2, 3], np.int64), _AXES)]),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    result.functions.extend(model.functions)
    return Window(result, start, source, found.radius, found.scales, found.outputs, moves,
                  {o: windowed.place(o) for o in outputs})


class _WindowGraph:
    """The window model's nodes, built node by node (:meth:`add`): each tensor at its own
    :data:`Place`, moved where a node reads it at another."""

    def __init__(self, nodes: list[onnx.NodeProto], found: Reach, start: str) -> None:
        self.nodes, self.found = nodes, found
        #: each forward tensor computed in the window -> the reach its consumers read
        self.need: dict[str, list[tuple[int, int]]] = {}
        for node in reversed(nodes):
            out = node.output[0] if node.output else ""
            if found.kind.get(out) == GRADIENT:
                wanted = found.bounds[out]
            elif found.kind.get(out) == FORWARD and out in self.need:
                wanted = self.need[out]
            else:
                continue
            for name in node.input:
                if found.kind.get(name) == FORWARD and name not in found.scales:
                    self.need[name] = (union([self.need[name], wanted]) if name in self.need
                                       else wanted)
        self.places: dict[str, Place] = {start: Window.SEED}
        self.moves: dict[str, tuple[str, Place, Place]] = {}
        self.moved: dict[tuple[str, Place], str] = {}
        self.result: list[onnx.NodeProto] = []

    def place(self, name: str) -> Place:
        """Where tensor ``name`` of the window lies: a gradient where it reaches, a forward
        input whole, a forward tensor computed in the window where its consumers need it."""
        if name not in self.places:
            found = self.found
            scale = found.scale[name]
            if name in found.scales:
                self.places[name] = ("full", scale)
            else:
                bounds = (found.bounds[name] if found.kind.get(name) == GRADIENT
                          else self.need[name])
                self.places[name] = ("box", scale, tuple(v for axis in bounds for v in axis))
        return self.places[name]

    def moved_to(self, name: str, want: Place) -> str:
        """``name`` at place ``want``, once per place: a gradient padded with zeros, a
        forward tensor or a transposed convolution's whole result sliced."""
        have = self.place(name)
        if have == want:
            return name
        if (name, want) not in self.moved:
            gradient = have[0] == "box" and self.found.kind.get(name) == GRADIENT
            op = "Pad" if gradient else "Slice"
            key = next((k for k, v in self.moves.items() if v == (op, have, want)),
                       f"window/bounds{len(self.moves)}")
            self.moves[key] = (op, have, want)
            self.moved[(name, want)] = out = f"{name}/window{len(self.moved)}"
            inputs = [name, key] if gradient else [name, f"{key}/starts", f"{key}/ends", _AXES]
            self.result.append(helper.make_node(op, inputs, [out], name=out))
        return self.moved[(name, want)]

    def add(self, node: onnx.NodeProto) -> None:
        """``node`` in the window model: dropped (sizes, the ``Pad`` cutting a transposed
        convolution to size, forward tensors no gradient reads), kept, or kept with its
        inputs moved to its output's place."""
        found = self.found
        outs = [o for o in node.output if o]
        kinds = [found.kind.get(i) for i in node.input]
        if outs and all(o in found.dropped or (found.kind.get(o) == FORWARD
                                               and o not in self.need) for o in outs):
            return
        landed = found.landed.get(outs[0]) if outs else None
        if not any(kinds) or node.op_type == "Split" or (
                node.op_type == "ConvTranspose" and landed is None):
            self.result.append(node)  # weights; a split or a transposed convolution in place
        elif node.op_type == "Slice" and landed is not None:  # cuts a transposed convolution
            self._land(landed[0], outs[0], landed)
        elif node.op_type == "ConvTranspose":  # padded to the map's size: computed whole
            whole = onnx.NodeProto()
            whole.CopyFrom(node)
            del whole.attribute[:]
            whole.attribute.extend(a for a in node.attribute
                                   if a.name not in ("pads", "output_padding"))
            whole.output[0] = f"{outs[0]}/whole"
            self.result.append(whole)
            self._land(whole.output[0], outs[0], landed)
        else:
            want = self.place(outs[0])
            moved = onnx.NodeProto()
            moved.CopyFrom(node)
            for i, (name, k) in enumerate(zip(node.input, kinds, strict=True)):
                if k in (GRADIENT, FORWARD) and (i == 0 or node.op_type != "Conv"):
                    moved.input[i] = self.moved_to(name, want)
            self.result.append(moved)

    def _land(self, whole: str, out: str, landed: tuple[str, int, list[int], list[int]]
              ) -> None:
        """``out`` as the slice of a transposed convolution's whole result ``whole`` at its
        own place (``landed``: :attr:`Reach.landed`)."""
        raw, stride, extent, shift = landed
        source = next(n.input[0] for n in self.nodes if raw in n.output)
        self.places[whole] = ("cover", self.place(out)[1], self.place(source), stride,
                              tuple(extent), tuple(shift))
        self.result.append(helper.make_node("Identity", [self.moved_to(whole, self.place(out))],
                                            [out], name=out))


#: the spatial axes a window's ``Slice`` cuts
_AXES = "window/axes"


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
    """The element type of the graph input (the seed) that the ``Split`` giving ``name``
    reads; float where it cannot be told."""
    node = next((n for n in model.graph.node if name in n.output), None)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
    return (node is not None and types.get(node.input[0])) or onnx.TensorProto.FLOAT


def _free(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``value`` with its shape left free (a window's size changes from run to run)."""
    elem = value.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
    return helper.make_tensor_value_info(value.name, elem, None)
