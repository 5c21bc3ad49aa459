"""Where a deployed model's head differentiates and where it is cut: a detector's explained
tensor and head inputs, a segmenter's or text recognizer's scores before their activation and
its automatic targets, and the nodes the export adds for them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import onnx
from onnx import helper

from ..graph import Graph

__all__ = ["add_dense_explained", "add_score_concat", "dense_targets", "detection_explained",
           "format_outputs", "head_inputs"]

log = logging.getLogger(__name__)

_PASS_THROUGH = ("Identity", "Cast")
#: ops between a float map and the quantized op that reads it
_QUANTIZERS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
#: ops that mix positions or channels: the head's layers, not a split of its predictions
_MIXING = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def format_outputs(fmt: dict[str, Any]) -> list[str]:
    """The model outputs a format decodes, sorted."""
    names: set[str] = set()
    for value in fmt["outputs"].values():
        names.update([value] if isinstance(value, str) else value)
    return sorted(names)


def add_score_concat(model: onnx.ModelProto, fmt: dict[str, Any]) -> None:
    """For ``picodet``: a ``Concat`` of the per-stride score outputs over the anchors (in
    place), the one tensor the head differentiates (``fmt["scores_tensor"]``)."""
    if fmt["name"] != "picodet":
        return
    taken = {n for node in model.graph.node for n in [*node.input, *node.output]}
    name = "onnxcam_scores"
    while name in taken:
        name += "_"
    model.graph.node.append(helper.make_node("Concat", list(fmt["outputs"]["scores"]), [name],
                                             axis=1, name=f"{name}_concat"))
    fmt["scores_tensor"] = name


# --- where the head differentiates and where it is cut ------------------------------------------
def detection_explained(g: Graph, fmt: dict[str, Any]) -> str:
    """The tensor the head differentiates: the YOLOv8 layout's class logits before the
    sigmoid where the graph has them (``Concat(boxes, Sigmoid(logits))``), else the output
    that carries the scores. Sets ``fmt["explained"]`` to ``"logits"`` or
    ``"probabilities"``."""
    outputs = fmt["outputs"]
    if fmt["name"] == "boxes_scores_labels":
        fmt["explained"] = "probabilities"
        return outputs["scores"]
    if fmt["name"] == "picodet":
        fmt["explained"] = "probabilities"
        return fmt["scores_tensor"]
    out = outputs["predictions"]
    fmt["explained"] = "probabilities"
    if fmt["name"] != "yolov8":
        return out
    index = g.producer.get(out)
    while index is not None and g.nodes[index].op_type in _PASS_THROUGH:
        index = g.producer.get(g.nodes[index].input[0])
    if index is None or g.nodes[index].op_type != "Concat":
        return out
    last = g.nodes[index].input[-1]
    p = g.producer.get(last)
    if p is None or g.nodes[p].op_type != "Sigmoid":
        return out
    logits = g.nodes[p].input[0]
    shape = g.shape(logits)
    if shape is None or len(shape) != 3 or (isinstance(shape[1], int) and fmt.get("classes")
                                            and shape[1] != fmt["classes"]):
        return out
    fmt["explained"] = "logits"
    log.info("explaining the class logits %r before the sigmoid of %r", logits, out)
    return logits


def head_inputs(g: Graph, source: str, explained: str | Sequence[str],
                candidates: Sequence[str]) -> list[str]:
    """The tensors where a detector's features enter its head, in topological order.

    Exporters name nodes by module scope (torch.onnx: ``/model.22/cv3.0/...``,
    ``/head/classification_head/...``): the head is the scope of the last scoped node on the
    path to ``explained``, and its inputs are the candidate feature maps its nodes read from
    outside it (one per stride). Without scopes, each stride level of the head ends where its
    feature maps are flattened into the output (its *exits*); the level's input is the latest
    feature map of that size that every path from the image to those exits goes through (the
    neck output, or the stem that both the box and the class branches read).

    Args:
        g: the shape-inferred graph.
        source: the image input.
        explained: the tensor the head differentiates, or it and the outputs it decodes (the
            head computes them all).
        candidates: rank-4 spatial tensors on the path (topological order) with a known layout.
    """
    ends = [explained] if isinstance(explained, str) else list(explained)
    nodes = sorted(set().union(*(g.path(source, e)[0] for e in ends)))
    order = {t: k for k, t in enumerate(candidates)}
    scoped = _scope_inputs(g, nodes, set(candidates))
    if scoped:
        return sorted(scoped, key=order.__getitem__)
    on_path = set(nodes)
    maps = [o for i in nodes for o in g.nodes[i].output if o and g.rank(o) == 4]
    position = {t: k for k, t in enumerate(maps)}
    size = {t: tuple(g.shape(t) or ())[2:] for t in maps}
    exits: dict[tuple[Any, ...], list[str]] = {}
    for t in maps:
        outs = [o for i in g.consumers.get(t, []) if i in on_path for o in g.nodes[i].output]
        if any(g.rank(o) not in (None, 4) for o in outs):
            exits.setdefault(size[t], []).append(t)
    chains = {}  # each level's dominators, in topological order
    for level, ends in exits.items():
        last = max(position[e] for e in ends)
        same = [t for t in candidates if size.get(t) == level and t not in ends
                and position[t] < last]
        chain = [t for t in same if _dominates(g, source, t, ends, on_path)]
        if chain:
            chains[level] = chain
    predicting = {level for level, chain in chains.items()
                  if _is_prediction(g, chain[-1], on_path)}
    picked = (_neck_outputs(g, chains, exits, on_path, predicting) if predicting
              else [chain[-1] for chain in chains.values()])
    return sorted(set(picked), key=order.__getitem__)


def _is_prediction(g: Graph, tensor: str, on_path: set[int]) -> bool:
    """Whether ``tensor`` is a convolution's output that reaches the head's outputs through no
    other convolution: the predictions of a head whose last convolution computes both the
    scores and the boxes (PicoDet, NanoDet: its channels split into the two)."""
    p = g.producer.get(tensor)
    if p is None or g.nodes[p].op_type != "Conv":
        return False
    stack, seen = [tensor], {tensor}
    while stack:
        for i in g.consumers.get(stack.pop(), []):
            if i not in on_path:
                continue
            if g.nodes[i].op_type in _MIXING:
                return False
            fresh = [o for o in g.nodes[i].output if o and o not in seen]
            seen.update(fresh)
            stack.extend(fresh)
    return True


def _neck_outputs(g: Graph, chains: dict[Any, list[str]], exits: dict[Any, list[str]],
                  on_path: set[int], predicting: set[Any]) -> list[str]:
    """Where a head whose last convolution predicts (:func:`_is_prediction`, at the levels
    ``predicting``; the others keep their last dominator) takes its features: the neck's
    output at each such level, the last of the level's dominators that the other levels also
    read (a PAN passes it on to the next stride); a level no other reads (the coarsest) starts
    as many tensors before its exits as the others' heads are long (the head applies the same
    layers at every stride). Without either, the input of the last convolution."""
    towers, found = [], {}
    for level, chain in chains.items():
        others = [e for other, ends in exits.items() if other != level for e in ends]
        read = _ancestors(g, others, on_path)
        shared = [k for k, t in enumerate(chain) if t in read]
        if shared:
            found[level] = chain[shared[-1]]
            towers.append(len(chain) - 1 - shared[-1])
    picked = []
    for level, chain in chains.items():
        if level not in predicting:
            picked.append(chain[-1])
        elif level in found:
            picked.append(found[level])
        elif towers and len(set(towers)) == 1 and towers[0] < len(chain):
            picked.append(chain[len(chain) - 1 - towers[0]])
        else:
            conv = g.nodes[g.producer[chain[-1]]]
            picked.append(conv.input[0] if conv.input[0] in chain else chain[-1])
    return picked


def _ancestors(g: Graph, tensors: list[str], on_path: set[int]) -> set[str]:
    """The tensors that the path's nodes compute ``tensors`` from."""
    found, stack = set(tensors), list(tensors)
    while stack:
        p = g.producer.get(stack.pop())
        if p is None or p not in on_path:
            continue
        fresh = [x for x in g.nodes[p].input if x and x not in found]
        found.update(fresh)
        stack.extend(fresh)
    return found


def _scope(name: str, depth: int = 0) -> str | None:
    """The module scope of a node name below ``depth`` wrapping scopes (``/model.22/cv3.0/Conv``
    -> ``model.22``; at depth 1, ``/model/classifier/0/Conv`` -> ``model/classifier``)."""
    parts = [p for p in name.split("/") if p]
    return "/".join(parts[: depth + 1]) if len(parts) >= depth + 2 else None


def _wrapping_depth(names: list[str]) -> int:
    """How many leading scopes every scoped node name shares (a wrapper module around the
    model, e.g. ``/model/...`` for everything of a ``forward`` that calls ``self.model``)."""
    scoped = [[p for p in n.split("/") if p][:-1] for n in names if n.count("/") >= 2]
    depth = 0
    while scoped and all(len(parts) > depth for parts in scoped) and len(
            {parts[depth] for parts in scoped}) == 1 and any(len(p) > depth + 1 for p in scoped):
        depth += 1
    return depth


def _scope_inputs(g: Graph, nodes: list[int], candidates: set[str]) -> list[str]:
    """Candidates read by the head's scope from outside it (see :func:`head_inputs`)."""
    depth = _wrapping_depth([g.nodes[i].name for i in nodes])
    head = next((_scope(g.nodes[i].name, depth) for i in reversed(nodes)
                 if _scope(g.nodes[i].name, depth)), None)
    if head is None:
        return []
    inside = {i for i in nodes if _scope(g.nodes[i].name, depth) == head}
    found = []
    for i in sorted(inside):
        for t in g.nodes[i].input:
            p = g.producer.get(t)
            while p is not None and p not in inside and g.nodes[p].op_type in _QUANTIZERS:
                t = g.nodes[p].input[0]  # the float map a quantizer outside the scope reads
                p = g.producer.get(t)
            if t in candidates and t not in found and (p is None or p not in inside):
                found.append(t)
    return found


def _dominates(g: Graph, source: str, tensor: str, ends: list[str], on_path: set[int]) -> bool:
    """Whether every path of the path's nodes from ``source`` to ``ends`` goes through
    ``tensor`` (none of them is reached once ``tensor`` is removed)."""
    reached = {source}
    for i in sorted(on_path):
        node = g.nodes[i]
        if any(x in reached for x in node.input if x and x != tensor):
            reached.update(o for o in node.output if o and o != tensor)
    return not any(e in reached for e in ends)


# --- segmenters and text recognizers -------------------------------------------------------------
def _activation_input(producer: dict[str, onnx.NodeProto], name: str, rank: int, axis: int
                      ) -> tuple[str, str] | None:
    """(the scores before a final Sigmoid, or a Softmax/LogSoftmax over ``axis``; the
    activation) of output ``name``, through pass-through ops and the ``Flatten`` / ``Softmax``
    / ``Reshape`` of onnx's version converter; None when the output has no such activation."""
    node = producer.get(name)
    while node is not None and node.op_type in ("Identity", "Cast"):
        node = producer.get(node.input[0])
    if node is None:
        return None
    if node.op_type == "Sigmoid":
        return node.input[0], "sigmoid"
    if node.op_type == "Reshape":  # Reshape(Softmax(Flatten(x, axis=k))): softmax over x's
        inner = producer.get(node.input[0])  # axes k.. (one axis when k == rank - 1)
        flat = producer.get(inner.input[0]) if inner is not None else None
        if (inner is not None and inner.op_type in ("Softmax", "LogSoftmax") and flat is not None
                and flat.op_type == "Flatten" and axis == rank - 1
                and _attr(flat, "axis", 1) % rank == rank - 1):
            return flat.input[0], "softmax"
        return None
    if node.op_type in ("Softmax", "LogSoftmax") and _attr(node, "axis", -1) % rank == axis:
        return node.input[0], "softmax"
    return None


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                default)


def add_dense_explained(model: onnx.ModelProto, task: str, fmt: dict[str, Any]) -> None:
    """For a segmenter or text recognizer (in place, before shape inference): find the tensor
    the head differentiates (the scores before the output's activation where the graph has
    them, else the output) and, for a ``[T, N, V]`` output, add a ``Transpose`` to ``[N, T,
    V]``. Sets ``fmt["tensor"]``, ``fmt["explained"]`` (``"logits"``/``"probabilities"``),
    ``fmt["activation"]`` and ``fmt["axis"]`` (the class axis of one image's tensor)."""
    out = fmt["outputs"]["masks" if task == "segment" else "logits"]
    rank, axis = (4, 1) if task == "segment" else (3, 2)
    producer = {o: node for node in model.graph.node for o in node.output}
    found = _activation_input(producer, out, rank, axis)
    tensor = out
    if found is not None:
        tensor, activation = found
        fmt.update(explained="logits", activation=activation)
        log.info("explaining the scores %r before the %s of %r", tensor, activation, out)
    if fmt.get("layout") == "TNV":
        taken = {n for node in model.graph.node for n in [*node.input, *node.output]}
        name = tensor + "_ntv"
        while name in taken:
            name += "_"
        model.graph.node.append(helper.make_node("Transpose", [tensor], [name], perm=[1, 0, 2],
                                                 name=name + "_transpose"))
        tensor = name
    fmt["tensor"], fmt["axis"] = tensor, (0 if task == "segment" else -1)


def dense_targets(g: Graph, source: str, explained: str, candidates: Sequence[str]
                  ) -> list[str]:
    """A segmenter's auto targets: where its features enter the decoder. Module scopes
    decide where the exporter wrote them (see :func:`head_inputs`: torchvision's
    ``classifier``, Segformer's ``decode_head``); otherwise the output of the last node that
    merges branches (a Concat or Add every path to the output goes through: an FPN's fused
    map, an ASPP, a residual stage), moved past the shape-keeping ops after it (its ReLU)."""
    nodes = sorted(g.path(source, explained)[0])
    order = {t: k for k, t in enumerate(candidates)}
    scoped = _scope_inputs(g, nodes, set(candidates))
    if scoped:
        return sorted(scoped, key=order.__getitem__)
    on_path = set(nodes)
    reached = {o for i in nodes for o in g.nodes[i].output}
    dominators = [t for t in candidates if _dominates(g, source, t, [explained], on_path)]
    merges = [t for t in dominators if g.producer.get(t) is not None and sum(
        1 for x in g.nodes[g.producer[t]].input if x in reached or x == source) >= 2
        and g.nodes[g.producer[t]].op_type in ("Concat", "Add", "Sum")]
    if not merges:
        return []
    chosen = merges[-1]
    for t in dominators[dominators.index(chosen) + 1:]:
        if g.shape(t) != g.shape(chosen):
            break
        chosen = t
    return [chosen]
