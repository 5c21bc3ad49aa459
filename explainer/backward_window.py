"""A detection's backward on the window of the maps its seed reaches.

The seed of one detection is one position of one level's map. A detection head's backward
from there is convolutions, pointwise products and channel concatenations (and the transposed
strided convolutions that carry the gradient back to finer levels): the gradients are zero
farther from the seed than the kernels reach. :func:`window_backward` finds how far (per
level, from the graph) and :meth:`Window.run` runs the backward on that window of the seed and
of every forward tensor it reads (cropped; the convolutions' zero padding stands for the zeros
outside), then puts the gradients into zeros: the same values at a fraction of the cost
(YOLOv8n at 640: a stride-8 detection's backward 0.8 ms instead of 10.5 ms).

The analysis (:func:`explainer.window_reach.reach`) accepts only what keeps the crop exact and
refuses (None: the dense backward runs) anything else:

* a tensor carrying the gradient (it depends on the seed) goes through linear,
  zero-preserving ops only: ``Mul``/``Div`` by anything, sums of gradients, a size-preserving
  stride-1 ``Conv``, ``Split``/``Concat`` over channels, and a stride-s ``ConvTranspose``
  followed by ``Pad`` and ``Slice`` (the backward of a strided convolution): its result lies
  on a grid s times finer, the window scaled alike;
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
from .window_reach import reach

__all__ = ["Window", "window_backward"]

@dataclass(frozen=True)
class Window:
    """A part backward run on a window of its maps (:func:`window_backward`).

    Attributes:
        model: the backward from :attr:`start` and the forward tensors :attr:`scales` names
            to the gradients, spatial sizes left free.
        start: the seed's part reshaped to the level's map [N, C, H, W], the model's first
            input.
        source: the forward tensor whose shape :attr:`start` has, or the constant shape the
            part is reshaped to (ONNX ``Reshape``: 0 keeps a dim, -1 is inferred).
        radius: how far the gradients reach from the seed's nonzero positions, per spatial
            axis, in positions of the seed's map.
        scales: each forward input -> how many times finer its grid is than the seed's map.
        outputs: each gradient -> its grid's scale.
    """

    model: onnx.ModelProto
    start: str
    source: str | tuple[int, ...]
    radius: tuple[int, int]
    scales: dict[str, int]
    outputs: dict[str, int]

    #: a window no smaller than this share of the seed's map runs the dense backward instead
    DENSE_SHARE = 0.5

    def run(self, session: Any, seed_part: np.ndarray, forward: dict[str, Any],
            out: dict[str, np.ndarray]) -> bool:
        """Write the gradients (:attr:`outputs`) for the part's slice of the seed rows into
        ``out`` (zeros of their full shapes; the window's region is set, no full-size copy);
        False, leaving ``out`` as it was, where the window would not pay (the seed spreads
        over the map) or a tensor's size does not follow its scale."""
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
        box = [(max(int(found[0]) - r, 0), min(int(found[-1]) + r + 1, n))
               for found, r, n in zip((rows, cols), self.radius, size, strict=True)]
        if (box[0][1] - box[0][0]) * (box[1][1] - box[1][0]) >= self.DENSE_SHARE * np.prod(size):
            return False

        def region(scale: int) -> tuple[Any, ...]:
            return (Ellipsis, *(slice(scale * lo, scale * hi) for lo, hi in box))

        def crop(value: Any, scale: int) -> Any:
            tail = np.shape(value)[-2:]
            if np.ndim(value) != 4 or any(-(-t // scale) != n for t, n in zip(tail, size)):
                return None
            return np.ascontiguousarray(value[region(scale)])

        feeds = {self.start: crop(start, 1)}
        for name, scale in self.scales.items():
            feeds[name] = crop(forward[name], scale)
            if feeds[name] is None:
                return False
        names = list(self.outputs)
        try:
            values = session.run(names, feeds)
        except (Fail, InvalidArgument, RuntimeException):
            return False  # sizes the graph cannot take on a window: the dense backward runs
        targets = [out[name][region(self.outputs[name])] for name in names]  # views of out
        if any(t.shape != v.shape for t, v in zip(targets, values, strict=True)):
            return False
        for target, value in zip(targets, values, strict=True):
            target[...] = value
        return True


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
    radius, scales, out_scales = found
    types = {v.name: v for v in model.graph.input}
    graph = sub.graph
    free = [helper.make_tensor_value_info(start, _elem_type(model, part_gradient), None),
            *(_free(types[name]) for name in scales)]
    result = helper.make_model(
        helper.make_graph(list(graph.node), graph.name, free,
                          [_free(v) for v in graph.output], list(graph.initializer)),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    result.functions.extend(model.functions)
    return Window(result, start, source, radius, scales, out_scales)


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
