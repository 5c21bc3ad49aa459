"""Reading deployed ONNX files: external data, old opsets, a light copy for analysis, hashing."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import onnx
from onnx import TensorProto

from ..errors import OnnxExportError
from ..graph import FLOAT_TYPES, MIN_OPSET, default_opset, rename_values, unique_name

__all__ = ["file_digest", "load_model", "restore_weights", "strip_weights"]

log = logging.getLogger(__name__)

#: Float initializers larger than this (bytes) are left out while the graph is analysed.
_HEAVY_BYTES = 1 << 16


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    tensors += [
        a.t for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    return [t for t in tensors if t.data_location == TensorProto.EXTERNAL]


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


def load_model(model: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    """Read ``model`` (a path, external data included, or a ModelProto) at opset >= 13.

    Raises:
        OnnxExportError: the file is missing or unreadable, a ModelProto refers to external
            data that was not loaded, or an old opset cannot be converted.
    """
    given = isinstance(model, onnx.ModelProto)  # the caller's: edited only in a copy
    if given:
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
    model = _open_dims(model, copy=given)
    opset = default_opset(model)
    if opset < MIN_OPSET:
        log.warning("model opset %d is older than %d; converting it", opset, MIN_OPSET)
        original = model
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as err:
            raise OnnxExportError(
                f"model opset {opset} is older than {MIN_OPSET} and could not be converted "
                f"({err}); convert it with onnx.version_converter.convert_version(model, 13)"
            ) from err
        model = _name_converted(original, model)
    return model


def _name_converted(original: onnx.ModelProto, converted: onnx.ModelProto) -> onnx.ModelProto:
    """``converted`` with the values onnx's version converter added (``_v_570``...) named after
    the tensor they come from, and its unnamed nodes named, so that a message about them names
    the user's tensor: the ``Flatten`` it writes before an opset-11 ``Softmax`` of ``logits``
    gives ``logits/Flatten``."""
    graph = original.graph
    known = {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    known.update(t.name for t in graph.initializer)
    known.update(o for node in graph.node for o in node.output)
    added = [(node, k) for node in converted.graph.node for k, o in enumerate(node.output)
             if o and o not in known]
    made_by = {o: node.op_type for node in graph.node for o in node.output}
    # the converter's own nodes (another op now makes the value); the user's keep their names
    unnamed = [node for node in converted.graph.node if not node.name and any(
        o and made_by.get(o) != node.op_type for o in node.output)]
    if not added and not unnamed:
        return converted
    taken = {n for node in converted.graph.node for n in (*node.input, *node.output, node.name)}
    taken |= known
    renamed: dict[str, str] = {}
    for node, k in added:
        source = next((renamed.get(i, i) for i in node.input if i), node.op_type)
        suffix = node.op_type if len(node.output) == 1 else f"{node.op_type}_{k}"
        renamed[node.output[k]] = unique_name(f"{source}/{suffix}", taken)
    rename_values(converted.graph, lambda n: renamed.get(n, n))
    for node in unnamed:
        out = node.output[0] if node.output else ""
        base = out if out.endswith(f"/{node.op_type}") else f"{out}/{node.op_type}"
        node.name = unique_name(f"{base}_node", taken)
    return converted


#: dim names exporters write for "any size" (PaddlePaddle: ``?``), not one shared size
_ANY_SIZE = ("?", "-1")


def _open_dims(model: onnx.ModelProto, copy: bool = True) -> onnx.ModelProto:
    """``model`` with the "any size" dims of its inputs and outputs written as ONNX means them.

    PaddlePaddle exports write ``dim_value: -1`` for the batch and ``dim_param: "?"`` for every
    other open size (``x: [-1, 3, ?, ?]``): a negative size is invalid, and one name for height
    and width says they are equal. Each becomes its own name (``batch`` for an input's first
    axis, ``<input>_dim<axis>`` for the others); an output's become unknown. Other models are
    returned as they are; ``copy=False`` edits ``model`` itself.
    """
    def open_dim(info: onnx.ValueInfoProto) -> bool:
        dims = info.type.tensor_type.shape.dim if info.type.HasField("tensor_type") else []
        return any((d.HasField("dim_value") and d.dim_value < 0) or d.dim_param in _ANY_SIZE
                   for d in dims)

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not any(open_dim(info) for info in [*inputs, *model.graph.output]):
        return model
    out = model
    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    taken = {d.dim_param for info in [*out.graph.input, *out.graph.output]
             for d in info.type.tensor_type.shape.dim}
    for info in out.graph.input:
        if info.name in initializers or not open_dim(info):
            continue
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            if (dim.HasField("dim_value") and dim.dim_value < 0) or dim.dim_param in _ANY_SIZE:
                name = "batch" if axis == 0 and "batch" not in taken else f"{info.name}_dim{axis}"
                taken.add(name)
                dim.Clear()
                dim.dim_param = name
        log.info("input %r has open sizes; written as %s", info.name,
                 [d.dim_value or d.dim_param for d in info.type.tensor_type.shape.dim])
    for info in out.graph.output:
        for dim in info.type.tensor_type.shape.dim:
            if (dim.HasField("dim_value") and dim.dim_value < 0) or dim.dim_param in _ANY_SIZE:
                dim.Clear()
    return out


def strip_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of ``model`` whose large float initializers keep their dims but not their data.

    Shape inference, splitting and the gradient engine copy the model several times and never
    read large float weights (rules only read small integer constants such as pads, axes and
    indices), so they run on this light copy (VGG16: 13 s -> 3 s) and :func:`restore_weights`
    puts the data back into the graphs.

    Returns:
        (the light copy, initializer name -> original tensor of each stripped initializer).
    """
    light = onnx.ModelProto()
    light.CopyFrom(model)
    weights = {}
    for original, tensor in zip(model.graph.initializer, light.graph.initializer, strict=True):
        if tensor.data_type in FLOAT_TYPES and tensor.ByteSize() > _HEAVY_BYTES:
            weights[tensor.name] = original
            for field_name in ("raw_data", "float_data", "double_data", "int32_data"):
                tensor.ClearField(field_name)
    return light, weights


def restore_weights(
    models: list[onnx.ModelProto], weights: dict[str, onnx.TensorProto],
    prefixes: tuple[str, ...] = (),
) -> None:
    """Put the data :func:`strip_weights` left out back into ``models`` (in place).

    ``prefixes``: name prefixes the graphs added to the original names (the explanation graph's
    ``features/`` and ``head/``)."""
    for model in models:
        for tensor in model.graph.initializer:
            name = tensor.name
            key = next((name[len(p):] for p in prefixes if name.startswith(p)), name)
            original = weights.get(key)
            if original is not None:
                tensor.CopyFrom(original)
                tensor.name = name
