"""Build a :class:`explainer.Bundle` from an ONNX model and a target tensor.

ONNX model (shapes inferred once) -> split at the target -> gradient head (our autodiff) ->
manifest -> explanation graph (features + head + Grad-CAM in one graph, schema 2). Needs onnx
and numpy only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import onnx

from explainer.activations import infer_token_grid
from explainer.bundle import SCHEMA_VERSION, Bundle
from explainer.labels import check_labels
from explainer.preprocessing import Preprocessing

from .autodiff import GUIDED_RULES, build_gradient_graph
from .compose import build_explanation_graph, explanation_blocker
from .errors import OnnxExportError, SplitError
from .graph import Graph, prune, unique_name
from .layouts import detect_layouts
from .split import split_model

__all__ = ["build_bundle", "producer_versions"]

log = logging.getLogger(__name__)


def producer_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Versions of the packages that produced a bundle."""
    versions = {}
    for package in ("onnxcam", "onnx", "onnxruntime", *extra):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _outputs_text(g: Graph) -> str:
    """Every graph output with its shape (``?`` unknown), for messages."""
    def dims(name: str) -> str:
        shape = g.shape(name)
        return "[?]" if shape is None else "[" + ", ".join(
            "?" if d is None else str(d) for d in shape) + "]"

    return ", ".join(f"{o.name!r} {dims(o.name)}" for o in g.model.graph.output)


def _num_classes(g: Graph, output: str) -> int:
    shape = g.shape(output)
    if shape is None or len(shape) != 2 or not isinstance(shape[-1], int):
        several = len(g.model.graph.output) > 1
        raise OnnxExportError(
            f"output {output!r} has shape {None if shape is None else list(shape)}; expected "
            "[batch, num_classes] with a static number of classes"
            + (f" (the model's outputs: {_outputs_text(g)})" if several else "")
        )
    return shape[-1]


def _value_entry(g: Graph, name: str, layout: str, key: str = "name") -> dict[str, Any]:
    """Manifest entry of a tensor: name, shape, layout (and dtype for the model input)."""
    entry: dict[str, Any] = {key: name, "shape": list(g.shape(name) or []), "layout": layout}
    if key == "name":
        entry["dtype"] = onnx.helper.tensor_dtype_to_np_dtype(g.elem_type(name)).name
    return entry


def activation_layout(g: Graph, target: str) -> str:
    """The layout of an activation from the graph's ops (NCHW/NHWC), else from its rank:
    NCHW for rank 4, NLC (transformer tokens) for rank 3."""
    found = detect_layouts(g).get(target)
    if found in ("NCHW", "NHWC"):
        return found
    rank = g.rank(target)
    if rank not in (3, 4):
        raise OnnxExportError(
            f"tensor {target!r} has shape {g.shape(target)}; explain a rank-4 feature map or "
            "rank-3 tokens"
        )
    return "NCHW" if rank == 4 else "NLC"


def _tokens(
    g: Graph, target: str, input_layout: str, layout: str,
    grid: Sequence[int] | None, prefix: int | None,
) -> dict[str, Any]:
    """Manifest fields of a token activation: its grid and prefix tokens."""
    if layout != "NLC":
        return {}
    tokens = (g.shape(target) or (None, None))[1]
    if grid is None:
        shape = g.shape(g.graph_inputs()[0]) or ()
        size = [shape[input_layout.index(a)] for a in "HW"] if len(shape) == 4 else None
        if not isinstance(tokens, int):
            raise OnnxExportError(
                f"tensor {target!r} has {tokens} tokens; pass token_grid=(h, w) and "
                "prefix_tokens=n"
            )
        size = size if size and all(isinstance(d, int) for d in size) else None
        grid, found = infer_token_grid(tokens, size)
        prefix = found if prefix is None else prefix
    elif prefix is None:
        prefix = tokens - grid[0] * grid[1] if isinstance(tokens, int) else 0
    return {"token_grid": [int(grid[0]), int(grid[1])], "prefix_tokens": int(prefix or 0)}


def build_bundle(
    model: onnx.ModelProto | Graph,
    target: str,
    *,
    output: str | None = None,
    target_layer: str | None = None,
    input_layout: str = "NCHW",
    target_layout: str = "NCHW",
    labels: str | Sequence[str] | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    producer: dict[str, str] | None = None,
    token_grid: Sequence[int] | None = None,
    prefix_tokens: int | None = None,
    input_gradient: bool = False,
    layers: Sequence[tuple[str, str]] = (),
    task: str = "classify",
    format: dict[str, Any] | None = None,  # noqa: A002  (the manifest's word)
    keep_outputs: Sequence[str] = (),
    score: str = "logit",
) -> Bundle:
    """Split ``model`` at tensor ``target`` and give the head its gradient.

    Args:
        model: the whole classifier (one image input), or its shape-inferred
            :class:`~exporters.graph.Graph` (a ModelProto is inferred once here).
        target: name of the activation tensor to explain.
        output: the logits output (the first graph output other than ``target`` by default).
        target_layer: a human name of the layer (module path, node name) for the manifest.
        input_layout: layout of the model input, "NCHW" or "NHWC".
        target_layout: layout of the activation: "NCHW", "NHWC", "NLC" (transformer tokens),
            or "auto" (from the graph's ops, else NCHW for rank 4 and NLC for rank 3).
        labels: class names, or the name of a label set such as "imagenet".
        preprocessing: how images become inputs (recorded for :meth:`Explainer.preprocess`).
        producer: extra producer versions for the manifest.
        token_grid: (h, w) of the patch tokens of an "NLC" activation (inferred when None,
            see :func:`explainer.activations.infer_token_grid`).
        prefix_tokens: tokens before the patches (class token...); inferred with the grid.
        input_gradient: also build the input-gradient graph (the whole model, the guided
            gradient of the class score w.r.t. the input) for Guided Backpropagation and
            Guided Grad-CAM.
        layers: a layer sweep: more (layer name, tensor) pairs after ``target``. The head
            then outputs their activations, and one backward pass gives every layer's
            gradient; ``manifest["layers"]`` lists them, ``target`` first.
        task: ``"classify"`` (``output`` is ``[batch, classes]``) or ``"detect"``
            (``output`` is the tensor whose seeded sum the head differentiates, any shape;
            ``format`` says how to read the model's outputs, see
            :mod:`explainer.detection`).
        format: a detector's format parameters (the manifest's ``format``).
        keep_outputs: model outputs the head also returns (a detector's outputs, decoded by
            the runtime); recorded as ``manifest["head"]["outputs"]``.
        score: what ``output`` holds: ``"logit"`` (scores before a softmax) or
            ``"probability"`` (a softmax's output whose logits could not be found); recorded
            as ``manifest["head"]["score"]`` when not ``"logit"``, so the runtime shows these
            probabilities as they are instead of a softmax of them.

    Returns:
        The bundle (features graph, gradient head, manifest and, where the model allows, the
        explanation graph: see :mod:`exporters.compose`).

    Raises:
        OnnxExportError: the output is not [batch, classes].
        explainer.LabelError: ``labels`` does not name one class per output.
        SplitError: the model cannot be cut at ``target``.
        exporters.autodiff.GradientError: the head cannot be differentiated.
    """
    if score not in ("logit", "probability"):
        raise OnnxExportError(f"score must be 'logit' or 'probability', got {score!r}")
    if input_gradient and task != "classify":  # before any graph is built
        raise OnnxExportError(f"input_gradient=True (--input-gradient) is for classifiers; "
                              f"this is a {task} model")
    g = model if isinstance(model, Graph) else Graph(model, infer=True)
    if target_layout == "auto":
        target_layout = activation_layout(g, target)
    outputs = [o.name for o in g.model.graph.output if o.name != target]
    output = output or (outputs[0] if outputs else None)
    if task == "classify":
        if output is None or output not in outputs:
            raise OnnxExportError(f"output {output!r} is not among the model outputs "
                                  f"{_outputs_text(g)}")
        num_classes = _num_classes(g, output)
    else:
        if output is None or g.shape(output) is None:
            raise OnnxExportError(f"the explained tensor {output!r} is not a tensor of the "
                                  "model with a known shape")
        num_classes = (format or {}).get("classes") or (
            len(labels) if isinstance(labels, (list, tuple)) else 1)
    labels = check_labels(labels, num_classes)  # before any graph is built
    kept = [o for o in keep_outputs if o != output]
    # sweep layers that the first layer does not compute are cut at too (parallel head inputs)
    computed = {o for i in g.descendants(target) for o in g.nodes[i].output}
    also: list[str] = []
    for _, tensor in layers:
        if tensor not in computed:
            also.append(tensor)
            computed |= {o for i in g.descendants(tensor) for o in g.nodes[i].output}
    outside = [o for o in kept if o not in computed]
    if outside:
        raise SplitError(f"output(s) {outside} do not depend on the cut tensors "
                         f"{[target, *also]}; cut before the head branches that compute them "
                         "(an earlier target)")
    split = split_model(g, target, [output, *kept], also=also)
    if len(split.features.graph.input) != 1:
        names = [i.name for i in split.features.graph.input]
        raise SplitError(
            f"the features graph needs {len(names)} inputs {names}; onnxcam explains "
            "single-input image models"
        )
    taken = set(g.names)
    seed_name, gradient_name = unique_name("seed", taken), unique_name("gradient", taken)
    sweep = [(name, tensor, unique_name(f"gradient_{tensor}", taken)) for name, tensor in layers]
    # the head keeps the inferred value infos of the whole model: no second shape inference
    head = build_gradient_graph(
        Graph(_with_outputs(g, split.head, [t for _, t, _ in sweep])),
        [target, *(t for _, t, _ in sweep)], output, seed_name=seed_name,
        gradient_name=[gradient_name, *(n for _, _, n in sweep)],
    )

    if isinstance(preprocessing, Preprocessing):
        preprocessing = preprocessing.to_dict()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "input": _value_entry(g, split.features.graph.input[0].name, input_layout),
        "target": {"layer": target_layer or target,
                   **_value_entry(g, target, target_layout, key="tensor"),
                   **_tokens(g, target, input_layout, target_layout, token_grid, prefix_tokens)},
        "head": {"inputs": split.cut_tensors, "seed": seed_name, "logits": output,
                 "gradient": gradient_name, **({"outputs": kept} if kept else {}),
                 **({"score": score} if score != "logit" else {})},
        "task": task,
        **({"format": format} if format else {}),
        "num_classes": num_classes,
        "labels": labels,
        "preprocessing": preprocessing,
        "producer": {**producer_versions(), **(producer or {})},
    }
    if sweep:
        manifest["layers"] = [
            {"layer": target_layer or target, "gradient": gradient_name,
             **{k: v for k, v in manifest["target"].items() if k != "layer"}},
            *(_layer_entry(g, name, tensor, grad, input_layout) for name, tensor, grad in sweep),
        ]
    log.info("bundle: target %s (%s), head %d nodes", target, target_layer, len(head.graph.node))
    guided = _input_gradient(g, output, manifest) if input_gradient else None
    return Bundle(split.features, head, manifest, input_gradient=guided,
                  explanation=_explanation(split.features, head, manifest))


def _with_outputs(g: Graph, head: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """The head with the activations of a layer sweep as extra outputs (those computed in it;
    the others are head inputs).

    Raises:
        SplitError: a layer's tensor is neither computed in the head nor one of its inputs.
    """
    if not tensors:
        return head
    produced = {o for node in head.graph.node for o in node.output}
    cut = {i.name for i in head.graph.input}
    outside = [t for t in tensors if t not in produced and t not in cut]
    if outside:
        raise SplitError(
            f"sweep tensor(s) {outside} are not after the first layer's tensor; list the layers "
            "of a sweep from the input to the output, each after the one before"
        )
    model = onnx.ModelProto()
    model.CopyFrom(head)
    model.graph.output.extend(g.value_info(t) for t in tensors if t in produced)
    return model


def _layer_entry(g: Graph, name: str, tensor: str, gradient: str, input_layout: str
                 ) -> dict[str, Any]:
    """The manifest entry of one sweep layer after the first (its activation is a head output)."""
    layout = activation_layout(g, tensor)
    return {"layer": name, "gradient": gradient, **_value_entry(g, tensor, layout, key="tensor"),
            **_tokens(g, tensor, input_layout, layout, None, None)}


def _input_gradient(g: Graph, output: str, manifest: dict[str, Any]) -> onnx.ModelProto:
    """The whole model with the guided gradient of ``sum(seed * logits)`` w.r.t. its input
    (Guided Backpropagation's ReLU rule), and its manifest entry."""
    source = manifest["input"]["name"]
    if g.elem_type(source) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise OnnxExportError(
            f"input {source!r} is {manifest['input']['dtype']}: an input gradient needs a float "
            "input (export without input_gradient=True)"
        )
    model = onnx.ModelProto()
    model.CopyFrom(g.model)
    prune(model.graph, [output])  # the model alone: logits, no tapped activations
    known = {v.name for v in [*model.graph.value_info, *model.graph.output]}
    produced = {o for node in model.graph.node for o in node.output}
    model.graph.value_info.extend(  # keep the types of former outputs: no new inference
        g.value_info(name) for name in sorted(produced - known) if name in g.types)
    taken = set(g.names)
    seed, gradient = unique_name("seed", taken), unique_name("input_gradient", taken)
    guided = build_gradient_graph(Graph(model), source, output, seed_name=seed,
                                  gradient_name=gradient, rules=GUIDED_RULES)
    manifest["input_gradient"] = {"file": "input_gradient.onnx", "input": source, "seed": seed,
                                  "logits": output, "gradient": gradient, "rule": "guided ReLU"}
    return guided


def _explanation(features: onnx.ModelProto, head: onnx.ModelProto,
                 manifest: dict[str, Any]) -> onnx.ModelProto | None:
    """Add the Grad-CAM explanation graph (and its manifest entry) where the model allows."""
    blocker = explanation_blocker(manifest, features=features)
    activation = head.graph.input[0].type.tensor_type.elem_type
    if not blocker and activation != onnx.TensorProto.FLOAT:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(activation)
        blocker = f"the activation is {dtype}, not float32"
    if blocker:
        log.info("no explanation graph (%s): the runtime uses the two graphs", blocker)
        manifest["explanation"] = None
        return None
    model, manifest["explanation"] = build_explanation_graph(features, head, manifest)
    return model
