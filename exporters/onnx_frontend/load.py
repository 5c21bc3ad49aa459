"""Reading deployed ONNX files: external data, old opsets, a light copy for analysis, hashing."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import onnx
from onnx import TensorProto

from ..errors import OnnxExportError
from ..graph import FLOAT_TYPES, MIN_OPSET, default_opset

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
    opset = default_opset(model)
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
