"""A bundle: the ONNX graphs of a split model plus the manifest that says how to use them.

On disk a bundle is a directory::

    features.onnx      model inputs -> activation (and any other tensor the head needs)
    head.onnx          (activation, seed) -> (logits, gradient of sum(seed * logits) w.r.t. A)
    explanation.onnx   (schema 2) input + targets -> logits, target ids, CAMs, heatmaps in one
                       graph (composed by ``exporters.compose``); absent where it cannot be
                       built (static batch, several tensors across the cut)
    weights.onnx.data  every tensor of 1 KiB or more, once: the three graphs point at the same
                       offsets of this one external-data file, so the weights are not doubled
    manifest.json      schema version, input, target layer, layouts, preprocessing, labels,
                       versions, (schema 2) the explanation graph's inputs and outputs, and
                       (schema 3) the task: ``classify``, ``detect``, ``segment`` or
                       ``sequence``, with its ``format`` and the outputs the head returns
                       besides the explained tensor

Schema-1 bundles (no explanation graph; weights inline or in ``<graph>.onnx.data``) still load.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

from .errors import BundleError
from .labels import resolve_labels
from .manifest import INPUT_GRADIENT_KEYS, SCHEMA_VERSION, TASKS, Manifest

__all__ = ["BACKWARD_PREFIX", "COMPOSED_PREFIX", "Bundle", "BundleError", "SCHEMA_VERSION",
           "EXTERNAL_DATA_THRESHOLD", "TASKS", "WEIGHTS_FILE", "extract", "node_inputs",
           "subgraphs"]

#: Tensors of at least this many bytes are saved in the shared external-data file.
EXTERNAL_DATA_THRESHOLD = 1024
#: The one external-data file the bundle's graphs share.
WEIGHTS_FILE = "weights.onnx.data"
#: The prefix of the names of a gradient head's backward nodes (the reverse-mode autodiff's
#: output); the runtime tells the head's backward from its forward by it.
BACKWARD_PREFIX = "grad/"
#: The prefix of the names of the nodes the explanation graph's composer adds (target
#: selection, seeds, CAM, upsampling): a session specialized to an input size makes constants
#: of the sizes they read (:func:`explainer.static_dims.fold_static_dims`).
COMPOSED_PREFIX = "cam/"
_GRAPHS = ("features", "head", "explanation", "input_gradient")
_ALIGN = 4096


@dataclass
class Bundle:
    """Features graph, gradient head graph and manifest of one explainable model.

    Attributes:
        features: ONNX model, model input -> ``manifest["head"]["inputs"]``.
        head: ONNX model, (head inputs, seed) -> (logits, gradient).
        manifest: the metadata described in the README's "Bundle format" section.
        path: the directory the bundle was loaded from or last saved to, if any.
        explanation: ONNX model, (input, top_k, least, class_ids) -> (logits, target ids,
            scores, probabilities, cams, heatmaps), described by ``manifest["explanation"]``;
            None for schema-1 bundles and models it cannot express.
        input_gradient: ONNX model, (input, seed) -> (logits, guided gradient of
            ``sum(seed * logits)`` w.r.t. the input), described by
            ``manifest["input_gradient"]``; present when exported with ``input_gradient=True``.
    """

    features: onnx.ModelProto
    head: onnx.ModelProto
    manifest: dict[str, Any]
    path: Path | None = field(default=None, compare=False)
    explanation: onnx.ModelProto | None = field(default=None, compare=False)
    input_gradient: onnx.ModelProto | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.manifest, dict):
            raise BundleError(f"bundle: the manifest must be a dict, got "
                              f"{type(self.manifest).__name__}")
        self._check_graphs(Manifest.parse(self.manifest, "bundle"))

    def _check_graphs(self, spec: Manifest) -> None:
        """Every tensor the manifest names is where it says (raises :class:`BundleError`)."""
        head = spec.head
        feature_inputs = [i.name for i in self.features.graph.input]
        if spec.input.name not in feature_inputs:
            raise BundleError(f"input {spec.input.name!r} is not an input of the features "
                              f"graph ({feature_inputs})")
        feature_outputs = [o.name for o in self.features.graph.output]
        head_inputs = [i.name for i in self.head.graph.input]
        head_outputs = [o.name for o in self.head.graph.output]
        for name in head.inputs:
            if name not in feature_outputs:
                raise BundleError(f"head input {name!r} is not an output of the features graph")
        for name in [*head.inputs, head.seed]:
            if name not in head_inputs:
                raise BundleError(f"tensor {name!r} is not an input of the head graph")
        for name in (head.logits, head.gradient, *head.outputs):
            if name not in head_outputs:
                raise BundleError(f"tensor {name!r} is not an output of the head graph")
        if spec.target.tensor != head.inputs[0]:
            raise BundleError("the target tensor must be the first head input")
        if (spec.explanation is None) != (self.explanation is None):
            raise BundleError("the manifest's explanation entry and the explanation graph must "
                              "come together")
        if spec.explanation is not None:
            entry = spec.explanation.entry
            names = {i.name for i in self.explanation.graph.input}
            names |= {o.name for o in self.explanation.graph.output}
            wanted = [*entry["inputs"].values(), *entry["outputs"].values()]
            missing = [n for n in wanted if n not in names]
            if missing:
                raise BundleError(f"explanation graph lacks the tensor(s) {missing}")
        if (spec.input_gradient is None) != (self.input_gradient is None):
            raise BundleError("the manifest's input_gradient entry and the input-gradient graph "
                              "must come together")
        if spec.input_gradient is not None:
            graph = self.input_gradient.graph
            names = {v.name for v in [*graph.input, *graph.output]}
            missing = [getattr(spec.input_gradient, k) for k in INPUT_GRADIENT_KEYS[1:]
                       if getattr(spec.input_gradient, k) not in names]
            if missing:
                raise BundleError(f"input-gradient graph lacks the tensor(s) {missing}")

    # --- convenience views -------------------------------------------------------------------
    @property
    def spec(self) -> Manifest:
        """The manifest as a typed, validated :class:`~explainer.manifest.Manifest` (parsed
        from :attr:`manifest` on each access, so it follows edits of the dict: hold on to
        it rather than reading it in a loop).

        Raises:
            BundleError: the manifest was edited into an invalid one.
        """
        return Manifest.parse(self.manifest, "bundle")

    @property
    def input_name(self) -> str:
        """Name of the model input the features graph reads."""
        return self.manifest["input"]["name"]

    @property
    def target_tensor(self) -> str:
        """Name of the activation tensor explained (first head input)."""
        return self.manifest["target"]["tensor"]

    @property
    def labels(self) -> list[str] | None:
        """Class names, resolving a named label set such as ``"imagenet"``."""
        return resolve_labels(self.manifest.get("labels"))

    # --- persistence ---------------------------------------------------------------------------
    def models(self) -> dict[str, onnx.ModelProto]:
        """The bundle's graphs by file stem: features, head and (when present) explanation and
        input_gradient."""
        models = {"features": self.features, "head": self.head}
        if self.explanation is not None:
            models["explanation"] = self.explanation
        if self.input_gradient is not None:
            models["input_gradient"] = self.input_gradient
        return models

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bundle directory ``path`` (created if needed) and return it.

        Every tensor of :data:`EXTERNAL_DATA_THRESHOLD` bytes or more goes once into
        :data:`WEIGHTS_FILE`, deduplicated by content: the explanation graph's weights are the
        features' and head's, so they point at the same offsets and the directory holds the
        weights once.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for stale in [WEIGHTS_FILE, *(f"{n}.onnx{x}" for n in _GRAPHS for x in ("", ".data"))]:
            (path / stale).unlink(missing_ok=True)
        offsets: dict[bytes, tuple[int, int]] = {}
        with open(path / WEIGHTS_FILE, "wb") as data:
            for name, model in self.models().items():
                model = copy.deepcopy(model)
                for tensor in _tensors(model.graph):
                    _externalize(tensor, data, offsets)
                onnx.save_model(model, path / f"{name}.onnx")
        if not offsets:
            (path / WEIGHTS_FILE).unlink()
        (path / "manifest.json").write_text(json.dumps(self.manifest, indent=2) + "\n")
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Bundle:
        """Read a bundle directory written by :meth:`save` (external data included)."""
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path}: not a bundle directory (expected features.onnx, head.onnx "
                              "and manifest.json inside)")
        files = {name: path / name for name in ("features.onnx", "head.onnx", "manifest.json")}
        for name, file in files.items():
            if not file.is_file():
                raise BundleError(f"{path}: bundle file {name} is missing")
        try:
            manifest = json.loads(files["manifest.json"].read_text())
        except json.JSONDecodeError as err:
            raise BundleError(f"{files['manifest.json']}: not valid JSON ({err})") from err
        if not isinstance(manifest, dict):
            raise BundleError(f"{files['manifest.json']}: expected a JSON object")
        spec = Manifest.parse(manifest, str(files["manifest.json"]))  # errors name the file
        names = ["features", "head"]
        for optional, entry in (("explanation", spec.explanation),
                                ("input_gradient", spec.input_gradient)):
            if entry is not None:  # a graph the manifest lists
                names.append(optional)
                files[f"{optional}.onnx"] = path / entry.file
                if not files[f"{optional}.onnx"].is_file():
                    raise BundleError(f"{path}: bundle file {entry.file} is missing (the "
                                      f"manifest lists a {optional} graph)")
        models = {}
        for name in names:
            try:
                models[name] = onnx.load(str(files[f"{name}.onnx"]))
            except Exception as err:  # protobuf raises DecodeError, missing external data OSError
                raise BundleError(
                    f"{files[f'{name}.onnx']}: cannot be read as ONNX ({err})"
                ) from err
        return cls(models["features"], models["head"], manifest, path=path,
                   explanation=models.get("explanation"),
                   input_gradient=models.get("input_gradient"))

    def check(self) -> None:
        """Run ``onnx.checker`` on every graph (raises ``onnx.checker.ValidationError``)."""
        for model in self.models().values():
            onnx.checker.check_model(model, full_check=True)


def _tensors(graph: onnx.GraphProto):
    """Initializers and node-attribute tensors of ``graph`` and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in [*attr.graphs, *([attr.g] if attr.HasField("g") else [])]:
                yield from _tensors(sub)


def _externalize(tensor: onnx.TensorProto, data: Any, offsets: dict[bytes, tuple[int, int]]):
    """Point a large tensor at its bytes in the open weights file, writing them on first use."""
    if (tensor.data_location == onnx.TensorProto.EXTERNAL
            or tensor.data_type == onnx.TensorProto.STRING):
        return
    raw = (tensor.raw_data if tensor.HasField("raw_data")
           else numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data)
    if len(raw) < EXTERNAL_DATA_THRESHOLD:
        return
    key = hashlib.blake2b(raw, digest_size=20).digest() + bytes(str(tensor.data_type), "ascii")
    if key not in offsets:
        offset = -(-data.tell() // _ALIGN) * _ALIGN
        data.seek(offset)
        data.write(raw)
        offsets[key] = (offset, len(raw))
    offset, length = offsets[key]
    dims, data_type, name = list(tensor.dims), tensor.data_type, tensor.name
    tensor.Clear()
    tensor.name, tensor.data_type = name, data_type
    tensor.dims.extend(dims)
    for key, value in (("location", WEIGHTS_FILE), ("offset", offset), ("length", length)):
        tensor.external_data.add(key=key, value=str(value))
    tensor.data_location = onnx.TensorProto.EXTERNAL


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds in its attributes (If branches, Loop and Scan bodies)."""
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        graphs.extend(attr.graphs)
        if attr.HasField("g"):
            graphs.append(attr.g)
    return graphs


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Names a node reads: its inputs, and what its subgraphs (If/Loop/Scan) capture from
    outside them (names a subgraph defines itself are not reads)."""
    names = [i for i in node.input if i]
    for graph in subgraphs(node):
        local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
        local |= {o for inner in graph.node for o in inner.output}
        for inner in graph.node:
            names.extend(n for n in node_inputs(inner) if n not in local)
    return names


def extract(model: onnx.ModelProto, inputs: list[str], outputs: list[str]
            ) -> tuple[onnx.ModelProto, list[str]]:
    """The part of ``model`` that computes ``outputs`` from ``inputs`` (and its initializers),
    subgraph captures included (onnx's extractor drops the producers of tensors an ``If``
    branch reads). Returns the model and the tensors it still needs that are neither
    ``inputs`` nor computed (empty when ``inputs`` suffice)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    needed, kept = set(outputs), []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o) and not set(node.output) <= set(inputs):
            kept.append(node)
            needed |= set(node_inputs(node)) - set(inputs)
    kept.reverse()
    produced = {o for node in kept for o in node.output}
    missing = sorted(n for n in needed if n not in produced and n not in initializers
                     and n not in inputs and n not in outputs)
    types = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}
    used = {n for node in kept for n in node_inputs(node)}
    part = onnx.helper.make_graph(
        kept, graph.name,
        [types.get(n) or onnx.ValueInfoProto(name=n) for n in inputs],
        [types.get(n) or onnx.ValueInfoProto(name=n) for n in outputs],
        initializer=[t for t in graph.initializer if t.name in used],
        value_info=[v for v in graph.value_info if v.name in produced],
    )
    result = onnx.helper.make_model(part, opset_imports=list(model.opset_import),
                                    ir_version=model.ir_version)
    result.functions.extend(model.functions)
    return result, missing

