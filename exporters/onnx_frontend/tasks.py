"""What a deployed model's outputs are: its task (classify, detect, segment, sequence) and
the output format, told from the outputs' shapes and names before any shape inference.

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
* one float output with one axis of size > 1 past the batch: ``classify``;
* a rank-4 float output ``[N, C, h, w]`` (h, w > 1): ``segment``, format ``binary`` when C is 1
  (a sigmoid map), else ``masks`` (the first such output: torchvision's ``out`` before ``aux``);
* a rank-3 float output ``[N, T, V]`` (or ``[T, N, V]``, told by the axis of size N = 1 on the
  probe): ``sequence``, format ``ctc``.

Segmenters and text recognizers are explained at their scores before a final ``Sigmoid`` or
``Softmax`` over the classes where the graph has them (also through the ``Flatten`` /
``Softmax`` / ``Reshape`` that onnx's version converter writes for an old-opset softmax).

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

__all__ = ["DETECT_FORMATS", "FORMATS", "SEGMENT_FORMATS", "SEQUENCE_FORMATS", "TASKS",
           "TaskSpec", "add_dense_explained", "add_score_concat", "dense_targets",
           "detection_explained", "format_outputs", "head_inputs", "resolve_task"]

log = logging.getLogger(__name__)

#: the tasks a bundle can have
TASKS = ("classify", "detect", "segment", "sequence")
#: detection output formats (see :mod:`explainer.detection`)
DETECT_FORMATS = ("yolov8", "yolov5", "yolox", "end2end", "boxes_scores_labels", "picodet")
#: segmentation formats (see :mod:`explainer.segmentation`) and text recognition formats
#: (see :mod:`explainer.sequence`)
SEGMENT_FORMATS = ("masks", "binary")
SEQUENCE_FORMATS = ("ctc",)
#: every format, by task
FORMATS = {"detect": DETECT_FORMATS, "segment": SEGMENT_FORMATS, "sequence": SEQUENCE_FORMATS}
_STRIDES = ((8, 16, 32, 64), (8, 16, 32))
_PROBE_SIZE = 320  # symbolic H/W are probed at this size
_PROBE_SIZES = ((_PROBE_SIZE, _PROBE_SIZE), (48, 320), (32, 320), (64, 256))
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
        size: the input (H, W) the probe ran at, where it ran (a size the model accepts).
    """

    task: str
    format: dict[str, Any] | None = None
    shapes: dict[str, list[Any]] = field(default_factory=dict)
    size: tuple[int, int] | None = None


def _outputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return list(model.graph.output)


def _declared(model: onnx.ModelProto) -> dict[str, list[Any] | None]:
    return {o.name: value_shape(o.type) for o in model.graph.output}


def _listing(shapes: dict[str, Any], types: dict[str, int]) -> str:
    def dtype(name: str) -> str:
        known = types.get(name)
        return helper.tensor_dtype_to_np_dtype(known).name if known else "?"

    return "; ".join(f"{name!r} {shape} {dtype(name)}" for name, shape in shapes.items())


def _probe_input(model: onnx.ModelProto, size: tuple[int, int] = (_PROBE_SIZE, _PROBE_SIZE)
                 ) -> tuple[str, np.ndarray]:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise OnnxExportError(f"the model has {len(inputs)} inputs {[i.name for i in inputs]}; "
                              "onnxcam explains single-input image models")
    info = inputs[0]
    shape = value_shape(info.type) or []
    dims = []
    spatial = iter(size)
    channels = _channel_axis(shape) if len(shape) == 4 else None
    for k, d in enumerate(shape):
        if k == 0 or k == channels:
            dims.append(d if isinstance(d, int) and d > 0 else (1 if k == 0 else 3))
            continue
        given = next(spatial, _PROBE_SIZE)
        dims.append(d if isinstance(d, int) and d > 0 else given)
    dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
    return info.name, np.zeros(dims, dtype)


def _channel_axis(shape: Sequence[Any]) -> int:
    """1 for NCHW-looking inputs, 3 for NHWC-looking ones (a static 1/3/4 channel axis)."""
    if isinstance(shape[3], int) and shape[3] in (1, 3, 4) and not (
            isinstance(shape[1], int) and shape[1] in (1, 3, 4)):
        return 3
    return 1


def _probe(model: onnx.ModelProto, size: tuple[int, int] | None = None
           ) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """The outputs of one run on a zero image, and the (H, W) it ran at: symbolic sizes are
    ``size`` (the preprocessing's), else the first of :data:`_PROBE_SIZES` the model runs at
    (a text recognizer wants its own height)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a size the model refuses is tried quietly
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types
        raise OnnxExportError(f"ONNX Runtime cannot load the model ({err})") from err
    errors = []
    for hw in [size] if size else _PROBE_SIZES:
        name, x = _probe_input(model, hw)
        try:
            values = session.run(None, {name: x})
            break
        except Exception as err:  # ORT raises its own exception types
            errors.append(f"{list(x.shape)}: {err}")
    else:
        raise OnnxExportError(f"cannot run the model once to read its output sizes ("
                              f"{'; '.join(errors)}); pass task= and format= (--task, --format) "
                              "or a preprocessing with the input size")
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
    size: tuple[int, int] | None = None,
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
        size: the (H, W) a probe run uses for symbolic sizes (the preprocessing's size).

    Raises:
        OnnxExportError: an unknown task or format, or a task that cannot be told (the message
            lists every output with its shape and the flags to pass).
    """
    if task not in ("auto", *TASKS):
        raise OnnxExportError(f"unknown task {task!r}; choose one of {['auto', *TASKS]} "
                              "(--task)")
    name = format.get("name") if isinstance(format, dict) else format
    if name is not None:
        owner = next((t for t, names in FORMATS.items() if name in names), None)
        if owner is None:
            raise OnnxExportError(f"unknown format {name!r}; choose one of "
                                  f"{[n for names in FORMATS.values() for n in names]} "
                                  "(--format)")
        if task not in ("auto", owner):
            raise OnnxExportError(f"format {name!r} is a {owner} format; it contradicts "
                                  f"task={task!r} (--task {task})")
        task = owner
    types = {o.name: o.type.tensor_type.elem_type for o in _outputs(model)}
    declared = _declared(model)
    batch = _input_batch(model)
    if task == "classify" or (task == "auto" and name is None and (
            output is not None or _classify_declared(declared, types, batch))):
        return TaskSpec("classify", None, declared)
    values, hw = _probe(model, size)
    shapes = {n: list(v.shape) for n, v in values.items()}
    if task == "auto" and name is None and _time_major(shapes, types, batch or 1):
        task = "sequence"  # [T, N, V]: before the classifier and end2end rules
    if task in ("segment", "sequence"):
        found = _dense_format(task, shapes, types, values, name, output, hw)
        if found is None:
            want = "[N, C, h, w]" if task == "segment" else "[N, T, V] or [T, N, V]"
            raise OnnxExportError(
                f"task {task!r} needs a float output {want}; the model has "
                f"{_listing(shapes, types)} (probed at {hw[0]}x{hw[1]})"
                + ("" if output is None else f"; output {output!r} was asked for (--output)"))
        if isinstance(format, dict):
            found = {**found, **format}
        log.info("task %s, format %s (output %s)", task, found["name"], found["outputs"])
        return TaskSpec(task, found, shapes, hw)
    found = _detect_format(shapes, types, hw, values)
    if name is not None and (found is None or found["name"] != name):
        found = _given_format(name, shapes, types, hw)
    if isinstance(format, dict):
        found = {**(found or {}), **format}
    if found is None:
        if task == "auto" and _classify(shapes, types):
            return TaskSpec("classify", None, declared, hw)
        if task == "auto":
            for dense in ("segment", "sequence"):
                fmt = _dense_format(dense, shapes, types, values, None, output, hw, False)
                if fmt is not None:
                    log.info("task %s, format %s (output %s)", dense, fmt["name"],
                             fmt["outputs"])
                    return TaskSpec(dense, fmt, shapes, hw)
        raise OnnxExportError(
            f"cannot tell what the model's outputs are: {_listing(shapes, types)} (probed at "
            f"{hw[0]}x{hw[1]}); pass --task classify, --task segment, --task sequence, or "
            f"--task detect with --format {{{','.join(DETECT_FORMATS)}}} (Python: task=, "
            "format=)")
    found.setdefault("classes", _classes(found, shapes))
    log.info("task detect, format %s (outputs %s)", found["name"], found["outputs"])
    return TaskSpec("detect", found, shapes, hw)


def _dense_format(task: str, shapes: dict[str, list[Any]], types: dict[str, int],
                  values: dict[str, np.ndarray], name: str | None, output: str | None,
                  hw: tuple[int, int], given: bool = True) -> dict[str, Any] | None:
    """A segmenter's or text recognizer's format from the probed outputs at input size ``hw``
    (None if no output fits; ``given``: the user named the task). Integer outputs (an argmax
    mask) are refused with a message that says why."""
    floats = [n for n in shapes if types.get(n) in FLOAT_TYPES and (output in (None, n))]
    if task == "segment":
        for n in floats:
            shape = shapes[n]
            # a mask covers the image at a quarter of its size or more (raw detection heads'
            # per-stride maps are an eighth or less)
            if len(shape) == 4 and shape[2] > 1 and shape[3] > 1 and (
                    given or (4 * shape[2] >= hw[0] and 4 * shape[3] >= hw[1])):
                fmt = "binary" if shape[1] == 1 else "masks"
                if name not in (None, fmt):
                    need = "[N, 1, h, w]" if name == "binary" else "C > 1 classes"
                    raise OnnxExportError(f"format {name!r} contradicts output {n!r} of shape "
                                          f"{shape}: it needs {need}")
                return {"name": fmt, "outputs": {"masks": n}, "classes": int(shape[1]),
                        **_value_kind(values[n], 0, fmt == "masks")}
        ints = [f"{n!r} {shapes[n]}" for n in shapes if types.get(n) not in FLOAT_TYPES
                and len(shapes[n]) in (3, 4) and min(shapes[n][-2:]) > 1]
        if ints and (output is None or output in shapes):
            raise OnnxExportError(
                f"the segmentation output {', '.join(ints)} holds integer class ids (an argmax "
                "mask): it has no gradient. Export the model without its final ArgMax, so it "
                "outputs the class scores [N, C, h, w]")
        return None
    for n in floats:
        shape = shapes[n]
        if len(shape) != 3 or shape[2] < 2:
            continue
        layout = "TNV" if shape[1] == 1 and shape[0] > 1 else "NTV"
        return {"name": "ctc", "outputs": {"logits": n}, "layout": layout, "blank": 0,
                "classes": int(shape[2]), **_value_kind(values[n], 2, True)}
    return None


def _value_kind(value: np.ndarray, axis: int, exclusive: bool) -> dict[str, Any]:
    """Whether a probed output holds probabilities or scores, before the export looks for the
    activation in the graph: a softmax shows in the values (in [0, 1], summing to 1 over
    ``axis``, C > 1); anything else counts as scores (logits) unless the graph ends in a
    Sigmoid (values in [0, 1] prove nothing: an untrained model's zero-image logits are)."""
    v = value.astype(np.float64)
    if (exclusive and v.shape[axis] > 1 and v.size and np.isfinite(v).all()
            and v.min() >= 0.0 and v.max() <= 1.0
            and np.allclose(v.sum(axis=axis), 1.0, atol=1e-3)):
        return {"explained": "probabilities", "activation": "softmax"}
    return {"explained": "logits", "activation": "softmax" if exclusive else "sigmoid"}


def _input_batch(model: onnx.ModelProto) -> int | None:
    """The image input's static batch size (None when symbolic)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    shape = value_shape(inputs[0].type) if len(inputs) == 1 else None
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def _time_major(shapes: dict[str, list[Any]], types: dict[str, int], batch: int) -> bool:
    """One float output ``[T, N, V]`` (T > 1 where the probe's batch N sits at axis 1): a
    time-major text recognizer, not a classifier's ``[N, 1, C]``."""
    floats = [s for n, s in shapes.items() if types.get(n) in FLOAT_TYPES]
    return (len(floats) == 1 and len(floats[0]) == 3 and floats[0][1] == batch
            and floats[0][0] != batch and floats[0][0] > 1 and floats[0][2] > 1)


def _classify_declared(declared: dict[str, list[Any] | None], types: dict[str, int],
                       batch: int | None = None) -> bool:
    """One float output whose declared shape is a classifier's [N, C] (or [N, 1, ..., C]),
    N the input's batch where both are static."""
    floats = [s for n, s in declared.items() if types.get(n) in FLOAT_TYPES]
    if len(floats) != 1 or floats[0] is None or len(floats[0]) < 2:
        return False
    shape = floats[0]
    if batch is not None and isinstance(shape[0], int) and shape[0] != batch:
        return False
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
