"""Build a :class:`explainer.Bundle` from an ONNX model and a target tensor.

ONNX model -> shape inference -> split at the target -> gradient head (our autodiff) -> manifest.
Needs onnx and numpy only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import onnx

from explainer.bundle import SCHEMA_VERSION, Bundle
from explainer.image import Preprocessing

from .autodiff import build_gradient_graph
from .split import SplitError, split_model

__all__ = ["build_bundle", "infer_shapes", "producer_versions", "tensor_shape", "value_shape"]

log = logging.getLogger(__name__)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference with data propagation (keeps symbolic dims such as the batch)."""
    return onnx.shape_inference.infer_shapes(model, check_type=False, data_prop=True)


def value_shape(info: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Dims of a typed value: ints when static, names when symbolic (None when unnamed);
    None when the value has no shape at all."""
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in tensor_type.shape.dim
    ]


def tensor_shape(model: onnx.ModelProto, name: str) -> list[int | str | None]:
    """Shape of tensor ``name`` of an inferred model (see :func:`value_shape`)."""
    for info in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if info.name == name:
            shape = value_shape(info)
            if shape is not None:
                return shape
    raise SplitError(f"no shape known for tensor {name!r}; run shape inference on the model")


def producer_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Versions of the packages that produced a bundle."""
    versions = {}
    for package in ("onnxcam", "onnx", "onnxruntime", *extra):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def build_bundle(
    model: onnx.ModelProto,
    target: str,
    *,
    output: str | None = None,
    target_layer: str | None = None,
    input_layout: str = "NCHW",
    target_layout: str = "NCHW",
    labels: str | Sequence[str] | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    producer: dict[str, str] | None = None,
) -> Bundle:
    """Split ``model`` at tensor ``target`` and give the head its gradient.

    Args:
        model: the whole classifier (one image input).
        target: name of the activation tensor to explain.
        output: the logits output (the first graph output other than ``target`` by default).
        target_layer: a human name of the layer (module path, node name) for the manifest.
        input_layout: layout of the model input, "NCHW" or "NHWC".
        target_layout: layout of the activation, "NCHW" or "NHWC".
        labels: class names, or the name of a label set such as "imagenet".
        preprocessing: how images become inputs (recorded for :meth:`Explainer.preprocess`).
        producer: extra producer versions for the manifest.

    Returns:
        The bundle (features graph, gradient head, manifest).
    """
    model = infer_shapes(model)
    outputs = [o.name for o in model.graph.output if o.name != target]
    output = output or (outputs[0] if outputs else None)
    if output is None or output not in outputs:
        raise SplitError(f"output {output!r} is not among the model outputs {outputs}")
    split = split_model(model, target, [output])

    taken = {t for n in split.head.graph.node for t in [*n.input, *n.output]}
    taken |= {i.name for i in split.head.graph.input}
    seed_name, gradient_name = _unique("seed", taken), _unique("gradient", taken)
    head = build_gradient_graph(
        split.head, target, output, seed_name=seed_name, gradient_name=gradient_name
    )

    input_info = split.features.graph.input
    if len(input_info) != 1:
        raise SplitError(
            f"the features graph needs {len(input_info)} inputs {[i.name for i in input_info]}; "
            "onnxcam explains single-input image models"
        )
    logits_shape = tensor_shape(model, output)
    num_classes = logits_shape[-1]
    if not isinstance(num_classes, int) or len(logits_shape) != 2:
        raise SplitError(
            f"output {output!r} has shape {logits_shape}; expected [batch, num_classes] with a "
            "static number of classes"
        )
    if isinstance(preprocessing, Preprocessing):
        preprocessing = preprocessing.to_dict()
    if isinstance(labels, (list, tuple)):
        labels = [str(label) for label in labels]
        if len(labels) != num_classes:
            raise ValueError(f"{len(labels)} labels given for {num_classes} classes")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "input": {
            "name": input_info[0].name,
            "shape": tensor_shape(model, input_info[0].name),
            "layout": input_layout,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(
                input_info[0].type.tensor_type.elem_type
            ).name,
        },
        "target": {
            "layer": target_layer or target,
            "tensor": target,
            "layout": target_layout,
            "shape": tensor_shape(model, target),
        },
        "head": {
            "inputs": split.cut_tensors,
            "seed": seed_name,
            "logits": output,
            "gradient": gradient_name,
        },
        "num_classes": num_classes,
        "labels": labels,
        "preprocessing": preprocessing,
        "producer": {**producer_versions(), **(producer or {})},
    }
    log.info("bundle: target %s (%s), head %d nodes", target, target_layer, len(head.graph.node))
    return Bundle(split.features, head, manifest)
