"""What a deployed model's outputs are: its task (classify, detect) and, for detectors, the
output format, told from the outputs' shapes and names before any shape inference.

Declared output shapes are often symbolic (Ultralytics declares ``['batch',
'Concatoutput0_dim_1', 'anchors']``), so where they do not settle it one probe run of the
model on a zero image gives the real sizes (about as long as one inference). The rules, in
order:

* outputs named ``boxes``, ``scores`` and ``labels`` (or a ``[K, 4]`` float, a ``[K]`` float
  and a ``[K]`` integer output): ``detect``, format ``boxes_scores_labels`` (torchvision
  detectors exported with their post-processing);
* a rank-3 float output ``[N, 4+C, A]`` whose A is the anchor count of strides 8/16/32 (or
  8..64) at the probe size (A = sum over strides of ceil(H/s) * ceil(W/s), once or three times
  per cell): ``yolov8``; ``[N, A, 5+C]``: ``yolov5`` (objectness in column 4), or ``yolox``
  when the probe's box centres stay near zero instead of spreading over the image (YOLOX
  exported without box decoding: grid offsets, decoded by the runtime);
* a rank-3 ``[N, K, 6]`` output otherwise: ``end2end`` (x1, y1, x2, y2, score, class);
* rank-3 outputs in pairs per stride, ``[N, A_s, C]`` scores (in [0, 1] on the probe) and
  ``[N, A_s, 4 * (reg_max + 1)]`` box distributions, A_s the cells of strides 8/16/32(/64):
  ``picodet`` (PicoDet/NanoDet/GFL heads; the explained tensor is the scores concatenated over
  the strides, a node the export adds);
* one float output with one axis of size > 1 past the batch: ``classify``.

Anything else raises :class:`OnnxExportError` listing every output with its shape and the
``task=`` / ``format=`` (``--task`` / ``--format``) to pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import OnnxExportError
from ..graph import FLOAT_TYPES, Graph, value_shape

__all__ = ["DETECT_FORMATS", "TASKS", "TaskSpec", "add_score_concat", "detection_explained",
           "format_outputs", "head_inputs", "resolve_task"]

log = logging.getLogger(__name__)

#: the tasks a bundle can have
TASKS = ("classify", "detect")
#: detection output formats (see :mod:`explainer.detection`)
DETECT_FORMATS = ("yolov8", "yolov5", "yolox", "end2end", "boxes_scores_labels", "picodet")
_STRIDES = ((8, 16, 32, 64), (8, 16, 32))
_PROBE_SIZE = 320  # symbolic H/W are probed at this size
_PASS_THROUGH = ("Identity", "Cast")
_LAYOUTS = {"yolov8": "[N, 4+C, A]", "yolov5": "[N, A, 5+C]", "yolox": "[N, A, 5+C]",
            "end2end": "[N, K, 6]"}


@dataclass
class TaskSpec:
    """A model's task and, for a detector, its format parameters (the manifest's ``format``).

    Attributes:
        task: one of :data:`TASKS`.
        format: ``{"name": ..., "outputs": {role: output name}, "classes": C, ...}`` for a
            detector, None for a classifier.
        shapes: each output's shape as declared or probed (for messages).
    """

    task: str
    format: dict[str, Any] | None = None
    shapes: dict[str, list[Any]] = field(default_factory=dict)


def _outputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return list(model.graph.output)


def _declared(model: onnx.ModelProto) -> dict[str, list[Any] | None]:
    return {o.name: value_shape(o.type) for o in model.graph.output}


def _listing(shapes: dict[str, Any], types: dict[str, int]) -> str:
    def dtype(name: str) -> str:
        known = types.get(name)
        return helper.tensor_dtype_to_np_dtype(known).name if known else "?"

    return "; ".join(f"{name!r} {shape} {dtype(name)}" for name, shape in shapes.items())


def _probe_input(model: onnx.ModelProto) -> tuple[str, np.ndarray]:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise OnnxExportError(f"the model has {len(inputs)} inputs {[i.name for i in inputs]}; "
                              "onnxcam explains single-input image models")
    info = inputs[0]
    shape = value_shape(info.type) or []
    dims = []
    for k, d in enumerate(shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        else:
            dims.append(1 if k == 0 else (3 if len(shape) == 4 and k in (1, 3) and
                                          _channel_axis(shape) == k else _PROBE_SIZE))
    dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
    return info.name, np.zeros(dims, dtype)


def _channel_axis(shape: Sequence[Any]) -> int:
    """1 for NCHW-looking inputs, 3 for NHWC-looking ones (a static 1/3/4 channel axis)."""
    if isinstance(shape[3], int) and shape[3] in (1, 3, 4) and not (
            isinstance(shape[1], int) and shape[1] in (1, 3, 4)):
        return 3
    return 1


def _probe(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """The outputs of one run on a zero image, and the (H, W) it ran at."""
    import onnxruntime as ort

    name, x = _probe_input(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        values = session.run(None, {name: x})
    except Exception as err:  # ORT raises its own exception types
        raise OnnxExportError(f"cannot run the model once to read its output sizes ({err}); "
                              "pass task= and format= (--task, --format)") from err
    names = [o.name for o in session.get_outputs()]
    hw = (x.shape[1], x.shape[2]) if x.ndim == 4 and _channel_axis(x.shape) == 3 else \
        (x.shape[-2], x.shape[-1])
    return dict(zip(names, (np.asarray(v) for v in values))), hw


def _anchor_counts(hw: tuple[int, int]) -> set[int]:
    counts = set()
    for strides in _STRIDES:
        cells = sum(math.ceil(hw[0] / s) * math.ceil(hw[1] / s) for s in strides)
        counts.update({cells, 3 * cells})
    return counts


def _bsl(shapes: dict[str, list[Any]], types: dict[str, int]) -> dict[str, str] | None:
    """boxes/scores/labels outputs by name, else by shape and type."""
    by_name = {n.lower(): n for n in shapes}
    if all(k in by_name for k in ("boxes", "scores", "labels")):
        return {k: by_name[k] for k in ("boxes", "scores", "labels")}
    roles: dict[str, str] = {}
    for name, shape in shapes.items():
        if shape is None:
            continue
        squeezed = [d for d in shape]
        if len(squeezed) in (2, 3) and squeezed[-1] == 4 and types.get(name) in FLOAT_TYPES:
            roles.setdefault("boxes", name)
        elif len(squeezed) in (1, 2) and types.get(name) in FLOAT_TYPES:
            roles.setdefault("scores", name)
        elif len(squeezed) in (1, 2) and types.get(name) in (TensorProto.INT64, TensorProto.INT32):
            roles.setdefault("labels", name)
    return roles if len(roles) == 3 and len(shapes) == 3 else None


def _classify(shapes: dict[str, list[Any]], types: dict[str, int]) -> bool:
    floats = [s for n, s in shapes.items() if types.get(n) in FLOAT_TYPES]
    return any(s is not None and len(s) >= 2 and sum(1 for d in s[1:] if d != 1) <= 1
               for s in floats)


def _detect_format(shapes: dict[str, list[Any]], types: dict[str, int],
                   hw: tuple[int, int] | None,
                   values: dict[str, np.ndarray] | None = None) -> dict[str, Any] | None:
    roles = _bsl(shapes, types)
    if roles:
        return {"name": "boxes_scores_labels", "outputs": roles}
    anchors = _anchor_counts(hw) if hw else set()
    for name, shape in shapes.items():
        if types.get(name) not in FLOAT_TYPES or shape is None or len(shape) != 3:
            continue
        _, d1, d2 = shape
        if not (isinstance(d1, int) and isinstance(d2, int)):
            continue
        if d2 in anchors and 5 <= d1 < d2:
            return {"name": "yolov8", "outputs": {"predictions": name}, "classes": d1 - 4}
        if d1 in anchors and 6 <= d2 < d1:
            name5 = "yolov5"
            if values is not None and hw and _raw_boxes(values[name], hw):
                name5 = "yolox"
            return {"name": name5, "outputs": {"predictions": name}, "classes": d2 - 5}
    for name, shape in shapes.items():
        if (types.get(name) in FLOAT_TYPES and shape is not None and len(shape) == 3
                and shape[2] == 6):
            return {"name": "end2end", "outputs": {"predictions": name}}
    if hw and values is not None:
        return _picodet(shapes, types, hw, values)
    return None


def _picodet(shapes: dict[str, list[Any]], types: dict[str, int], hw: tuple[int, int],
             values: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Per-stride score and box-distribution outputs (see the module docstring)."""
    dense = {n: s for n, s in shapes.items()
             if types.get(n) in FLOAT_TYPES and s is not None and len(s) == 3}
    for strides in _STRIDES:
        cells = [math.ceil(hw[0] / s) * math.ceil(hw[1] / s) for s in strides]
        scores, boxes = [], []
        for count in cells:
            level = [n for n, s in dense.items() if s[1] == count]
            probs = [n for n in level if 0.0 <= values[n].min() and values[n].max() <= 1.0]
            dists = [n for n in level if n not in probs and dense[n][2] % 4 == 0]
            if len(probs) != 1 or len(dists) != 1:
                break
            scores.append(probs[0])
            boxes.append(dists[0])
        else:
            bins = {dense[n][2] // 4 for n in boxes}
            classes = {dense[n][2] for n in scores}
            if len(bins) == 1 and len(classes) == 1:
                return {"name": "picodet", "outputs": {"scores": scores, "boxes": boxes},
                        "strides": list(strides), "reg_max": bins.pop() - 1,
                        "classes": classes.pop()}
    return None


def _raw_boxes(value: np.ndarray, hw: tuple[int, int]) -> bool:
    """Whether ``[1, A, 5+C]`` box centres are undecoded offsets: decoded centres spread over
    the image (up to its width), raw grid offsets stay within a few units of zero."""
    centres = np.abs(value.reshape(-1, value.shape[-1])[:, :2])
    return bool(np.isfinite(centres).all() and centres.max() < 0.1 * min(hw))


def resolve_task(
    model: onnx.ModelProto,
    task: str = "auto",
    format: str | dict[str, Any] | None = None,  # noqa: A002  (the manifest's word)
    output: str | None = None,
) -> TaskSpec:
    """Tell the model's task (and a detector's format) from its outputs (see the module
    docstring), before any shape inference.

    Args:
        model: the loaded model (weights included: a probe run may be needed).
        task: ``"auto"`` or one of :data:`TASKS`.
        format: a detector's format name, or a dict of format parameters (``name``,
            ``outputs``, ``classes``...), or None to detect it.
        output: the output a classifier explains (given outputs count as classifiers'
            unless ``task``/``format`` say otherwise).

    Raises:
        OnnxExportError: an unknown task or format, or a task that cannot be told (the message
            lists every output with its shape and the flags to pass).
    """
    if task not in ("auto", *TASKS):
        raise OnnxExportError(f"unknown task {task!r}; choose one of {['auto', *TASKS]} "
                              "(--task)")
    name = format.get("name") if isinstance(format, dict) else format
    if name is not None and name not in DETECT_FORMATS:
        raise OnnxExportError(f"unknown detection format {name!r}; choose one of "
                              f"{list(DETECT_FORMATS)} (--format)")
    if name is not None and task == "classify":
        raise OnnxExportError(f"format {name!r} is a detection format; it contradicts "
                              "task='classify' (--task classify)")
    types = {o.name: o.type.tensor_type.elem_type for o in _outputs(model)}
    declared = _declared(model)
    if task == "classify" or (task == "auto" and name is None and (
            output is not None or _classify_declared(declared, types))):
        return TaskSpec("classify", None, declared)
    values, hw = _probe(model)
    shapes = {n: list(v.shape) for n, v in values.items()}
    found = _detect_format(shapes, types, hw, values)
    if name is not None and (found is None or found["name"] != name):
        found = _given_format(name, shapes, types, hw)
    if isinstance(format, dict):
        found = {**(found or {}), **format}
    if found is None:
        if task == "auto" and _classify(shapes, types):
            return TaskSpec("classify", None, declared)
        raise OnnxExportError(
            f"cannot tell what the model's outputs are: {_listing(shapes, types)} (probed at "
            f"{hw[0]}x{hw[1]}); pass --task classify or --task detect with --format "
            f"{{{','.join(DETECT_FORMATS)}}} (Python: task=, format=)")
    found.setdefault("classes", _classes(found, shapes))
    log.info("task detect, format %s (outputs %s)", found["name"], found["outputs"])
    return TaskSpec("detect", found, shapes)


def _classify_declared(declared: dict[str, list[Any] | None], types: dict[str, int]) -> bool:
    """One float output whose declared shape is a classifier's [N, C] (or [N, 1, ..., C])."""
    floats = [s for n, s in declared.items() if types.get(n) in FLOAT_TYPES]
    if len(floats) != 1 or floats[0] is None or len(floats[0]) < 2:
        return False
    shape = floats[0]
    if len(shape) == 2:
        return True
    return all(isinstance(d, int) for d in shape[1:]) and sum(1 for d in shape[1:] if d != 1) <= 1


def _given_format(name: str, shapes: dict[str, list[Any]], types: dict[str, int],
                  hw: tuple[int, int]) -> dict[str, Any]:
    """A format the user named: its outputs by shape (rank 3 float for the dense formats)."""
    if name == "boxes_scores_labels":
        roles = _bsl(shapes, types)
        if roles is None:
            raise OnnxExportError(
                f"format boxes_scores_labels needs a [K, 4] float, a [K] float and a [K] int "
                f"output; the model has {_listing(shapes, types)}")
        return {"name": name, "outputs": roles}
    if name == "picodet":
        raise OnnxExportError(
            "format picodet needs per-stride [N, A_s, C] scores in [0, 1] and [N, A_s, "
            f"4 * (reg_max + 1)] box outputs; the model has {_listing(shapes, types)}")
    dense = [n for n, s in shapes.items() if types.get(n) in FLOAT_TYPES and s and len(s) == 3]
    if not dense:
        raise OnnxExportError(f"format {name!r} needs a rank-3 float output; the model has "
                              f"{_listing(shapes, types)}")
    out = dense[0]
    d1, d2 = shapes[out][1:]
    fits = {"yolov8": 5 <= d1 < d2, "yolov5": 6 <= d2 < d1, "yolox": 6 <= d2 < d1,
            "end2end": d2 >= 6}[name]
    if not fits:
        raise OnnxExportError(
            f"format {name!r} contradicts output {out!r} of shape {shapes[out]} (probed at "
            f"{hw[0]}x{hw[1]}): {_LAYOUTS[name]} expected")
    return {"name": name, "outputs": {"predictions": out}}


def _classes(fmt: dict[str, Any], shapes: dict[str, list[Any]]) -> int | None:
    name = fmt["name"]
    if name == "yolov8":
        return int(shapes[fmt["outputs"]["predictions"]][1]) - 4
    if name in ("yolov5", "yolox"):
        return int(shapes[fmt["outputs"]["predictions"]][2]) - 5
    return None  # from the labels, or the probe's largest class id


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
    picked = []
    for level, ends in exits.items():
        last = max(position[e] for e in ends)
        same = [t for t in candidates if size.get(t) == level and t not in ends
                and position[t] < last]
        found = next((t for t in reversed(same) if _dominates(g, source, t, ends, on_path)), None)
        if found is not None:
            picked.append(found)
    return sorted(set(picked), key=order.__getitem__)


def _scope(name: str) -> str | None:
    """The outermost module scope of a node name (``/model.22/cv3.0/Conv`` -> ``model.22``)."""
    parts = [p for p in name.split("/") if p]
    return parts[0] if len(parts) >= 2 else None


def _scope_inputs(g: Graph, nodes: list[int], candidates: set[str]) -> list[str]:
    """Candidates read by the head's scope from outside it (see :func:`head_inputs`)."""
    head = next((_scope(g.nodes[i].name) for i in reversed(nodes)
                 if _scope(g.nodes[i].name)), None)
    if head is None:
        return []
    inside = {i for i in nodes if _scope(g.nodes[i].name) == head}
    found = []
    for i in sorted(inside):
        for t in g.nodes[i].input:
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


