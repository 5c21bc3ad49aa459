"""PyTorch front end: export a model tapped at a layer, and validation against PyTorch autograd.

One module per job: :mod:`.torch_layers` (resolve and tap layers), :mod:`.torch_padding` (size-
dependent padding), :mod:`.torch_reference` (the autograd CAMs), :mod:`.torch_validate` (bundle
vs autograd); this module exports and builds bundles, and re-exports their public names.

Needs the ``torch`` extra (torch, torchvision, onnxscript).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import onnx
import torch
from torch import nn

from explainer.bundle import Bundle
from explainer.preprocessing import Preprocessing

from .build import build_bundle, producer_versions
from .errors import ExportError
from .torch_layers import TappedModel, resolve_layer
from .torch_padding import size_dependent_padding
from .torch_reference import reference_cams, reference_gradcam
from .torch_validate import ValidationReport, recalibrate_batchnorm, relative_l2, validate

__all__ = [
    "ExportError",
    "ValidationReport",
    "export_torch",
    "export_tapped",
    "reference_gradcam",
    "recalibrate_batchnorm",
    "reference_cams",
    "relative_l2",
    "resolve_layer",
    "size_dependent_padding",
    "validate",
]

log = logging.getLogger(__name__)

#: metadata key of the ONNX model where :func:`export_tapped` records how it exported
_NOTES_KEY = "onnxcam.export"


def _example(model: nn.Module, example_input: torch.Tensor | None, shape: Sequence[int]):
    if example_input is not None:
        return example_input.detach()
    generator = torch.Generator().manual_seed(0)
    # batch 2: torch.export specializes a batch of 1, which would freeze the batch dimension
    shape = (max(2, int(shape[0])), *shape[1:])
    param = next(model.parameters(), None)
    return torch.randn(shape, generator=generator, dtype=param.dtype if param is not None else None)


def export_tapped(
    model: nn.Module,
    layers: Sequence[nn.Module | str],
    example_input: torch.Tensor | None = None,
    input_shape: Sequence[int] = (1, 3, 224, 224),
    dynamo: bool = True,
    dynamic_size: bool | Literal["always"] = True,
) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """Export ``model`` with the outputs of ``layers`` as extra graph outputs.

    The batch dimension is symbolic. With ``dynamic_size`` (dynamo exporter only) so are the
    height and width where the model allows it (``torch.export.Dim.AUTO``: a model whose
    code fixes its size keeps it static); they are named ``height`` and ``width``. A model
    that computes padding from its input size in Python (TensorFlow "SAME" padding, see
    :func:`size_dependent_padding`) is exported at the example's size instead, with a
    warning: torch.export would spend minutes, or never end, reasoning about those sizes
    symbolically. ``dynamic_size="always"`` keeps them symbolic anyway.

    How the export went is recorded as JSON in the model's ``metadata_props`` under
    ``"onnxcam.export"`` (``exporter``, ``dynamic_size`` and, when the size is static though
    ``dynamic_size`` asked otherwise, ``dynamic_size_reason``); :func:`bundle_from_tapped`
    copies it to ``manifest["export"]``.

    Returns:
        (model with outputs [logits, *activations], activation tensor names, layer paths).

    Raises:
        ExportError: a layer is unknown or torch.onnx.export failed.
    """
    if dynamic_size not in (True, False, "always"):
        raise ExportError(f"dynamic_size must be True, False or 'always', got {dynamic_size!r}")
    model = model.eval()
    resolved = [resolve_layer(model, layer) for layer in layers]
    tapped = TappedModel(model, [m for _, m in resolved]).eval()
    x = _example(model, example_input, input_shape)
    names = ["logits"] + [f"activation_{i}" for i in range(len(resolved))]
    symbolic = bool(dynamic_size) and dynamo
    reason = None
    if dynamic_size and not dynamo:
        reason = "the TorchScript exporter (dynamo=False) keeps the height and width static"
    elif dynamic_size is True:
        reason = size_dependent_padding(model, x)
        if reason is not None:
            symbolic = False
            log.warning("exporting %s with a static height and width (%s): %s; "
                        "dynamic_size='always' keeps them symbolic", type(model).__name__,
                        "x".join(str(d) for d in x.shape[2:]), reason)
    try:
        if dynamo:
            program = torch.onnx.export(
                tapped,
                (x,),
                dynamo=True,
                input_names=["input"],
                output_names=names,
                dynamic_shapes=({0: torch.export.Dim("batch"), **(
                    {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO} if symbolic else {}
                )},),
                optimize=True,
                verbose=False,
            )
            proto = _name_spatial_dims(program.model_proto)
        else:
            import io

            buffer = io.BytesIO()
            with warnings.catch_warnings():  # the TorchScript exporter is deprecated, not gone
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    tapped,
                    (x,),
                    buffer,
                    dynamo=False,
                    input_names=["input"],
                    output_names=names,
                    dynamic_axes={n: {0: "batch"} for n in ["input", *names]},
                    opset_version=17,
                )
            proto = onnx.load_from_string(buffer.getvalue())
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {err}") from err
    proto = _resolve_identities(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if symbolic and len(dims) == 4 and any(d.HasField("dim_value") for d in dims[2:]):
        symbolic = False
        reason = "torch.export kept them static: the model's code fixes its input size"
    notes: dict[str, Any] = {"exporter": "dynamo" if dynamo else "torchscript",
                             "dynamic_size": symbolic}
    if reason is not None and not symbolic:
        notes["dynamic_size_reason"] = reason
    _set_notes(proto, notes)
    outputs = [o.name for o in proto.graph.output]
    return proto, outputs[1:], [name for name, _ in resolved]


def _set_notes(model: onnx.ModelProto, notes: dict[str, Any]) -> None:
    """Record ``notes`` (JSON) in the model's metadata under :data:`_NOTES_KEY`."""
    for entry in model.metadata_props:
        if entry.key == _NOTES_KEY:
            entry.value = json.dumps(notes)
            return
    model.metadata_props.add(key=_NOTES_KEY, value=json.dumps(notes))


def _notes_of(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The notes :func:`export_tapped` recorded in ``model``, or None."""
    for entry in model.metadata_props:
        if entry.key == _NOTES_KEY:
            return json.loads(entry.value)
    return None


def _name_spatial_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename the symbols of the input's height and width (``s0``...) to ``height``/``width``
    everywhere in the graph."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    names = {dims[2].dim_param: "height", dims[3].dim_param: "width"} if len(dims) == 4 else {}
    names.pop("", None)
    if not names:
        return model
    graph = model.graph
    for info in [*graph.input, *graph.output, *graph.value_info]:
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    return model


def _resolve_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Point tap outputs that are Identity copies at the tensor the rest of the graph reads."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for output in model.graph.output[1:]:
        name = output.name
        node = producers.get(name)
        while node is not None and node.op_type == "Identity":
            consumers = [n for n in model.graph.node if node.input[0] in n.input]
            if len(consumers) <= 1:
                break
            name = node.input[0]
            node = producers.get(name)
        if name != output.name:
            output.name = name
    return model


def export_torch(
    model: nn.Module,
    target_layer: nn.Module | str | Sequence[nn.Module | str],
    example_input: torch.Tensor | None = None,
    input_shape: Sequence[int] = (1, 3, 224, 224),
    labels: str | Sequence[str] | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    dynamo: bool = True,
    dynamic_size: bool | Literal["always"] = True,
    layout: str = "auto",
    token_grid: Sequence[int] | None = None,
    prefix_tokens: int | None = None,
    input_gradient: bool = False,
) -> Bundle:
    """Export a PyTorch classifier as a bundle explained at ``target_layer``.

    Args:
        model: an image classifier returning logits [N, C].
        target_layer: a submodule or its dotted path (``"layer4"``, ``"features.denseblock4"``),
            or a list of them for a layer sweep (``["layer1", "layer2", "layer3", "layer4"]``):
            one bundle, one features run and one backward pass for every layer.
        example_input: an input to trace with; random of ``input_shape`` when None.
        input_shape: NCHW shape of the example input when none is given (the batch stays
            dynamic either way).
        labels: class names, or a named label set such as ``"imagenet"``.
        preprocessing: how images become inputs, recorded in the manifest.
        dynamo: use torch.onnx's dynamo exporter (default) or the legacy TorchScript one.
        dynamic_size: keep the input's height and width symbolic where the model allows it
            (dynamo only), so one bundle explains images at any size. A model that computes
            its padding from the input size in Python (TensorFlow "SAME" padding) is exported
            at the example's size instead, which ``manifest["export"]`` records with the
            reason (see :func:`export_tapped`); ``"always"`` keeps the size symbolic even
            then (the export may take minutes).
        layout: layout of the activation: ``"auto"`` (NCHW/NHWC from the graph, else NCHW
            for feature maps and ``"NLC"`` for transformer tokens [N, L, C]), or one of those.
        token_grid: ``(h, w)`` of the patch tokens of a token activation; inferred when None
            (a ViT-B/16 at 224 pixels: 197 tokens = 1 class token + 14 x 14, the class token
            dropped). Recorded in the manifest.
        prefix_tokens: the tokens before the patches (class, distillation tokens).
        input_gradient: also build the input-gradient graph (guided ReLU) for
            ``method="guided-backprop"`` and ``"guided-gradcam"``.

    Returns:
        A :class:`explainer.Bundle`.
    """
    layers = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
    proto, tensors, paths = export_tapped(
        model, layers, example_input, input_shape, dynamo, dynamic_size
    )
    # a sweep is cut at its first layer in graph order; one backward pass gives every layer
    order = {o: i for i, node in enumerate(proto.graph.node) for o in node.output}
    pairs = sorted(zip(paths, tensors, strict=True), key=lambda p: order.get(p[1], -1))
    return bundle_from_tapped(proto, pairs[0][1], pairs[0][0], labels, preprocessing,
                              layout=layout, token_grid=token_grid, prefix_tokens=prefix_tokens,
                              input_gradient=input_gradient, layers=pairs[1:])


def bundle_from_tapped(
    proto: onnx.ModelProto,
    tensor: str,
    layer_path: str,
    labels: str | Sequence[str] | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    layout: str = "auto",
    token_grid: Sequence[int] | None = None,
    prefix_tokens: int | None = None,
    input_gradient: bool = False,
    layers: Sequence[tuple[str, str]] = (),
) -> Bundle:
    """Build the bundle for one tapped tensor of a model exported by :func:`export_tapped`
    (``layout``, ``token_grid``, ``prefix_tokens`` as for :func:`export_torch`); how the model
    was exported goes to ``manifest["export"]``."""
    logits = proto.graph.output[0].name
    bundle = build_bundle(
        proto,
        tensor,
        output=logits,
        target_layer=layer_path,
        labels=labels,
        preprocessing=preprocessing,
        producer=producer_versions(("torch", "torchvision", "onnxscript")),
        target_layout=layout,
        token_grid=token_grid,
        prefix_tokens=prefix_tokens,
        input_gradient=input_gradient,
        layers=layers,
    )
    notes = _notes_of(proto)
    if notes is not None:
        bundle.manifest["export"] = notes
    return bundle
