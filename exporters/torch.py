"""PyTorch front end: export a model tapped at a layer, and validation against PyTorch autograd.

Needs the ``torch`` extra (torch, torchvision, onnxscript).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

from explainer.bundle import Bundle
from explainer.preprocessing import Preprocessing

from .build import build_bundle, producer_versions
from .errors import ExportError
from .torch_reference import reference_cams, reference_gradcam

__all__ = [
    "ExportError",
    "ValidationReport",
    "export_torch",
    "export_tapped",
    "reference_gradcam",
    "recalibrate_batchnorm",
    "reference_cams",
    "resolve_layer",
    "size_dependent_padding",
    "validate",
]

log = logging.getLogger(__name__)


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    """Return ``(dotted path, module)`` for a module or a dotted path such as ``"layer4"``."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise ExportError("target_layer is not a submodule of the model")
    try:
        return layer, model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ExportError(
            f"model has no submodule {layer!r}; its top-level children are {names}"
        ) from None


class _Tapped(nn.Module):
    """Returns (logits, activation of each tapped layer) so the export names those tensors."""

    def __init__(self, model: nn.Module, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.layers = list(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        store: dict[int, torch.Tensor] = {}
        hooks = [
            layer.register_forward_hook(lambda m, i, o, k=k: store.__setitem__(k, o))
            for k, layer in enumerate(self.layers)
        ]
        try:
            logits = self.model(x)
        finally:
            for hook in hooks:
                hook.remove()
        for k, layer in enumerate(self.layers):
            if not isinstance(store.get(k), torch.Tensor):
                raise ExportError(f"layer {layer.__class__.__name__} did not output one tensor")
        return (logits, *(store[k] for k in range(len(self.layers))))


#: torch functions whose padding argument can be computed from the input size in Python:
#: name -> (positional index, keyword) of that argument
_PADDING_ARGUMENTS = {
    "pad": (1, "pad"), "constant_pad_nd": (1, "pad"),
    "conv1d": (4, "padding"), "conv2d": (4, "padding"), "conv3d": (4, "padding"),
}
#: metadata key of the ONNX model where :func:`export_tapped` records how it exported
_NOTES_KEY = "onnxcam.export"


class _PaddingRecorder(torch.overrides.TorchFunctionMode):
    """Records the padding of every pad and convolution call, with the module that made it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, Any]] = []  # (module path, function, padding)
        self._path: list[str] = []
        self._hooks = []
        for name, module in model.named_modules():
            self._hooks.append(module.register_forward_pre_hook(self._enter(name)))
            self._hooks.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(module: nn.Module, args: Any) -> None:
            self._path.append(name)

        return hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._path:  # a hook returning a value would replace the module's output
            self._path.pop()

    def remove(self) -> None:
        """Remove the module hooks."""
        for hook in self._hooks:
            hook.remove()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        where = _PADDING_ARGUMENTS.get(getattr(func, "__name__", ""))
        if where is not None:
            index, keyword = where
            padding = args[index] if len(args) > index else kwargs.get(keyword)
            if not isinstance(padding, str):  # "same"/"valid" are static
                module = self._path[-1] if self._path else ""
                self.calls.append((module, func.__name__, _plain(padding)))
        return func(*args, **kwargs)


def _plain(value: Any) -> Any:
    """Ints, tuples and lists of them as plain Python values (tensors as lists)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def size_dependent_padding(model: nn.Module, example: torch.Tensor) -> str | None:
    """Say where ``model`` computes padding from its input's height and width in Python.

    TensorFlow "SAME" padding written that way (timm's ``Conv2dSame``/``pad_same``, EfficientNet
    ports' ``Conv2dDynamicSamePadding``: ``F.pad`` with amounts from ``x.shape[-2:]``) makes
    torch.export with symbolic height and width reason about nested ceilings of the sizes with
    sympy, which takes minutes (timm ``tf_efficientnet_b0`` on 2 cores: 209 s against 7 s at
    a static size, the check included) or does not end. The check runs the model twice in
    eager mode, at the example's height and width and one pixel more, and compares the padding
    arguments of every ``F.pad``, ``torch.constant_pad_nd`` and ``F.conv*d`` call (their order
    and values): padding fixed at construction time is the same at both sizes. It costs two
    forward passes of one image.

    Args:
        model: the model (in eval mode).
        example: an NCHW example input.

    Returns:
        A sentence naming the modules whose padding changes with the size, or None (also
        when the model does not run at the second size: it then fixes its size itself).
    """
    if example.ndim != 4:
        return None
    first = example[:1]
    # the same picture one pixel taller and wider (the last row and column repeated)
    second = torch.cat([first, first[:, :, -1:]], dim=2)
    second = torch.cat([second, second[:, :, :, -1:]], dim=3)
    runs = []
    for x in (first, second):
        recorder = _PaddingRecorder(model)
        try:
            with torch.no_grad(), recorder:
                model(x)
        except Exception as err:  # a model that takes one size only: nothing to detect
            log.debug("size check: %s does not run at %s: %s", type(model).__name__,
                      list(x.shape), err)
            return None
        finally:
            recorder.remove()
        runs.append(recorder.calls)
    sizes = [f"{x.shape[2]}x{x.shape[3]}" for x in (first, second)]
    if len(runs[0]) != len(runs[1]):
        return (f"the number of pad/convolution calls changes with the input size "
                f"({len(runs[0])} at {sizes[0]}, {len(runs[1])} at {sizes[1]})")
    changed = [(a, b) for a, b in zip(*runs, strict=True) if a != b]
    if not changed:
        return None
    (_, function, before), (_, _, after) = changed[0]
    modules = list(dict.fromkeys(a[0] or "<root>" for a, _ in changed))  # in call order
    named = ", ".join(repr(m) for m in modules[:3]) + (
        f" and {len(modules) - 3} more" if len(modules) > 3 else "")
    return (f"padding computed from the input size in Python ({len(changed)} of {len(runs[0])} "
            f"pad/convolution calls, in {named}; e.g. {function} padding {before} at "
            f"{sizes[0]}, {after} at {sizes[1]}): symbolic height and width would take minutes "
            f"of sympy reasoning in torch.export")


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
    tapped = _Tapped(model, [m for _, m in resolved]).eval()
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


@dataclass
class ValidationReport:
    """Per-map relative L2 error between a bundle's raw CAMs and the PyTorch reference.

    Attributes:
        errors: [B, K] relative L2 errors ||cam - ref|| / ||ref||.
        class_ids: [B, K] classes compared.
        logits_error: max abs difference of the logits.
        cams: [B, K, h, w] the bundle's raw CAMs (ONNX Runtime).
        reference: [B, K, h, w] the PyTorch autograd CAMs.
    """

    errors: np.ndarray
    class_ids: np.ndarray
    logits_error: float
    cams: np.ndarray
    reference: np.ndarray

    @property
    def max_error(self) -> float:
        """Largest per-map error."""
        return float(self.errors.max())

    def fraction_below(self, tolerance: float) -> float:
        """Fraction of maps with error at most ``tolerance``."""
        return float((self.errors <= tolerance).mean())


def relative_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / ||b|| per map over the last two axes (0 when both maps are zero)."""
    diff = np.sqrt(((a.astype(np.float64) - b) ** 2).sum(axis=(-2, -1)))
    norm = np.sqrt((b.astype(np.float64) ** 2).sum(axis=(-2, -1)))
    scale = np.maximum(norm, 1e-12)
    return np.where((norm == 0) & (diff == 0), 0.0, diff / scale)


def validate(
    bundle: Bundle,
    model: nn.Module,
    target_layer: nn.Module | str,
    inputs: np.ndarray | torch.Tensor,
    targets: Any = None,
    explainer: Any = None,
    method: str = "gradcam",
) -> ValidationReport:
    """Compare the bundle's raw CAMs (ONNX Runtime) with the PyTorch autograd reference
    (:func:`exporters.torch_reference.reference_cams`) for a CAM method.

    Args:
        bundle: a bundle exported from ``model``.
        model: the PyTorch model.
        target_layer: the layer the bundle explains.
        inputs: a float32 NCHW batch.
        targets: any target spec :meth:`explainer.Explainer.explain` accepts.
        explainer: an existing :class:`explainer.Explainer` for ``bundle`` (built if None).
        method: the CAM method, a name in :data:`explainer.methods.METHODS`.
    """
    from explainer import Explainer

    x = np.ascontiguousarray(np.asarray(inputs, dtype=np.float32))
    explainer = explainer or Explainer(bundle)
    explanation = explainer.explain(x, targets=targets, method=method)
    ref_cams, ref_logits = reference_cams(model, target_layer, x, explanation.class_ids, method)
    return ValidationReport(
        errors=relative_l2(explanation.cams, ref_cams),
        class_ids=explanation.class_ids,
        logits_error=float(np.abs(explanation.logits - ref_logits).max()),
        cams=explanation.cams,
        reference=ref_cams,
    )


def recalibrate_batchnorm(
    model: nn.Module, input_shape: Sequence[int] = (8, 3, 224, 224), batches: int = 3, seed: int = 0
) -> nn.Module:
    """Re-estimate BatchNorm running statistics on random inputs (for random-init models).

    Randomly initialised networks can have vanishing activations (logits ~1e-9), which makes any
    numerical comparison meaningless; cumulative statistics from a few random batches restore
    unit-scale activations. Returns the model in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(batches if norms else 0):
            model(torch.randn(tuple(input_shape), generator=generator))
    return model.eval()
