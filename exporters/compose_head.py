"""The head inside the explanation graph: its forward once per image, its backward per target.

:func:`head_copies` splits a bundle's gradient head (the autodiff marks every backward node
``grad/``) into the forward on the B image rows and the backward on the B*K seed rows, tiling
the forward tensors the backward reads (a batched vector-Jacobian product), where shape
inference proves those tensors batch-major; otherwise the whole gradient head runs on B*K rows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import onnx
from onnx import TensorProto, helper

from explainer.bundle import BACKWARD_PREFIX

from .builder import Builder
from .graph import (
    Dim,
    infer_shapes,
    node_inputs,
    prune,
    rename_values,
    shape_skeleton,
    value_shape,
)

__all__ = ["head_copies", "rename_graph", "size_copies", "size_inputs"]


def rename_graph(graph: onnx.GraphProto, rename: Callable[[str], str]) -> None:
    """Rename every tensor and node of ``graph`` (subgraphs included) in place."""
    rename_values(graph, rename, node_names=True)
    for field in (graph.input, graph.output, graph.initializer):
        for item in field:
            item.name = rename(item.name)



#: Ops whose output holds no row of the data, only its shape: a gradient copy recomputes them
#: from the repeated rows (they are cheap), so the sizes they hold are those of B*K rows.
_SHAPE_OPS = frozenset({"Shape", "Size"})
#: Row counts at which the batch-major check infers the head's shapes, the sizes it gives the
#: cut's other symbolic dimensions (distinct primes, so no product of them is a row count),
#: and the prefix of the tensors it probes.
_ROW_COUNTS = (7, 11)
_OTHER_SIZES = (13, 17, 19, 23, 29, 31)
_PROBE = "onnxcam_probe"


def _forward_data(head: onnx.ModelProto, cut: str) -> set[str] | None:
    """The head's forward tensors computed from the rows of ``cut`` (not only from its shape);
    None when a forward node has a subgraph or reads a backward (``grad/``) tensor, where the
    rows cannot be told apart."""
    data = {cut}
    backward = {o for n in head.graph.node if n.name.startswith(BACKWARD_PREFIX)
                for o in n.output}
    for node in head.graph.node:
        if node.name.startswith(BACKWARD_PREFIX):
            continue
        inputs = set(node_inputs(node))
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute) or inputs & backward:
            return None
        if node.op_type not in _SHAPE_OPS and inputs & data:
            data.update(o for o in node.output if o)
    return data


def _leading_dims(head: onnx.ModelProto, cut: str, names: list[str], rows: int
                  ) -> list[Dim]:
    """The first dimension of each of ``names`` (forward tensors of ``head``) that shape
    inference finds for a cut of ``rows`` rows (its other symbolic dimensions made static)."""
    graph = shape_skeleton(head.graph)  # the weights' types only
    probes = [f"{_PROBE}/{i}" for i in range(len(names))]
    graph.node.extend(helper.make_node("Identity", [name], [probe], name=probe)
                      for name, probe in zip(names, probes, strict=True))
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(p, TensorProto.UNDEFINED, None)
                        for p in probes)
    prune(graph, probes)
    del graph.value_info[:]
    sizes = iter(_OTHER_SIZES)
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if axis == 0 and value.name == cut:
                dim.dim_value = rows
            elif not dim.HasField("dim_value"):
                dim.dim_value = next(sizes, 1)
    model = helper.make_model(graph, opset_imports=list(head.opset_import))
    model.ir_version = head.ir_version
    model.functions.extend(head.functions)
    shapes = {v.name: value_shape(v) for v in infer_shapes(model).graph.value_info}
    return [(shapes.get(name) or [None])[0] for name in names]


def _batch_major(head: onnx.ModelProto, cut: str, names: set[str]) -> bool:
    """Whether shape inference proves that each of ``names`` has the cut's rows as its first
    dimension (so K copies of each row, image-major, are what B*K rows would compute): its
    first dimension follows the number of rows at two row counts."""
    if not names:
        return True
    ordered = sorted(names)
    first, second = (_leading_dims(head, cut, ordered, rows) for rows in _ROW_COUNTS)
    return first == [_ROW_COUNTS[0]] * len(ordered) and second == [_ROW_COUNTS[1]] * len(ordered)


def _tile(b: Builder, tensor: str, k: str, out: str) -> None:
    """``out`` = each row of ``tensor`` repeated ``k`` times, image-major ([B*K, ...])."""
    shape = b.op("Shape", tensor)
    batch, rest = b.dims(shape, 0, 1), b.dims(shape, 1, 1 << 30)
    expanded = b.op("Expand", b.op("Unsqueeze", tensor, b.const([1])),
                    b.op("Concat", batch, k, rest, axis=0))
    b.op("Reshape", expanded, b.op("Concat", b.const([-1]), rest, axis=0), out=out)


def _shapes_of_copies(b: Builder, backward: onnx.GraphProto, copies: dict[str, str], k: str
                      ) -> None:
    """Where the backward reads a K-row copy (``copies``: copy -> the B-row tensor it
    repeats) through ``Shape`` and ``Size`` only (a mean's gradient reads the activation's
    shape, not its values), those read its shape [B*K, ...] computed from the original's:
    the copy itself is never made (``prune`` drops it; the activation's copy alone was 3 MB
    at batch 16 on mobilenet_v3_large, K times that for K targets)."""
    for name, original in copies.items():
        readers = [n for n in backward.node if name in node_inputs(n)]
        if not readers or any(n.op_type not in _SHAPE_OPS for n in readers):
            continue
        shape = b.op("Shape", original)
        rows = b.op("Concat", b.op("Mul", b.dims(shape, 0, 1), k), b.dims(shape, 1, 1 << 30),
                    axis=0)
        for node in readers:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            del node.attribute[:]
            if node.op_type == "Size":
                node.op_type = "ReduceProd"
                node.input[:] = [rows]
                node.attribute.append(helper.make_attribute("keepdims", 0))
            else:  # Shape's start and end index the dimensions as Slice's do
                node.op_type = "Slice"
                node.input[:] = [rows, b.const([attrs.get("start", 0)]),
                                 b.const([attrs.get("end", 1 << 62)])]


def _gather_seed_rows(b: Builder, backward: onnx.GraphProto, seeds: str, targets: str) -> None:
    """One-hot seeds: where the backward's one reader of the seeds is ``Gemm(seeds, W)`` (the
    gradient through the last linear layer), replace it by a Gather of the targets' rows of
    W: the same values, without reading all of W for every row."""
    readers = [n for n in backward.node if seeds in node_inputs(n)]
    if len(readers) != 1:
        return
    node = readers[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if (node.op_type != "Gemm" or list(node.input[:1]) != [seeds]
            or any(node.input[2:]) or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0):
        return
    ids = b.op("Reshape", targets, b.const([-1]))
    if attrs.get("transB", 0):  # W is [D, C]: columns, then [B*K, D]
        b.op("Transpose", b.op("Gather", node.input[1], ids, axis=1), perm=[1, 0],
             out=node.output[0])
    else:
        b.op("Gather", node.input[1], ids, axis=0, out=node.output[0])
    backward.node.remove(node)


def _size_nodes(features: onnx.ModelProto, names: list[str], sources: set[str]
                ) -> list[onnx.NodeProto] | None:
    """The features' nodes that compute the cut tensors ``names`` from the shapes of
    ``sources`` (the model input, the activation) and constants alone, in graph order; None
    where one reads another tensor's values, a graph input or a subgraph."""
    producer = {o: n for n in features.graph.node for o in n.output if o}
    constants = {t.name for t in features.graph.initializer}
    needed, seen, used = list(names), set(), set()
    while needed:
        name = needed.pop()
        if name in seen or name in constants or not name:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is None or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                               for a in node.attribute):
            return None
        used.add(id(node))
        if node.op_type == "Shape" and node.input[0] in sources:
            continue
        needed.extend(node.input)
    return [n for n in features.graph.node if id(n) in used]


def size_inputs(features: onnx.ModelProto, manifest: dict[str, Any]) -> str | None:
    """Why the head's cut tensors besides the activation keep the explanation graph from
    running the backward on B*K rows (None: there are none, or each is a size computed from
    the shapes of the model input and the activation, which :func:`size_copies` recomputes
    for B*K rows: e.g. an any-size adaptive pooling's indices)."""
    inputs = manifest["head"]["inputs"]
    if len(inputs) == 1:
        return None
    sources = {manifest["input"]["name"], manifest["target"]["tensor"]}
    if _size_nodes(features, inputs[1:], sources) is None:
        return (f"tensors other than the activation cross the cut ({inputs[1:]}) and are not "
                "sizes computed from the input's shape (the head runs once per target column)")
    return None


def size_copies(b: Builder, features: onnx.ModelProto, manifest: dict[str, Any], rows: str,
                rename: Callable[[str], str]) -> dict[str, str]:
    """Nodes (into ``b``) that recompute the head's size inputs (:func:`size_inputs`) for the
    B*K ``rows`` of the repeated activation: each ``Shape`` of the model input or of the
    activation reads a shape whose batch is the number of rows. Returns head input -> its
    B*K copy; ``rename`` gives the features' names in the composed graph (constants)."""
    inputs = manifest["head"]["inputs"][1:]
    if not inputs:
        return {}
    model_input, activation = manifest["input"]["name"], manifest["target"]["tensor"]
    nodes = _size_nodes(features, inputs, {model_input, activation})
    assert nodes is not None, "size_inputs checks this first"
    made = {o for n in nodes for o in n.output if o}
    copies = {name: b.unique(f"{b.prefix}/rows/{name}") for name in made}
    row_count = b.dims(b.op("Shape", rows), 0, 1)
    for node in nodes:
        if node.op_type == "Shape" and node.input[0] in (model_input, activation):
            rest = b.dims(b.op("Shape", rename(node.input[0])), 1, 1 << 30)
            shape = b.op("Concat", row_count, rest, axis=0)
            attrs = {a.name: a.i for a in node.attribute}
            b.op("Slice", shape, b.const([attrs.get("start", 0)]),
                 b.const([attrs.get("end", 1 << 30)]), out=copies[node.output[0]])
            continue
        twin = copy.deepcopy(node)
        twin.name = b.unique(f"{b.prefix}/rows/{node.name or node.op_type}")
        for i, name in enumerate(twin.input):
            twin.input[i] = copies.get(name) or (rename(name) if name else name)
        for i, name in enumerate(twin.output):
            twin.output[i] = copies.get(name, name)
        b.nodes.append(twin)
    return {name: copies[name] for name in inputs}


def head_copies(
    b: Builder, head: onnx.ModelProto, manifest: dict[str, Any], shared: set[str],
    activation: str, rows: str, seeds: str, targets: str, one_hot: bool, logits: str,
    sizes: dict[str, tuple[str, str]] | None = None,
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto], list[onnx.NodeProto],
           list[onnx.TensorProto]]:
    """The head's forward on the activation (B rows: the logits, and the forward tensors its
    backward reads), the tiling of those tensors to B*K rows, and the head's backward on the
    seeds (B*K rows): (forward nodes, tiling nodes, backward nodes, head weights). With
    ``one_hot`` seeds (of ``targets``), the product of the seeds and the last layer's weights
    is a Gather (:func:`_gather_seed_rows`). ``sizes``: the head's other inputs -> (their
    names for B rows, for B*K rows: :func:`size_copies`).

    The backward reads K copies of each forward row (``grad/`` nodes see the same values as
    on B*K rows: every row of a batch-major tensor depends only on its own image), so the
    forward runs once per image. Shape computations the backward reads are recomputed from
    the copies. Where the rows cannot be proven batch-major (shape inference), the whole
    gradient head runs on B*K rows instead. Both copies read one copy of the head's weights
    (``head/`` names; ``features/`` ones where the features hold them).
    """
    names = manifest["head"]
    weights = {t.name for t in head.graph.initializer}

    def renamer(prefix: str, fixed: dict[str, str]) -> Callable[[str], str]:
        def rename(name: str) -> str:
            if name in fixed:
                return fixed[name]
            if name in weights:
                return f"features/{name}" if name in shared else f"head/{name}"
            return f"{prefix}/{name}"
        return rename

    cut = names["inputs"][0]
    gradient_name = "cam/gradient_rows"
    sizes = sizes or {}
    to_forward = renamer("logits", {cut: activation, names["logits"]: logits,
                                    **{n: pair[0] for n, pair in sizes.items()}})
    to_backward = renamer("head", {cut: rows, names["seed"]: seeds,
                                   names["gradient"]: gradient_name,
                                   **{n: pair[1] for n, pair in sizes.items()}})
    backward = copy.deepcopy(head.graph)
    prune(backward, [names["gradient"]])
    tiled: set[str] = set()
    once = False  # the forward runs once per image
    data = _forward_data(head, cut)
    if data is not None:
        batched = copy.deepcopy(backward)
        kept = [n for n in batched.node
                if n.name.startswith(BACKWARD_PREFIX) or not any(o in data for o in n.output)]
        del batched.node[:]
        batched.node.extend(kept)
        prune(batched, [names["gradient"]])
        tiled = {i for n in batched.node for i in node_inputs(n) if i in data} - {cut}
        if _batch_major(head, cut, tiled):
            backward, once = batched, True
        else:
            tiled = set()
    rename_graph(backward, to_backward)
    forward = copy.deepcopy(head.graph)
    prune(forward, [names["logits"], *sorted(tiled)])
    rename_graph(forward, to_forward)
    outer, b.nodes = b.nodes, []
    k = b.dims(b.op("Shape", targets), 1, 2)
    for name in sorted(tiled):
        _tile(b, to_forward(name), k, out=to_backward(name))
    if one_hot:
        _gather_seed_rows(b, backward, seeds, targets)
    if once:  # the backward may read only the shapes of the rows and of the copies
        _shapes_of_copies(b, backward, {rows: activation, **{
            to_backward(name): to_forward(name) for name in tiled}}, k)
    tiles, b.nodes = b.nodes, outer
    initializers = {t.name: t for g in (forward, backward) for t in g.initializer
                    if not t.name.startswith("features/")}
    return list(forward.node), tiles, list(backward.node), list(initializers.values())
