"""Compose a bundle's features and head graphs and the CAM into one explanation graph.

The explanation graph does in one ONNX Runtime call what :meth:`explainer.Explainer.explain`
does with two graphs and numpy::

    input -> features/ (the features graph) -> activation A [B, ...]
          -> logits/   (the head's forward, B rows) -> logits -> TopK -> target ids
          -> one-hot seeds [B*K, C]; A and the forward tensors the backward reads repeated
             K times, image-major [B*K, ...]
          -> head/     (the head's backward, ``grad/`` nodes, B*K rows) -> dA -> [B, K, ...]
          -> cam/      If chain on ``method``: the chosen method's weights (CAM_METHODS)
                       -> ReLU(sum_c w_c A^c) -> cams [B, K, h, w]
          -> bilinear (half-pixel) upsampling -> per-map min-max -> heatmaps [B, K, H, W]

Inputs (names in the manifest's ``explanation.inputs``), all required:

* the model input, as the features graph takes it;
* ``top_k`` (int64 [1]): explain the K most probable classes, most probable first;
* ``least`` (int64 [1]): then the L least probable classes, least probable first;
* ``class_ids`` (int64 [B, N] or [1, N] for every image): then these classes; [1, 0] (an
  empty tensor) for none;
* ``method`` (int64 [1]): which CAM method, its index in the manifest's
  ``explanation.methods`` (0, Grad-CAM, by default).

The targets are the columns ``top_k | least | class_ids``, in that order (K = top_k + least +
N). Top-1 is ``top_k=[1], least=[0], class_ids=[1, 0]``.

The head's forward runs once per image: each backward row reads a copy of its image's forward
row, the values a forward on the B*K rows would give (see :func:`_head_copies`). Where shape
inference cannot prove a tensor the backward reads to be one row per image, the whole head
runs on the B*K rows instead.

Outputs: ``logits`` [B, C], ``target_ids`` [B, K] int64, ``scores`` [B, K] (logits),
``probabilities`` [B, K] (softmax; the logits themselves where ``head.score`` says the head's output
is already a probability), ``cams`` [B, K, h, w], ``heatmaps`` [B, K, H, W] in [0, 1].

The CAM part (:mod:`exporters.compose_cams`) is a table (:data:`CAM_METHODS`): a method name
maps to its :class:`~explainer.methods.MethodSpec`, whose ``emit`` writes ONNX nodes from the
activation and the gradient to channel weights (or per-position weights, ``per_position``).
Every method closed-form in (activation, gradient) is there, so every ONNX Runtime binding can
run it; each method is one If branch, so a run computes only the method it asks for. Methods
that need more (eigen decompositions, Score-CAM, Ablation-CAM, CAM) use the two graphs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from explainer.bundle import COMPOSED_PREFIX
from explainer.tasks.registry import TASKS, format_spec

from .builder import Builder
from .compose_cams import CAM_METHODS, cams, heatmaps
from .compose_head import head_copies, rename_graph, size_copies, size_inputs
from .errors import ExportError
from .graph import default_opset, prune

__all__ = ["CAM_METHODS", "build_explanation_graph", "explanation_blocker"]

INPUTS = {"top_k": "top_k", "least": "least", "class_ids": "class_ids", "method": "method"}
OUTPUTS = {name: name for name in
           ("logits", "target_ids", "scores", "probabilities", "cams", "heatmaps")}


# --- composition ----------------------------------------------------------------------------------
def _copy_graph(model: onnx.ModelProto, rename: Callable[[str], str]) -> onnx.GraphProto:
    graph = copy.deepcopy(model.graph)
    rename_graph(graph, rename)
    return graph


def explanation_blocker(manifest: dict[str, Any],
                        methods: Sequence[str] = tuple(CAM_METHODS),
                        features: onnx.ModelProto | None = None) -> str | None:
    """Why a bundle cannot have an explanation graph of ``methods`` (None when it can).
    Sizes crossing the cut beside the activation are allowed where ``features`` shows how
    they are computed from the input's shape (:func:`size_inputs`)."""
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown or not methods:
        return (f"method(s) {unknown} have no in-graph form (CAM_METHODS: "
                f"{list(CAM_METHODS)})")
    task = manifest.get("task", "classify")
    if task not in TASKS or not TASKS[task].in_graph:
        return f"a {task} bundle (its targets are decoded from the outputs in numpy)"
    if manifest.get("layers"):
        return "a layer sweep (every layer's maps come from the two graphs)"
    if len(manifest["head"]["inputs"]) != 1:
        if features is None:  # a size read from the input's shape may hold the batch size
            return "more than one tensor crosses the cut (the head runs once per target column)"
        blocker = size_inputs(features, manifest)
        if blocker:
            return blocker
    batch = (manifest["input"].get("shape") or [None])[0]
    if isinstance(batch, int):
        return f"the model has a static batch of {batch} (the head cannot run B*K rows)"
    if manifest["target"]["layout"] not in ("NCHW", "NHWC"):
        return f"unknown activation layout {manifest['target']['layout']!r}"
    return None


def _select_targets(b: Builder, ranking: str, num_classes: int, batch: str) -> str:
    """target ids [B, K] = top_k best | least worst | class_ids (each image's ranking of the
    classes: the logits, or a segmenter's predicted areas). Ties keep numpy's order
    (:meth:`explainer.targets.TargetPlan.resolve`, a stable descending sort): the best in
    ascending class order, the worst in descending class order. Two TopKs of K and L
    elements, not a ranking of all the classes (about 0.06 ms on 1000 classes per run)."""
    def count(name: str) -> str:  # a K or L above the class count keeps every class
        every = b.const([num_classes])
        return b.op("Where", b.op("Less", INPUTS[name], every), INPUTS[name], every)

    top = b.op("TopK", ranking, count("top_k"), outputs=2, axis=1, largest=1, sorted=1)[1]
    # TopK puts equal values in ascending index order: the least over the classes in reverse
    backwards = b.op("Slice", ranking, b.const([-1]), b.const([-num_classes - 1]),
                     b.const([1]), b.const([-1]))
    worst = b.op("TopK", backwards, count("least"), outputs=2, axis=1, largest=0, sorted=1)[1]
    least = b.op("Sub", b.const([num_classes - 1]), worst)
    ids_shape = b.op("Concat", batch, b.dims(b.op("Shape", INPUTS["class_ids"]), 1, 2), axis=0)
    ids = b.op("Expand", INPUTS["class_ids"], ids_shape)
    return b.op("Concat", top, least, ids, axis=1, out=OUTPUTS["target_ids"])


def _gradient_rows(b: Builder, activation: str, targets: str, num_classes: int):
    """Seeds [B*K, C] and the activation repeated K times, image-major [B*K, ...]."""
    flat_ids = b.op("Reshape", targets, b.const([-1]))
    seeds = b.op("OneHot", flat_ids, b.const(num_classes), b.const([0.0, 1.0], np.float32),
                 axis=-1)
    shape = b.op("Shape", activation)
    batch, rest = b.dims(shape, 0, 1), b.dims(shape, 1, 1 << 30)
    k = b.dims(b.op("Shape", targets), 1, 2)
    expanded = b.op("Expand", b.op("Unsqueeze", activation, b.const([1])),
                    b.op("Concat", batch, k, rest, axis=0))
    rows = b.op("Reshape", expanded, b.op("Concat", b.const([-1]), rest, axis=0))
    return seeds, rows, b.op("Concat", b.const([-1]), k, rest, axis=0)


def _segment_areas(b: Builder, scores: str, fmt: dict[str, Any], num_classes: int
                   ) -> tuple[str, str, str]:
    """A segmenter's (predicted mask [B, 1, h, w]: the class per pixel, -1 where none;
    probabilities [B, C, h, w]; areas [B, C]: each class's predicted pixels), as
    :func:`explainer.segmentation.predicted` computes them (a binary map at threshold 0.5):
    the format's in-graph emitter (:attr:`explainer.tasks.FormatSpec.emit`)."""
    emit = format_spec(fmt).emit
    if emit is None:
        raise ExportError(f"format {fmt['name']!r} has no in-graph emitter: its bundle has no "
                          "explanation graph")
    return emit(b, scores, fmt, num_classes)


def _segment_seeds(b: Builder, scores: str, predicted: str, probabilities: str, targets: str,
                   num_classes: int) -> tuple[str, str]:
    """Seeds [B*K, C, h, w]: each target's class channel under its predicted mask (held
    constant); and each target's (score: the summed scores under the mask, mean probability)
    [B, K] into ``scores`` / ``probabilities`` outputs."""
    ids = b.op("Unsqueeze", targets, b.const([2, 3]))  # [B, K, 1, 1]
    mask = b.op("Cast", b.op("Equal", predicted, ids), to=TensorProto.FLOAT)  # [B, K, h, w]
    one_hot = b.op("OneHot", ids, b.const(num_classes), b.const([0.0, 1.0], np.float32),
                   axis=2)  # [B, K, C, 1, 1]
    seeds = b.op("Mul", one_hot, b.op("Unsqueeze", mask, b.const([2])))
    shape = b.op("Shape", scores)
    rows = b.op("Reshape", seeds, b.op("Concat", b.const([-1]), b.dims(shape, 1, 4), axis=0))
    index = b.op("Expand", ids, b.op("Shape", mask))
    picked = b.op("GatherElements", scores, index, axis=1)  # [B, K, h, w]
    b.op("ReduceSum", b.op("Mul", mask, picked), b.const([2, 3]), keepdims=0,
         out=OUTPUTS["scores"])
    mean = b.op("GatherElements", probabilities, index, axis=1)
    area = b.reduce("ReduceSum", mask, [2, 3], keepdims=0)
    total = b.reduce("ReduceSum", b.op("Mul", mask, mean), [2, 3], keepdims=0)
    b.op("Div", total, b.op("Max", area, b.const(1.0, np.float32)),
         out=OUTPUTS["probabilities"])
    return rows, mask


def _io(name: str, elem_type: int, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _outputs(manifest: dict[str, Any]) -> list[onnx.ValueInfoProto]:
    """The graph outputs (a segmenter's ``logits`` are its scores [B, C, h, w])."""
    in_shape = list(manifest["input"]["shape"])
    batch = in_shape[0] if isinstance(in_shape[0], str) else "batch"
    spatial = in_shape[2:4] if manifest["input"]["layout"] == "NCHW" else in_shape[1:3]
    target = list(manifest["target"].get("shape") or [None] * 4)
    small = target[2:4] if manifest["target"]["layout"] == "NCHW" else target[1:3]
    small = [d if isinstance(d, int) else None for d in small]
    pair = [batch, "targets"]
    float_, int64 = TensorProto.FLOAT, TensorProto.INT64
    logits = [batch, manifest["num_classes"]]
    if manifest.get("task") == "segment":
        logits += ["mask_height", "mask_width"]
    return [_io(OUTPUTS["logits"], float_, logits),
            _io(OUTPUTS["target_ids"], int64, pair), _io(OUTPUTS["scores"], float_, pair),
            _io(OUTPUTS["probabilities"], float_, pair),
            _io(OUTPUTS["cams"], float_, [*pair, *small]),
            _io(OUTPUTS["heatmaps"], float_, [*pair, *spatial])]


def _inputs(features: onnx.ModelProto, input_name: str) -> list[onnx.ValueInfoProto]:
    """The model input, then the target inputs (all required: no initializer defaults, which
    ONNX Runtime warns about and cannot constant-fold)."""
    model_input = next(i for i in features.graph.input if i.name == input_name)
    return [model_input, _io(INPUTS["top_k"], TensorProto.INT64, [1]),
            _io(INPUTS["least"], TensorProto.INT64, [1]),
            _io(INPUTS["class_ids"], TensorProto.INT64, ["id_rows", "ids"]),
            _io(INPUTS["method"], TensorProto.INT64, [1])]


def build_explanation_graph(
    features: onnx.ModelProto, head: onnx.ModelProto, manifest: dict[str, Any],
    methods: Sequence[str] = tuple(CAM_METHODS),
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Compose the explanation graph (see the module docstring) of a bundle's two graphs.

    Args:
        features, head, manifest: the bundle's graphs and manifest.
        methods: the CAM methods the graph computes (names in :data:`CAM_METHODS`); the
            ``method`` input picks one by its index in this list, the first is the default.

    Returns:
        (the model, its manifest entry: file, method, methods, inputs, outputs, targets).

    Raises:
        ExportError: the bundle cannot be composed (see :func:`explanation_blocker`).
    """
    methods = list(methods)
    blocker = explanation_blocker(manifest, methods, features)
    input_name = manifest["input"]["name"]
    if blocker is None and input_name in {*INPUTS.values(), *OUTPUTS.values()}:
        blocker = f"the model input is named {input_name!r}, like an explanation graph tensor"
    if blocker:
        raise ExportError(f"no explanation graph: {blocker}")
    b = Builder(COMPOSED_PREFIX.rstrip("/"), default_opset(features))
    graph_inputs = _inputs(features, input_name)
    def rename(name: str) -> str:  # the features graph's names in the composed graph
        return name if name == input_name else f"features/{name}"

    body = _copy_graph(features, rename)
    shared = {t.name for t in features.graph.initializer}
    activation = f"features/{manifest['target']['tensor']}"
    targets = OUTPUTS["target_ids"]  # computed below, from the logits pass
    classes = manifest["num_classes"]
    segment = manifest.get("task") == "segment"
    if not segment:
        seeds, rows, grad_shape = _gradient_rows(b, activation, targets, classes)
    else:  # a class over its predicted mask: seeds from the scores, not one-hot rows
        b.nodes = []
        predicted, probabilities, areas = _segment_areas(b, OUTPUTS["logits"],
                                                         manifest["format"], classes)
        ranking = b.nodes
        b.nodes = []
        seeds, _ = _segment_seeds(b, OUTPUTS["logits"], predicted, probabilities, targets,
                                  classes)
        glue = b.nodes
        b.nodes = []
        _, rows, grad_shape = _gradient_rows(b, activation, targets, classes)
        glue += b.nodes
        b.nodes = []
    outer, b.nodes = b.nodes, []
    copies = size_copies(b, features, manifest, rows, rename)  # sizes for the B*K rows
    sizes = {name: (rename(name), copy) for name, copy in copies.items()}
    size_nodes, b.nodes = b.nodes, outer
    logits_nodes, tiles, gradient_nodes, head_weights = head_copies(
        b, head, manifest, shared, activation, rows, seeds, targets, one_hot=not segment,
        logits=OUTPUTS["logits"], sizes=sizes)
    if not segment:
        glue = b.nodes
        ranking, areas = [], OUTPUTS["logits"]
    b.nodes = []
    batch = b.dims(b.op("Shape", OUTPUTS["logits"]), 0, 1)
    _select_targets(b, areas, classes, batch)
    select = ranking + b.nodes
    b.nodes = []
    gradient = b.op("Reshape", "cam/gradient_rows", grad_shape)
    nchw = activation
    if manifest["target"]["layout"] == "NHWC":
        nchw = b.op("Transpose", activation, perm=[0, 3, 1, 2])
        gradient = b.op("Transpose", gradient, perm=[0, 1, 4, 2, 3])
    cams(b, methods, nchw, gradient, INPUTS["method"], OUTPUTS["cams"])
    heatmaps(b, OUTPUTS["cams"], nchw, input_name, manifest["input"]["layout"],
             OUTPUTS["heatmaps"])
    if segment:
        pass  # scores and probabilities come with the seeds
    elif manifest["head"].get("score", "logit") == "probability":  # the model's own
        probabilities = b.op("Identity", OUTPUTS["logits"])
    else:
        probabilities = b.op("Softmax", OUTPUTS["logits"], axis=1)
    if not segment:
        b.op("GatherElements", probabilities, targets, axis=1, out=OUTPUTS["probabilities"])
        b.op("GatherElements", OUTPUTS["logits"], targets, axis=1, out=OUTPUTS["scores"])
    nodes = [*body.node, *logits_nodes, *select, *glue, *size_nodes, *tiles, *gradient_nodes,
             *b.nodes]
    graph = helper.make_graph(
        nodes, "onnxcam_explanation", graph_inputs, _outputs(manifest),
        initializer=[*body.initializer, *head_weights, *b.initializers],
        value_info=list(body.value_info),
    )
    prune(graph, [o.name for o in graph.output])  # e.g. one-hot seeds a Gather replaced
    opsets = {o.domain: o for o in [*head.opset_import, *features.opset_import]}
    model = helper.make_model(graph, opset_imports=list(opsets.values()),
                              producer_name="onnxcam")
    model.ir_version = features.ir_version
    functions = {(f.domain, f.name): f for f in [*features.functions, *head.functions]}
    model.functions.extend(functions.values())
    return model, _entry(input_name, methods)


def _entry(input_name: str, methods: list[str]) -> dict[str, Any]:
    """The manifest entry of the explanation graph."""
    return {
        "file": "explanation.onnx",
        "method": methods[0],
        "methods": methods,
        "inputs": {"input": input_name, **INPUTS},
        "outputs": dict(OUTPUTS),
        "targets": "target columns = top_k most probable (descending) | least least probable "
                   "(ascending) | class_ids, concatenated in that order",
    }
