"""The ONNX front end's public API: :func:`export_onnx` and :func:`candidate_layers`.

A deployed model goes: load (:mod:`.load`) -> one shape inference -> choose the output
(:mod:`.outputs`) -> candidate layers and layouts (:mod:`.candidates`, :mod:`.layouts`) -> the
target -> rewrites (:mod:`.rewrites`) -> :func:`exporters.build.build_bundle`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx

from explainer.bundle import Bundle
from explainer.labels import check_labels
from explainer.preprocessing import Preprocessing, complete_preprocessing

from ..build import build_bundle
from ..errors import GradientError, OnnxExportError, SplitError
from ..graph import Graph, infer_shapes
from ..layouts import SUPPORTED_LAYOUTS, shape_layout
from ..shapes import recover_shapes
from .candidates import Candidate, analyse, auto_targets, gradient_checked, image_input
from .defaults import guess_preprocessing, task_labels, task_preprocessing
from .heads import add_dense_explained, add_score_concat, detection_explained, format_outputs
from .load import load_model, restore_weights, strip_weights
from .outputs import resolve_output
from .rewrites import add_batch_axis, fold_softmax_wrappers, read_batch_from
from .targets import input_layout_of, resolve_target, task_targets
from .tasks import TaskSpec, resolve_task

__all__ = ["candidate_layers", "export_onnx", "inspect_model"]

log = logging.getLogger(__name__)

#: how many candidates ``target="auto"`` tries, from the last one back
_AUTO_TRIES = 3


def _analysed(model: onnx.ModelProto, edit: Callable[[onnx.ModelProto], None] | None = None,
              size: tuple[int, int] | None = None
              ) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """The loaded model without its large weights (``edit``-ed), shapes inferred once (the one
    shape inference of the export; ``size``: an input (H, W) the model runs at, for probe
    runs), and the weights to restore."""
    light, weights = strip_weights(model)
    if edit is not None:
        edit(light)
    return fold_softmax_wrappers(recover_shapes(infer_shapes(light), size=size)), weights


def _prepare(
    model: onnx.ModelProto, output: str | None, pre_softmax: bool
) -> tuple[Graph, str, dict[str, Any], dict[str, onnx.TensorProto]]:
    """Strip the weights, infer shapes once, and expose the explained output."""
    inferred, weights = _analysed(model)
    resolved, explained, notes = resolve_output(Graph(inferred), output, pre_softmax)
    return Graph(resolved), explained, notes, weights


def _prepare_task(
    model: onnx.ModelProto, spec: TaskSpec
) -> tuple[Graph, str, dict[str, Any], dict[str, onnx.TensorProto]]:
    """For a detector, segmenter or text recognizer: strip the weights, infer shapes once, and
    find the tensor the head differentiates."""
    fmt = dict(spec.format or {})
    if spec.task == "detect":
        inferred, weights = _analysed(model, lambda light: add_score_concat(light, fmt),
                                      spec.size)
        g = Graph(inferred)
        explained = detection_explained(g, fmt)
    else:
        inferred, weights = _analysed(
            model, lambda light: add_dense_explained(light, spec.task, fmt), spec.size)
        g = Graph(inferred)
        explained = fmt["tensor"]
    notes = {"task": spec.task, "format": fmt["name"], "explained": explained,
             "output": format_outputs(fmt)}
    return g, explained, {**notes, "format": fmt}, weights


def candidate_layers(
    model: str | os.PathLike[str] | onnx.ModelProto,
    output: str | None = None,
    pre_softmax: bool = True,
    task: str = "auto",
    format: str | dict[str, Any] | None = None,  # noqa: A002
) -> list[Candidate]:
    """List the spatial activations one can explain ``model`` from.

    Args:
        model: an ONNX file path or ModelProto.
        output: the output to explain (see :func:`export_onnx`).
        pre_softmax: look through a final Softmax (see :func:`export_onnx`).
        task: the model's task, ``"auto"`` to tell it from the outputs (see
            :func:`export_onnx`).
        format: a detector's output format (see :func:`export_onnx`).

    Returns:
        Candidates on the path from the input to the output, in topological order;
        :func:`~exporters.onnx_frontend.candidates.auto_targets` orders those ``target="auto"``
        tries (for a detector, :func:`detector_targets` gives the auto targets).
    """
    return inspect_model(model, output, pre_softmax, task, format)[0]


def inspect_model(
    model: str | os.PathLike[str] | onnx.ModelProto,
    output: str | None = None,
    pre_softmax: bool = True,
    task: str = "auto",
    format: str | dict[str, Any] | None = None,  # noqa: A002
    *,
    input_layout: str = "auto",
) -> tuple[list[Candidate], TaskSpec, list[str]]:
    """:func:`candidate_layers`, the model's :class:`TaskSpec`, and the tensors
    ``target="auto"`` explains (a detector's head inputs; for a classifier, the first of
    :func:`auto_targets` when any). The candidates' ``differentiable`` is the export's own
    check (:func:`~exporters.onnx_frontend.candidates.gradient_checked`). ``spec.input`` is
    ``(input name, shape, layout)``: ``input_layout`` when given, else the detected layout, or
    None when the export could not tell it (it then needs ``input_layout``)."""
    loaded = add_batch_axis(load_model(model))
    spec = resolve_task(loaded, task, format, output)
    if spec.task != "classify":
        g, explained, notes, _ = _prepare_task(loaded, spec)
        spec.format = notes["format"]
    else:
        g, explained, _, _ = _prepare(loaded, output, pre_softmax)
    candidates, layouts = analyse(g, explained)
    candidates = gradient_checked(g, candidates, explained)  # as the export checks them
    try:
        found: str | None = input_layout_of(g, layouts, input_layout)
    except OnnxExportError:
        found = None
    spec.input = (image_input(g), list(g.shape(image_input(g)) or []), found)
    if spec.task != "classify":
        return candidates, spec, task_targets(g, spec.task, candidates, explained,
                                               format_outputs(spec.format))
    return candidates, spec, [c.tensor for c in auto_targets(candidates)[:1]]


def _notes(g: Graph, model: Any, target: str, notes: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``export`` section: how the output and the target were chosen."""
    batch = (g.shape(image_input(g)) or (None,))[0]
    notes.update({
        "source": None if isinstance(model, onnx.ModelProto) else Path(model).name,
        "target": target,
        "static_batch": batch if isinstance(batch, int) else None,
    })
    return notes


def _build(
    g: Graph, candidate: tuple[str, str, str], layout: str | None, options: dict[str, Any],
    token: Candidate | None = None,
) -> Bundle:
    """The bundle for one target: (tensor, node, op) at ``layout`` (``token``: the candidate
    whose grid an ``"NLC"`` target takes)."""
    tensor, node, op = candidate
    if layout not in (*SUPPORTED_LAYOUTS, "NLC"):
        raise OnnxExportError(
            f"cannot tell the layout of tensor {tensor!r} ({op} node {node!r}, shape "
            f"{g.shape(tensor)}); pass layout='NCHW' or 'NHWC'"
        )
    bundle = build_bundle(
        read_batch_from(g, tensor), tensor, output=options["explained"], target_layer=node,
        input_layout=options["input_layout"], target_layout=layout, labels=options["labels"],
        preprocessing=options["preprocessing"], producer={"exporter": "onnxcam.exporters.onnx"},
        token_grid=token.token_grid if token else None,
        prefix_tokens=token.prefix_tokens if token else None,
        input_gradient=options["input_gradient"],
        layers=options.get("layers", ()),
        task=options.get("task", "classify"), format=options.get("format"),
        keep_outputs=options.get("keep_outputs", ()),
        score=options["notes"].get("score", "logit"),
    )
    bundle.manifest["export"] = options["notes"]
    restore_weights([m for m in (bundle.features, bundle.head, bundle.input_gradient) if m],
                    options["weights"])
    if bundle.explanation is not None:
        restore_weights([bundle.explanation], options["weights"], prefixes=("features/", "head/"))
    if bundle.manifest["head"]["inputs"][1:]:
        log.info("%r is not a clean cut: the head also reads %s from the features graph",
                 tensor, bundle.manifest["head"]["inputs"][1:])
    return bundle


def _build_auto(
    g: Graph, candidates: list[Candidate], layout: str, options: dict[str, Any]
) -> Bundle:
    """Try the automatic targets best first; the first that builds wins."""
    tries = auto_targets(candidates, layout)[:_AUTO_TRIES]
    if not tries:
        raise OnnxExportError(
            f"no spatial activation on the path to {options['explained']!r} has a "
            f"differentiable head and a known layout ({len(candidates)} candidates; see "
            "`onnxcam inspect`); pass target= and layout= explicitly"
        )
    errors = []
    for c in tries:
        chosen = layout if layout != "auto" and c.layout != "NLC" else c.layout
        try:
            bundle = _build(g, (c.tensor, c.node, c.op_type), chosen, options,
                            c if c.layout == "NLC" else None)
        except (GradientError, SplitError) as err:
            log.warning("candidate %s failed (%s); trying the one before", c.tensor, err)
            errors.append(f"{c.tensor}: {err}")
            continue
        log.info("auto target: %s (%s node %s, shape %s, %s)", c.tensor, c.op_type, c.node,
                 list(c.shape), chosen)
        return bundle
    raise OnnxExportError("no candidate target could be differentiated: " + "; ".join(errors))


def export_onnx(
    model: str | os.PathLike[str] | onnx.ModelProto,
    target: str | Sequence[str] = "auto",
    layout: str = "auto",
    output: str | None = None,
    labels: str | Sequence[str] | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    *,
    input_layout: str = "auto",
    pre_softmax: bool = True,
    input_gradient: bool = False,
    task: str = "auto",
    format: str | dict[str, Any] | None = None,  # noqa: A002  (the manifest's word)
) -> Bundle:
    """Build a bundle from an ONNX classifier or detector (no torch needed).

    Args:
        model: an ONNX file (external-data weights are read from its directory) or a
            ModelProto. Opsets older than 13 are converted to 13.
        target: ``"auto"`` (the last explainable spatial activation, see
            :mod:`exporters.onnx_frontend.candidates`), a tensor name, or a node name (its
            first output); a list of them for a layer sweep (one bundle, every layer's maps
            from one backward pass, see :mod:`explainer.layers`).
        layout: layout of the target activation: ``"auto"`` (detected), ``"NCHW"`` or
            ``"NHWC"``.
        output: the model output to explain when it has several (default: the first
            Softmax output, else the first floating-point output of rank >= 2; logged).
        labels: class names, or a label set name such as ``"imagenet"``.
        preprocessing: how images become inputs. When None a default is recorded for 3-channel
            inputs: resize/crop to the input size, ImageNet mean/std for float inputs, raw
            0..255 pixels for uint8 inputs (which normalize inside the graph); it is logged.
            A dict (a JSON ``--preprocessing``) takes the keys it leaves out from that default,
            and its layout, when it leaves it out, from the model input; a layout it gives is
            the input's (as ``input_layout``). See
            :func:`explainer.preprocessing.complete_preprocessing`.
        input_layout: layout of the model input, ``"auto"`` (detected), ``"NCHW"`` or ``"NHWC"``.
        pre_softmax: when the output is a Softmax/LogSoftmax over the classes, explain its
            input (the logits) instead, as Grad-CAM is defined on pre-softmax scores.
        input_gradient: also build the input-gradient graph for the pixel-space methods
            (Guided Backpropagation, Guided Grad-CAM).
        task: ``"auto"`` (told from the outputs, see :mod:`exporters.onnx_frontend.tasks`),
            ``"classify"`` or ``"detect"``. A detector's bundle keeps its outputs, and
            ``target="auto"`` explains where its features enter the detection head: one
            tensor per stride, a layer sweep whose maps are fused.
        format: a detector's output format (``"yolov8"``, ``"yolov5"``, ``"end2end"``,
            ``"boxes_scores_labels"``; see :mod:`explainer.detection`) or a dict of its
            parameters; None detects it.

    Returns:
        The bundle; ``manifest["target"]["layer"]`` names the node that produces the explained
        tensor and ``manifest["export"]`` records how it was chosen.

    Raises:
        OnnxExportError: the model or the target cannot be explained (message says why).
        explainer.LabelError: ``labels`` does not name one class per output.
        exporters.autodiff.MissingGradientRule: the head past a given target has an op without
            a gradient rule.
    """
    for name, value in (("layout", layout), ("input_layout", input_layout)):
        if value not in ("auto", *SUPPORTED_LAYOUTS):
            raise OnnxExportError(f"{name} must be 'auto', 'NCHW' or 'NHWC', got {value!r}")
    given = preprocessing  # a dict leaves what it does not set (the layout...) to the model
    if isinstance(given, dict):
        if given.get("layout") and input_layout == "auto":
            input_layout = given["layout"]  # the layout of the batch is the input's
        preprocessing = Preprocessing.from_dict(given, base=Preprocessing())  # checked now
        if not {"resize", "crop", "letterbox"} & set(given):
            preprocessing = None  # no size given: the task probe picks its own
    loaded = add_batch_axis(load_model(model))
    spec = resolve_task(loaded, task, format, output,
                        preprocessing.size if preprocessing is not None else None)
    if spec.task != "classify":
        return _export_task(loaded, model, spec, target, layout, labels, given,
                            input_layout, input_gradient)
    g, explained, notes, weights = _prepare(loaded, output, pre_softmax)
    classes = (g.shape(explained) or (None,))[-1]
    if isinstance(classes, int):
        labels = check_labels(labels, classes)  # before any graph is built
    candidates, layouts = analyse(g, explained)
    in_layout = input_layout_of(g, layouts, input_layout)
    options = {"explained": explained, "input_layout": in_layout, "labels": labels,
               "preprocessing": preprocessing, "weights": weights,
               "input_gradient": input_gradient,
               "notes": _notes(g, model, target, notes)}
    options["preprocessing"], notes["preprocessing_guessed"] = complete_preprocessing(
        given, in_layout, lambda: guess_preprocessing(g, in_layout))
    if target == "auto":
        return _build_auto(g, candidates, layout, options)
    if not isinstance(target, str):  # a layer sweep: cut at the first in graph order
        resolved = sorted((resolve_target(g, candidates, t) for t in target),
                          key=lambda r: g.producer.get(r[0], -1))
        options["layers"] = [(node, tensor) for tensor, node, _ in resolved[1:]]
        target = resolved[0][0]
    tensor, node, op = resolve_target(g, candidates, target)
    if g.rank(tensor) not in (3, 4):
        raise OnnxExportError(
            f"target tensor {tensor!r} ({op} node {node!r}) has shape {g.shape(tensor)}; "
            "Grad-CAM needs a rank-4 spatial activation or rank-3 tokens (see `onnxcam inspect`)"
        )
    if g.rank(tensor) == 3:
        chosen = "NLC"
    else:
        chosen = layout if layout != "auto" else (
            layouts.get(tensor) or shape_layout(g.shape(tensor)))
    log.info("target %s (%s node %s, %s)", tensor, op, node, chosen)
    return _build(g, (tensor, node, op), chosen, options)


def _export_task(
    loaded: onnx.ModelProto, source: Any, spec: TaskSpec, target: str | Sequence[str],
    layout: str, labels: str | Sequence[str] | None,
    preprocessing: Preprocessing | dict[str, Any] | None, input_layout: str, input_gradient: bool,
) -> Bundle:
    """:func:`export_onnx` for a detector, segmenter or text recognizer: the head
    differentiates the explained tensor (and keeps a detector's outputs); the auto target is
    where the features enter the head (see :func:`task_targets`)."""
    g, explained, notes, weights = _prepare_task(loaded, spec)
    fmt = notes.pop("format")
    notes["format"] = fmt["name"]
    labels = task_labels(loaded, spec.task, fmt, labels)
    if fmt.get("classes") is None and isinstance(labels, (list, tuple)):
        fmt["classes"] = len(labels)
    if fmt.get("classes") is not None:
        labels = check_labels(labels, fmt["classes"])
    candidates, layouts = analyse(g, explained)
    in_layout = input_layout_of(g, layouts, input_layout)
    options = {"explained": explained, "input_layout": in_layout, "labels": labels,
               "preprocessing": preprocessing, "weights": weights,
               "input_gradient": input_gradient,  # build_bundle refuses it for these tasks
               "notes": _notes(g, source, target, notes), "task": spec.task, "format": fmt,
               "keep_outputs": format_outputs(fmt) if spec.task == "detect" else []}
    options["preprocessing"], notes["preprocessing_guessed"] = complete_preprocessing(
        preprocessing, in_layout, lambda: task_preprocessing(g, spec.task, in_layout))
    if target == "auto":
        tensors = task_targets(g, spec.task, candidates, explained, options["keep_outputs"])
        if not tensors:
            raise OnnxExportError(
                f"found no feature map entering the head of {explained!r} with a "
                "differentiable path (see `onnxcam inspect`); pass --target (target=)")
        log.info("auto targets (the head's inputs): %s", tensors)
    else:
        tensors = [target] if isinstance(target, str) else list(target)
    resolved = sorted((resolve_target(g, candidates, t) for t in tensors),
                      key=lambda r: g.producer.get(r[0], -1))
    options["layers"] = [(node, tensor) for tensor, node, _ in resolved[1:]]
    tensor, node, op = resolved[0]
    if g.rank(tensor) != 4:
        raise OnnxExportError(f"target tensor {tensor!r} ({op} node {node!r}) has shape "
                              f"{g.shape(tensor)}; a {spec.task} model is explained at a "
                              "feature map [N, C, H, W] (see `onnxcam inspect`)")
    chosen = layout if layout != "auto" else (layouts.get(tensor) or shape_layout(g.shape(tensor)))
    return _build(g, (tensor, node, op), chosen, options)
