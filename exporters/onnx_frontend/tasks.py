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
from dataclasses import dataclass, field
from typing import Any

import onnx

from explainer.tasks.registry import FORMATS as FORMAT_SPECS
from explainer.tasks.registry import TASKS as TASK_SPECS
from explainer.tasks.registry import format_names, task_of_format

from ..errors import OnnxExportError
from ..graph import FLOAT_TYPES, value_shape
from .formats import (
    class_count,
    classify_shapes,
    dense_format,
    detect_format,
    given_format,
    listing,
)
from .heads import (
    add_dense_explained,
    add_score_concat,
    dense_targets,
    detection_explained,
    format_outputs,
    head_inputs,
)
from .probe import probe

__all__ = ["DETECT_FORMATS", "FORMATS", "SEGMENT_FORMATS", "SEQUENCE_FORMATS", "TASKS",
           "TaskSpec", "add_dense_explained", "add_score_concat", "dense_targets",
           "detection_explained", "format_outputs", "head_inputs", "resolve_task"]

log = logging.getLogger(__name__)

#: the tasks a bundle can have (:data:`explainer.tasks.TASKS`)
TASKS = tuple(TASK_SPECS)
#: detection output formats (see :mod:`explainer.detection_formats`)
DETECT_FORMATS = format_names("detect")
#: segmentation formats (see :mod:`explainer.segmentation`) and text recognition formats
#: (see :mod:`explainer.sequence`)
SEGMENT_FORMATS = format_names("segment")
SEQUENCE_FORMATS = format_names("sequence")
#: every format, by task (the tasks that have formats)
FORMATS = {task: names for task in TASKS if (names := format_names(task))}


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
        owner = task_of_format(name)
        if owner is None:
            raise OnnxExportError(f"unknown format {name!r}; choose one of "
                                  f"{list(FORMAT_SPECS)} (--format)")
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
    values, hw = probe(model, size)
    shapes = {n: list(v.shape) for n, v in values.items()}
    if task == "auto" and name is None and _time_major(shapes, types, batch or 1):
        task = "sequence"  # [T, N, V]: before the classifier and end2end rules
    if task in ("segment", "sequence"):
        found = dense_format(task, shapes, types, values, name, output, hw)
        if found is None:
            want = FORMAT_SPECS[FORMATS[task][0]].layout  # the task's general layout
            raise OnnxExportError(
                f"task {task!r} needs a float output {want}; the model has "
                f"{listing(shapes, types)} (probed at {hw[0]}x{hw[1]})"
                + ("" if output is None else f"; output {output!r} was asked for (--output)"))
        if isinstance(format, dict):
            found = {**found, **format}
        log.info("task %s, format %s (output %s)", task, found["name"], found["outputs"])
        return TaskSpec(task, found, shapes, hw)
    found = detect_format(shapes, types, hw, values)
    if name is not None and (found is None or found["name"] != name):
        found = given_format(name, shapes, types, hw)
    if isinstance(format, dict):
        found = {**(found or {}), **format}
    if found is None:
        if task == "auto" and classify_shapes(shapes, types):
            return TaskSpec("classify", None, declared, hw)
        if task == "auto":
            for dense in ("segment", "sequence"):
                fmt = dense_format(dense, shapes, types, values, None, output, hw, False)
                if fmt is not None:
                    log.info("task %s, format %s (output %s)", dense, fmt["name"],
                             fmt["outputs"])
                    return TaskSpec(dense, fmt, shapes, hw)
        raise OnnxExportError(
            f"cannot tell what the model's outputs are: {listing(shapes, types)} (probed at "
            f"{hw[0]}x{hw[1]}); pass --task classify, --task segment, --task sequence, or "
            f"--task detect with --format {{{','.join(DETECT_FORMATS)}}} (Python: task=, "
            "format=)")
    found.setdefault("classes", class_count(found, shapes))
    log.info("task detect, format %s (outputs %s)", found["name"], found["outputs"])
    return TaskSpec("detect", found, shapes, hw)


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
