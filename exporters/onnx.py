"""Explain a deployed ONNX model: candidate layers, automatic target, layouts, outputs.

:func:`export_onnx` turns any single-input image classifier in ONNX (tf2onnx, torch.onnx,
hand-built...) into a :class:`explainer.Bundle`; :func:`candidate_layers` lists the tensors one
can explain it from. Needs onnx and numpy only (never torch).

How the pieces work:

* **Path.** Only tensors on the float data path from the image input to the explained output
  count (the same rule the gradient engine uses: ``Shape`` and other integer side computations
  are not on it).
* **Clean cut.** A candidate is a *clean cut* when every path from the input to the output
  goes through it (the head then depends on the image through that tensor alone, which is what
  Grad-CAM assumes). With the tensors numbered in topological order, ``T`` is a clean cut
  exactly when no edge ``u -> v`` of the path jumps over it (``pos(u) < pos(T) < pos(v)``).
* **Automatic target.** ``target="auto"`` picks the *last spatial activation that is a clean
  cut, has a known NCHW/NHWC layout and a differentiable head*: typically the tensor right
  before global pooling (ResNet ``layer4``, the ReLU after DenseNet's ``features``). For VGG and
  AlexNet this is the output of the last MaxPool (the adaptive average pool that follows is an
  identity at the native resolution); for SqueezeNet it is the ReLU after the classifier's final
  1x1 convolution. A tensor is *spatial* when it has rank 4 and its height and width are not
  both 1.
* **Layouts.** Layouts are inferred by propagation: ``Conv``, pooling and normalization ops
  read and write NCHW, ``Transpose`` permutes a layout, elementwise ops, ``Concat``, ``Pad``,
  ``Resize``... keep it. The propagation runs forwards and backwards until nothing changes, so
  the NHWC tensors between the Transposes that tf2onnx puts around convolutions come out NHWC.
  Where no op tells, the static shape decides (channels 1, 3 or 4 / equal spatial dims).
  A layout is a string of axis letters (``"NCHW"``, ``"NHWC"``); other layouts (tokens) can be
  added without changing the manifest format.
* **Probabilities.** When the explained output is a ``Softmax`` (or ``LogSoftmax``) over the
  classes, the bundle explains its input, the pre-softmax logits (logged, and recorded in the
  manifest's ``export`` section); ``pre_softmax=False`` keeps the probabilities.
* **Static batch.** A model with a fixed batch size is exported as it is; the
  :class:`explainer.Explainer` runs it in chunks of that size (see its docstring).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from explainer.bundle import Bundle
from explainer.image import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

from .autodiff import GradientError, has_rule
from .build import build_bundle, infer_shapes, value_shape
from .shapes import recover_shapes
from .split import SplitError

__all__ = [
    "Candidate",
    "OnnxExportError",
    "SUPPORTED_LAYOUTS",
    "MIN_OPSET",
    "candidate_layers",
    "detect_layouts",
    "export_onnx",
    "file_digest",
    "load_model",
]

log = logging.getLogger(__name__)

#: Activation layouts the runtime understands.
SUPPORTED_LAYOUTS = ("NCHW", "NHWC")
#: Oldest default-domain opset the gradient engine supports; older models are converted.
MIN_OPSET = 13

_FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)
# ops whose first input and first output are NCHW (rank 4)
_NCHW_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
    "InstanceNormalization", "LRN", "MaxRoiPool", "DepthToSpace", "SpaceToDepth",
})
# ops whose rank-4 inputs and outputs all share one layout
_SAME_LAYOUT_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
    "Selu", "Celu", "Gelu", "Erf", "Mish", "Softplus", "Softsign", "Identity", "Dropout", "Cast",
    "CastLike", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Abs",
    "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "QuantizeLinear", "DequantizeLinear", "Concat", "Pad", "Resize", "Upsample", "Slice",
    "Split", "Tile", "Expand", "LayerNormalization", "Softmax", "LogSoftmax",
})
# ops among _SAME_LAYOUT_OPS whose other inputs are not activations
_FIRST_INPUT_OPS = frozenset({
    "Pad", "Slice", "Tile", "Expand", "Resize", "Upsample", "LayerNormalization", "Softmax",
    "LogSoftmax",
})
_SOFTMAX_OPS = ("Softmax", "LogSoftmax")
# ops between a Softmax and the model output that keep its meaning (float16 graphs cast it
# back to float32, QDQ models quantize it)
_PASS_THROUGH_OPS = ("Identity", "Cast", "QuantizeLinear", "DequantizeLinear")
_LOW_PRECISION = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


class OnnxExportError(ValueError):
    """An ONNX model cannot be explained as asked (no image input, unknown target, layout...)."""


@dataclass(frozen=True)
class Candidate:
    """A tensor a model can be explained from.

    Attributes:
        tensor: the tensor name.
        shape: its inferred shape (ints for static dims, names for symbolic ones, None unknown).
        node: name of the node that produces it.
        op_type: op type of that node.
        layout: ``"NCHW"``, ``"NHWC"``, another axis string, or None when unknown.
        differentiable: every op on the head's path past it has a gradient rule.
        unsupported_ops: ``"OpType (node name)"`` of the head ops without a gradient rule.
        clean_cut: every path from the input to the output goes through this tensor.
    """

    tensor: str
    shape: tuple[int | str | None, ...]
    node: str
    op_type: str
    layout: str | None
    differentiable: bool
    unsupported_ops: tuple[str, ...] = field(default=())
    clean_cut: bool = True

    @property
    def explainable(self) -> bool:
        """Whether ``target="auto"`` may pick it (clean cut, differentiable, known layout)."""
        return self.clean_cut and self.differentiable and self.layout in SUPPORTED_LAYOUTS


# --------------------------------------------------------------------------- loading


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of an ONNX file and of the external data files it references."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path]
    try:
        header = onnx.load(str(path), load_external_data=False)
        locations = sorted({
            entry.value
            for tensor in _external_tensors(header)
            for entry in tensor.external_data
            if entry.key == "location"
        })
        files += [path.parent / location for location in locations]
    except Exception as err:  # the digest still covers the main file
        log.debug("cannot list the external data of %s: %s", path, err)
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    tensors += [
        a.t for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    return [t for t in tensors if t.data_location == TensorProto.EXTERNAL]


def load_model(model: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    """Read ``model`` (a path, external data included, or a ModelProto) at opset >= 13.

    Raises:
        OnnxExportError: the file is missing or unreadable, a ModelProto refers to external
            data that was not loaded, or an old opset cannot be converted.
    """
    if isinstance(model, onnx.ModelProto):
        missing = _external_tensors(model)
        if missing:
            raise OnnxExportError(
                f"initializer {missing[0].name!r} keeps its data in an external file that is not "
                "loaded; pass the .onnx path instead, or call "
                "onnx.load_external_data_for_model(model, base_dir) first"
            )
    else:
        path = Path(model)
        if not path.is_file():
            raise OnnxExportError(f"{path}: no such ONNX file")
        try:
            model = onnx.load(str(path))
        except Exception as err:  # DecodeError, missing external data...
            raise OnnxExportError(f"{path}: cannot be read as ONNX ({err})") from err
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        log.warning("model opset %d is older than %d; converting it", opset, MIN_OPSET)
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as err:
            raise OnnxExportError(
                f"model opset {opset} is older than {MIN_OPSET} and could not be converted "
                f"({err}); convert it with onnx.version_converter.convert_version(model, 13)"
            ) from err
    return model


#: Float initializers larger than this (bytes) are left out while the graph is analysed.
_HEAVY_BYTES = 1 << 16


def _strip_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of ``model`` whose large float initializers keep their dims but not their data.

    Shape inference, splitting and the gradient engine serialize and copy the model several
    times and never read large float weights (rules only read small integer constants such as
    pads, axes and indices), so they run on this light copy (VGG16: 13 s -> 3 s) and
    :func:`_restore_weights` puts the data back into the bundle.
    """
    light = onnx.ModelProto()
    light.CopyFrom(model)
    weights = {}
    for original, tensor in zip(model.graph.initializer, light.graph.initializer, strict=True):
        if tensor.data_type in _FLOAT_TYPES and tensor.ByteSize() > _HEAVY_BYTES:
            weights[tensor.name] = original
            for field_name in ("raw_data", "float_data", "double_data", "int32_data"):
                tensor.ClearField(field_name)
    return light, weights


def _restore_weights(bundle: Bundle, weights: dict[str, onnx.TensorProto]) -> None:
    for model in (bundle.features, bundle.head):
        for tensor in model.graph.initializer:
            original = weights.get(tensor.name)
            if original is not None:
                tensor.CopyFrom(original)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# --------------------------------------------------------------------------- graph analysis


def _shape_of(info: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    shape = value_shape(info)
    return None if shape is None else tuple(shape)


class _Graph:
    """Types, shapes and producers of an inferred model, plus its image input."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.producer: dict[str, int] = {
            o: i for i, node in enumerate(self.nodes) for o in node.output if o
        }
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.infos: dict[str, onnx.ValueInfoProto] = {}
        for info in [*graph.value_info, *graph.input, *graph.output]:
            if info.type.HasField("tensor_type"):
                self.infos[info.name] = info
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0] for n in self.nodes if n.op_type == "Constant"}
        inputs = [i for i in graph.input if i.name not in self.initializers]
        if len(inputs) != 1:
            raise OnnxExportError(
                f"the model has {len(inputs)} inputs {[i.name for i in inputs]}; onnxcam "
                "explains single-input image models"
            )
        self.input = inputs[0].name

    def shape(self, name: str) -> tuple[int | str | None, ...] | None:
        info = self.infos.get(name)
        return _shape_of(info) if info is not None else None

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return len(shape) if shape is not None else None

    def elem_type(self, name: str) -> int:
        info = self.infos.get(name)
        if info is not None:
            return info.type.tensor_type.elem_type
        tensor = self.initializers.get(name)
        return tensor.data_type if tensor is not None else TensorProto.UNDEFINED

    def is_float(self, name: str) -> bool:
        elem_type = self.elem_type(name)
        return elem_type == TensorProto.UNDEFINED or elem_type in _FLOAT_TYPES

    def node_name(self, index: int) -> str:
        node = self.nodes[index]
        return node.name or f"{node.op_type}_{index}"

    def active(self) -> set[str]:
        """Float tensors that depend on the input (the input itself included)."""
        active = {self.input}
        for node in self.nodes:
            if any(i in active for i in node.input if i):
                quantized = node.op_type == "QuantizeLinear"  # differentiated by an STE
                active.update(o for o in node.output if o and (quantized or self.is_float(o)))
        return active

    def path(self, output: str) -> tuple[list[int], set[str]]:
        """Node indices on the float path input -> output and the tensors on it."""
        active = self.active()
        if output not in active:
            raise OnnxExportError(
                f"output {output!r} does not depend on the input {self.input!r} through float "
                "tensors"
            )
        needed = {output}
        on_path: list[int] = []
        for i in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[i]
            if any(o in needed for o in node.output if o) and any(
                x in active for x in node.input if x
            ):
                on_path.append(i)
                needed.update(x for x in node.input if x in active)
        on_path.reverse()
        return on_path, needed


def _permute(layout: str, perm: Sequence[int]) -> str:
    return "".join(layout[p] for p in perm)


def _inverse(perm: Sequence[int]) -> list[int]:
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return inverse


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _shape_layout(
    shape: tuple[int | str | None, ...] | None, image: bool = False
) -> str | None:
    """Guess NCHW/NHWC from a rank-4 shape when no op tells, or None.

    Square spatial dims decide (``[N, 768, 7, 7]`` is NCHW, ``[N, 1, 1, 768]`` NHWC); for an
    image input (``image=True``) so do 1, 3 or 4 channels on one side only.
    """
    if shape is None or len(shape) != 4:
        return None
    _, d1, d2, d3 = shape
    if d2 == d3 and d1 != d2 and d2 is not None:
        return "NCHW"
    if d1 == d2 and d3 != d1 and d1 is not None:
        return "NHWC"
    if image and isinstance(d1, int) and isinstance(d3, int):
        if d1 in (1, 3, 4) and d3 not in (1, 3, 4):
            return "NCHW"
        if d3 in (1, 3, 4) and d1 not in (1, 3, 4):
            return "NHWC"
    return None


def detect_layouts(model: onnx.ModelProto) -> dict[str, str]:
    """Layouts of the rank-4 tensors of a model, by propagation.

    Args:
        model: a single-input model (shapes are inferred first).

    Returns:
        tensor name -> axis string such as ``"NCHW"`` or ``"NHWC"`` for every rank-4 tensor
        whose layout the graph's ops determine (see the module docstring).
    """
    return _detect_layouts(_Graph(infer_shapes(model)))


def _detect_layouts(g: _Graph) -> dict[str, str]:
    layouts: dict[str, str] = {}

    def rank4(name: str) -> bool:
        return bool(name) and g.rank(name) == 4

    def assign(name: str, layout: str) -> bool:
        if not rank4(name) or name in layouts:
            return False
        layouts[name] = layout
        return True

    changed = True
    while changed:
        changed = False
        for node in g.nodes:
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                continue
            if op in _NCHW_OPS:
                changed |= assign(node.input[0], "NCHW")
                changed |= assign(node.output[0], "NCHW")
            elif op == "Transpose":
                x, y = node.input[0], node.output[0]
                perm = _attr(node, "perm")
                if not (rank4(x) and rank4(y)):
                    continue
                perm = list(perm) if perm is not None else [3, 2, 1, 0]
                if x in layouts:
                    changed |= assign(y, _permute(layouts[x], perm))
                elif y in layouts:
                    changed |= assign(x, _permute(layouts[y], _inverse(perm)))
            elif op == "MatMul" and rank4(node.input[0]) and g.rank(node.input[1]) == 2:
                # channels-last Linear on a rank-4 tensor (ConvNeXt blocks): layout kept
                x, y = node.input[0], node.output[0]
                if layouts.get(x, "").endswith("C"):
                    changed |= assign(y, layouts[x])
                elif layouts.get(y, "").endswith("C"):
                    changed |= assign(x, layouts[y])
            elif op in _SAME_LAYOUT_OPS or (
                op.startswith("Reduce") and _attr(node, "keepdims", 1) == 1
            ):
                names = [n for n in [*node.input, *node.output] if rank4(n)]
                if op.startswith("Reduce") or op in _FIRST_INPUT_OPS:
                    names = [n for n in (node.input[0], node.output[0]) if rank4(n)]
                known = next((layouts[n] for n in names if n in layouts), None)
                if known is not None:
                    for name in names:
                        if name not in g.initializers and name not in g.constants:
                            changed |= assign(name, known)
    return layouts


def _analyse(
    g: _Graph, output: str
) -> tuple[list[Candidate], dict[str, str]]:
    """Candidates (topological order) on the path to ``output`` and the tensor layouts."""
    layouts = _detect_layouts(g)
    nodes, on_path_tensors = g.path(output)
    on_path_nodes = set(nodes)

    # topological positions of the path's tensors: input first, then node outputs in order
    position = {g.input: 0}
    for i in nodes:
        for o in g.nodes[i].output:
            if o in on_path_tensors or o == output:
                position.setdefault(o, len(position))
    # coverage[p] > 0 when some edge u -> v jumps over position p
    coverage = np.zeros(len(position) + 1, dtype=np.int64)
    for i in nodes:
        node = g.nodes[i]
        sources = [position[x] for x in node.input if x in position]
        targets = [position[o] for o in node.output if o in position]
        if not sources or not targets:
            continue
        low, high = min(sources), max(targets)
        if high - low > 1:
            coverage[low + 1] += 1
            coverage[high] -= 1
    coverage = np.cumsum(coverage)

    # ops without a gradient rule and the path tensors upstream of each
    unsupported = [
        i for i in nodes
        if not (g.nodes[i].domain in ("", "ai.onnx") and has_rule(g.nodes[i].op_type))
    ]
    blocked: dict[str, list[int]] = {}
    for u in unsupported:
        stack, seen = [x for x in g.nodes[u].input if x in on_path_tensors], set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            blocked.setdefault(name, []).append(u)
            p = g.producer.get(name)
            if p is not None and p in on_path_nodes:
                stack.extend(x for x in g.nodes[p].input if x in on_path_tensors)

    candidates = []
    for name, pos in position.items():
        if name == g.input or name == output or g.rank(name) != 4 or not g.is_float(name):
            continue
        shape = g.shape(name) or ()
        layout = layouts.get(name) or _shape_layout(shape)
        if layout in SUPPORTED_LAYOUTS:
            spatial = [shape[layout.index("H")], shape[layout.index("W")]]
        else:
            spatial = list(shape[1:])
        if sum(1 for d in spatial if d != 1) < (2 if layout is None else 1):
            continue
        producer = g.producer[name]
        ops = tuple(
            f"{g.nodes[u].op_type} ({g.node_name(u)})" for u in sorted(set(blocked.get(name, [])))
        )
        candidates.append(
            Candidate(
                tensor=name,
                shape=tuple(shape),
                node=g.node_name(producer),
                op_type=g.nodes[producer].op_type,
                layout=layout,
                differentiable=not ops,
                unsupported_ops=ops,
                clean_cut=bool(coverage[pos] == 0),
            )
        )
    return candidates, layouts


# --------------------------------------------------------------------------- outputs


def _float_outputs(g: _Graph) -> list[str]:
    return [o.name for o in g.model.graph.output if g.is_float(o.name)]


def _softmax_input(g: _Graph, name: str) -> tuple[str, str] | None:
    """(pre-softmax tensor, op type) when ``name`` is a softmax over its last axis."""
    index = g.producer.get(name)
    while index is not None and g.nodes[index].op_type in _PASS_THROUGH_OPS:
        index = g.producer.get(g.nodes[index].input[0])
    if index is None or g.nodes[index].op_type not in _SOFTMAX_OPS:
        return None
    node = g.nodes[index]
    rank = g.rank(node.input[0])
    axis = _attr(node, "axis", -1)
    if rank is None or axis not in (-1, rank - 1):
        return None
    return node.input[0], node.op_type


def _output_info(g: _Graph, name: str) -> onnx.ValueInfoProto:
    info = g.infos.get(name)
    if info is None:
        raise OnnxExportError(f"no type information for tensor {name!r} after shape inference")
    return copy.deepcopy(info)


def _resolve_output(
    model: onnx.ModelProto, g: _Graph, output: str | None, pre_softmax: bool
) -> tuple[onnx.ModelProto, str, dict[str, Any]]:
    """Choose the output to explain; expose pre-softmax logits / flatten [B,1,1,C] outputs.

    Returns:
        (model whose graph outputs include the explained tensor, its name, manifest notes).
    """
    outputs = _float_outputs(g)
    if not outputs:
        raise OnnxExportError("the model has no floating-point output to explain")
    if output is None:
        shaped = [o for o in outputs if (g.rank(o) or 0) >= 2] or outputs
        # a softmax output says which tensor holds the class scores
        scored = [o for o in shaped if _softmax_input(g, o) is not None] if pre_softmax else []
        output = (scored or shaped)[0]
        if len(outputs) > 1:
            log.info("model outputs %s; explaining %r (pass output= to choose)", outputs, output)
    elif output not in [o.name for o in model.graph.output]:
        raise OnnxExportError(
            f"output {output!r} is not an output of the model; its outputs are "
            f"{[o.name for o in model.graph.output]}"
        )
    notes: dict[str, Any] = {"output": output}
    explained = output
    if pre_softmax:
        found = _softmax_input(g, output)
        if found is not None:
            explained, op = found
            log.info("output %r is a %s; explaining the pre-softmax logits %r instead",
                     output, op, explained)
            notes["softmax"] = op
    model = copy.deepcopy(model)
    graph = model.graph
    if explained != output:
        kept = [o for o in graph.output if o.name not in (output, explained)]
        del graph.output[:]
        graph.output.extend([_output_info(g, explained), *kept])
    shape = g.shape(explained)
    if shape is not None and len(shape) > 2:
        wide = [d for d in shape[1:] if d != 1]
        if len(wide) > 1:
            raise OnnxExportError(
                f"output {explained!r} has shape {list(shape)}; expected [batch, classes] (or "
                "[batch, 1, ..., classes])"
            )
        flat = explained + "_flat"
        while flat in g.infos or flat in g.producer:
            flat += "_"
        graph.node.append(helper.make_node("Flatten", [explained], [flat], axis=1,
                                           name=flat + "_node"))
        classes = wide[0] if wide else 1
        graph.output.append(helper.make_tensor_value_info(
            flat, g.elem_type(explained), [shape[0], classes]
        ))
        log.info("output %r has shape %s; explaining it flattened to [batch, classes]",
                 explained, list(shape))
        explained = flat
    if g.elem_type(explained) in _LOW_PRECISION:  # float16 logits (before a Softmax): the
        cast = explained + "_float"                    # bundle's logits and seeds stay float32
        while cast in g.infos or cast in g.producer:
            cast += "_"
        graph.node.append(helper.make_node("Cast", [explained], [cast], to=TensorProto.FLOAT,
                                           name=cast + "_node"))
        kept = [o for o in graph.output if o.name != explained]
        del graph.output[:]
        dims = None if shape is None else [shape[0], classes] if len(shape) > 2 else shape
        graph.output.extend([helper.make_tensor_value_info(cast, TensorProto.FLOAT, dims), *kept])
        explained = cast
    notes["explained"] = explained
    return model, explained, notes


def _read_batch_from(model: onnx.ModelProto, g: _Graph, target: str) -> onnx.ModelProto:
    """Make batch-size computations upstream of ``target`` read the batch from ``target``.

    Exporters compute the batch size with ``Shape(x)[0:1]`` of some early tensor (ConvNeXt's
    ``as_strided`` indices come from the input's batch size). Cut at ``target``, such an
    integer tensor would cross into the head as a second input tied to the features' batch.
    Reading the batch from ``target`` (same leading dimension) moves that computation into the
    head, which then reads the activation alone and runs on any number of rows.
    """
    batch = (g.shape(target) or (None,))[0]
    upstream = g.active() - {target}
    # a Shape the target itself depends on (Swin's window reshapes) cannot read the target
    feeds_target, stack = set(), [target]
    while stack:
        index = g.producer.get(stack.pop())
        if index is not None and index not in feeds_target:
            feeds_target.add(index)
            stack.extend(x for x in g.nodes[index].input if x)
    rewrites = []
    for i, node in enumerate(g.nodes):
        if node.op_type != "Shape" or node.input[0] == target or node.input[0] not in upstream:
            continue
        if i in feeds_target:
            continue
        if (g.shape(node.input[0]) or (None,))[0] != batch or batch is None:
            continue
        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        if start == 0 and end == 1:
            rewrites.append(i)
            continue
        # Shape(x) -> Gather(axis 0, index 0): only the batch is read
        consumers = g.consumers.get(node.output[0], [])
        if start == 0 and end is None and consumers and all(
            g.nodes[c].op_type == "Gather" and _attr(g.nodes[c], "axis", 0) == 0
            and g.nodes[c].input[0] == node.output[0]
            and _constant_ints(g, g.nodes[c].input[1]) in ([0], [-len(g.shape(node.input[0])
                                                                   or ())])
            for c in consumers
        ):
            rewrites.append(i)
    if not rewrites:
        return model
    model = copy.deepcopy(model)
    for i in rewrites:
        log.info("batch size read from %r instead of %r (node %s)", target,
                 model.graph.node[i].input[0], g.node_name(i))
        model.graph.node[i].input[0] = target
    # a rewritten Shape now reads the target: sort again so it follows the target's producer
    nodes = list(model.graph.node)
    _sort_topologically(nodes, {i.name for i in model.graph.input}
                        | {t.name for t in model.graph.initializer})
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _constant_ints(g: _Graph, name: str) -> list[int] | None:
    tensor = g.initializers.get(name)
    if tensor is None:
        for node in g.nodes:
            if node.op_type == "Constant" and node.output[0] == name:
                tensor = _attr(node, "value")
    if tensor is None:
        return None
    return [int(v) for v in onnx.numpy_helper.to_array(tensor).reshape(-1)]


def _sort_topologically(nodes: list[onnx.NodeProto], available: set[str]) -> None:
    """Stable topological sort of ``nodes`` in place (names in ``available`` are given)."""
    done, ordered, pending = set(available), [], list(nodes)
    while pending:
        progress = []
        for node in pending:
            reads = [x for x in node.input if x]
            if all(x in done for x in reads):
                ordered.append(node)
                done.update(node.output)
            else:
                progress.append(node)
        if len(progress) == len(pending):  # a cycle or a name we cannot resolve: keep order
            ordered.extend(progress)
            break
        pending = progress
    nodes[:] = ordered


# --------------------------------------------------------------------------- public API


def candidate_layers(
    model: str | os.PathLike[str] | onnx.ModelProto,
    output: str | None = None,
    pre_softmax: bool = True,
) -> list[Candidate]:
    """List the spatial activations one can explain ``model`` from.

    Args:
        model: an ONNX file path or ModelProto.
        output: the output to explain (see :func:`export_onnx`).
        pre_softmax: look through a final Softmax (see :func:`export_onnx`).

    Returns:
        Candidates on the path from the input to the output, in topological order (the last
        explainable one is what ``target="auto"`` picks).
    """
    light, _ = _strip_weights(load_model(model))
    light = recover_shapes(infer_shapes(light))
    light, explained, _ = _resolve_output(light, _Graph(light), output, pre_softmax)
    g = _Graph(infer_shapes(light))
    return _analyse(g, explained)[0]


def _resolve_target(
    g: _Graph, candidates: list[Candidate], target: str
) -> tuple[str, str, str]:
    """(tensor, producing node name, op) for a tensor name or a node name."""
    if target in g.producer:
        index = g.producer[target]
        return target, g.node_name(index), g.nodes[index].op_type
    for i, node in enumerate(g.nodes):
        if node.name == target:
            return node.output[0], g.node_name(i), node.op_type
    names = [c.tensor for c in candidates if c.explainable][-5:]
    raise OnnxExportError(
        f"target {target!r} is neither a tensor nor a node of the model; explainable "
        f"candidates near the output: {names} (list all with `onnxcam inspect`)"
    )


def _input_layout(g: _Graph, layouts: dict[str, str], given: str) -> str:
    if given != "auto":
        return given
    shape = g.shape(g.input)
    if shape is None or len(shape) != 4:
        raise OnnxExportError(
            f"input {g.input!r} has shape {shape}; onnxcam explains rank-4 image inputs"
        )
    layout = layouts.get(g.input) or _shape_layout(shape, image=True)
    if layout not in SUPPORTED_LAYOUTS:
        raise OnnxExportError(
            f"cannot tell whether input {g.input!r} {list(shape)} is NCHW or NHWC; pass "
            "input_layout='NCHW' or 'NHWC'"
        )
    return layout


def _guess_preprocessing(g: _Graph, layout: str) -> Preprocessing | None:
    shape = g.shape(g.input) or ()
    channels = shape[layout.index("C")]
    h, w = shape[layout.index("H")], shape[layout.index("W")]
    if channels != 3:
        log.info("input has %s channels: no default preprocessing recorded", channels)
        return None
    if isinstance(h, int) and isinstance(w, int):
        crop: tuple[int, int] | int = (h, w)
        resize: int | tuple[int, int] = int(round(min(h, w) * 256 / 224))
    else:
        crop, resize = 224, 256
    if g.elem_type(g.input) == TensorProto.UINT8:
        pre = Preprocessing(resize=resize, crop=crop, scale=1.0, mean=(0.0, 0.0, 0.0),
                            std=(1.0, 1.0, 1.0), layout=layout, dtype="uint8")
    else:
        pre = Preprocessing(resize=resize, crop=crop, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                            layout=layout)
    log.info("no preprocessing given; assuming %s", pre)
    return pre


def export_onnx(
    model: str | os.PathLike[str] | onnx.ModelProto,
    target: str = "auto",
    layout: str = "auto",
    output: str | None = None,
    labels: str | Sequence[str] | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    *,
    input_layout: str = "auto",
    pre_softmax: bool = True,
) -> Bundle:
    """Build a bundle from an ONNX classifier (no torch needed).

    Args:
        model: an ONNX file (external-data weights are read from its directory) or a
            ModelProto. Opsets older than 13 are converted to 13.
        target: ``"auto"`` (the last explainable spatial activation, see the module
            docstring), a tensor name, or a node name (its first output).
        layout: layout of the target activation: ``"auto"`` (detected), ``"NCHW"`` or
            ``"NHWC"``.
        output: the model output to explain when it has several (default: the first
            Softmax output, else the first floating-point output of rank >= 2; logged).
        labels: class names, or a label set name such as ``"imagenet"``.
        preprocessing: how images become inputs. When None a default is recorded for 3-channel
            inputs: resize/crop to the input size, ImageNet mean/std for float inputs, raw
            0..255 pixels for uint8 inputs (which normalize inside the graph); it is logged.
        input_layout: layout of the model input, ``"auto"`` (detected), ``"NCHW"`` or ``"NHWC"``.
        pre_softmax: when the output is a Softmax/LogSoftmax over the classes, explain its
            input (the logits) instead, as Grad-CAM is defined on pre-softmax scores.

    Returns:
        The bundle; ``manifest["target"]["layer"]`` names the node that produces the explained
        tensor and ``manifest["export"]`` records how it was chosen.

    Raises:
        OnnxExportError: the model or the target cannot be explained (message says why).
        exporters.autodiff.MissingGradientRule: the head past a given target has an op without
            a gradient rule.
    """
    for name, value in (("layout", layout), ("input_layout", input_layout)):
        if value not in ("auto", *SUPPORTED_LAYOUTS):
            raise OnnxExportError(f"{name} must be 'auto', 'NCHW' or 'NHWC', got {value!r}")
    source = None if isinstance(model, onnx.ModelProto) else str(model)
    proto, weights = _strip_weights(load_model(model))
    proto = recover_shapes(infer_shapes(proto))
    proto, explained, notes = _resolve_output(proto, _Graph(proto), output, pre_softmax)
    proto = infer_shapes(proto)
    g = _Graph(proto)
    candidates, layouts = _analyse(g, explained)
    in_layout = _input_layout(g, layouts, input_layout)
    if preprocessing is None:
        preprocessing = _guess_preprocessing(g, in_layout)
        notes["preprocessing_guessed"] = preprocessing is not None
    batch = (g.shape(g.input) or (None,))[0]
    notes.update({
        "source": Path(source).name if source else None,
        "target": target,
        "static_batch": batch if isinstance(batch, int) else None,
    })

    def build(tensor: str, node: str, op: str, tensor_layout: str | None) -> Bundle:
        if tensor_layout not in SUPPORTED_LAYOUTS:
            raise OnnxExportError(
                f"cannot tell the layout of tensor {tensor!r} ({op} node {node!r}, shape "
                f"{g.shape(tensor)}); pass layout='NCHW' or 'NHWC'"
            )
        bundle = build_bundle(
            _read_batch_from(proto, g, tensor), tensor, output=explained, target_layer=node,
            input_layout=in_layout, target_layout=tensor_layout, labels=labels,
            preprocessing=preprocessing, producer={"exporter": "onnxcam.exporters.onnx"},
        )
        bundle.manifest["export"] = notes
        _restore_weights(bundle, weights)
        extra = bundle.manifest["head"]["inputs"][1:]
        if extra:
            log.info("%r is not a clean cut: the head also reads %s from the features graph",
                     tensor, extra)
        return bundle

    if target != "auto":
        tensor, node, op = _resolve_target(g, candidates, target)
        if g.rank(tensor) != 4:
            raise OnnxExportError(
                f"target tensor {tensor!r} ({op} node {node!r}) has shape {g.shape(tensor)}; "
                "Grad-CAM needs a rank-4 spatial activation (see `onnxcam inspect`)"
            )
        tensor_layout = layout if layout != "auto" else (
            layouts.get(tensor) or _shape_layout(g.shape(tensor))
        )
        log.info("target %s (%s node %s, %s)", tensor, op, node, tensor_layout)
        return build(tensor, node, op, tensor_layout)

    pickable = [c for c in candidates if c.clean_cut and c.differentiable and (
        layout != "auto" or c.layout in SUPPORTED_LAYOUTS)]
    if not pickable:
        raise OnnxExportError(
            f"no spatial activation on the path to {explained!r} has a differentiable head and a "
            f"known layout ({len(candidates)} candidates; see `onnxcam inspect`); pass target= "
            "and layout= explicitly"
        )
    errors = []
    for candidate in reversed(pickable[-3:]):
        tensor_layout = layout if layout != "auto" else candidate.layout
        try:
            bundle = build(candidate.tensor, candidate.node, candidate.op_type, tensor_layout)
        except (GradientError, SplitError) as err:
            log.warning("candidate %s failed (%s); trying the one before", candidate.tensor, err)
            errors.append(f"{candidate.tensor}: {err}")
            continue
        log.info(
            "auto target: %s (%s node %s, shape %s, %s)", candidate.tensor, candidate.op_type,
            candidate.node, list(candidate.shape), tensor_layout,
        )
        return bundle
    raise OnnxExportError("no candidate target could be differentiated: " + "; ".join(errors))
