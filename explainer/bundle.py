"""A bundle: the two ONNX graphs of a split model plus the manifest that says how to use them.

On disk a bundle is a directory::

    features.onnx   model inputs -> activation (and any other tensor the head needs)
    head.onnx       (activation, seed) -> (logits, gradient of sum(seed * logits) w.r.t. activation)
    manifest.json   schema version, input, target layer, layouts, preprocessing, labels, versions

Large weights are stored as ONNX external data next to the graph (``features.onnx.data``).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from .errors import BundleError
from .labels import check_labels, resolve_labels

__all__ = ["Bundle", "BundleError", "SCHEMA_VERSION", "EXTERNAL_DATA_THRESHOLD"]

SCHEMA_VERSION = 1
#: Graphs larger than this (bytes) are saved with their weights as external data.
EXTERNAL_DATA_THRESHOLD = 32 * 1024 * 1024

_REQUIRED = {
    "schema_version": int,
    "input": dict,
    "target": dict,
    "head": dict,
    "num_classes": int,
}
_REQUIRED_SUB = {
    "input": ("name", "shape", "layout"),
    "target": ("tensor", "layout"),
    "head": ("inputs", "seed", "logits", "gradient"),
}


_LAYOUTS = ("NCHW", "NHWC")


def _check_manifest(manifest: dict[str, Any], where: str) -> None:
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise BundleError(
                f"{where}: manifest field {key!r} is missing or not a {kind.__name__}"
            )
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise BundleError(
            f"{where}: manifest schema_version {manifest['schema_version']} is newer than this "
            f"onnxcam understands ({SCHEMA_VERSION}); upgrade onnxcam"
        )
    for key, subkeys in _REQUIRED_SUB.items():
        for sub in subkeys:
            if sub not in manifest[key]:
                raise BundleError(f"{where}: manifest field {key}.{sub} is missing")
    _check_values(manifest, where)


def _check_values(manifest: dict[str, Any], where: str) -> None:
    """The types and values the runtime relies on, each named when wrong."""
    head, model_input, target = manifest["head"], manifest["input"], manifest["target"]
    problems = []
    if manifest["num_classes"] < 1:
        problems.append("num_classes must be at least 1")
    inputs = head["inputs"]
    if not (isinstance(inputs, list) and inputs and all(isinstance(i, str) for i in inputs)):
        problems.append("head.inputs must be a non-empty list of tensor names")
    for key, value in [*((f"head.{k}", head[k]) for k in ("seed", "logits", "gradient")),
                       ("input.name", model_input["name"]), ("target.tensor", target["tensor"])]:
        if not isinstance(value, str):
            problems.append(f"{key} must be a tensor name (a string), got {value!r}")
    for key, value in (("input.layout", model_input["layout"]), ("target.layout",
                                                                target["layout"])):
        if value not in _LAYOUTS:
            problems.append(f"{key} must be one of {_LAYOUTS}, got {value!r}")
    shape = model_input["shape"]
    if not (isinstance(shape, list) and len(shape) == 4 and all(
            d is None or isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool)
                                                and d > 0) for d in shape)):
        problems.append(f"input.shape must be 4 dims (positive ints or names), got {shape!r}")
    if model_input.get("dtype") not in (None, "float32", "float16", "float64", "uint8"):
        problems.append(f"input.dtype must be float32 or uint8, got {model_input['dtype']!r}")
    if manifest.get("preprocessing") is not None:
        from .preprocessing import Preprocessing

        try:
            Preprocessing.from_dict(manifest["preprocessing"])
        except (TypeError, ValueError, AttributeError) as err:
            problems.append(f"preprocessing is invalid ({err})")
    if problems:
        raise BundleError(f"{where}: manifest {'; '.join(problems)}")


@dataclass
class Bundle:
    """Features graph, gradient head graph and manifest of one explainable model.

    Attributes:
        features: ONNX model, model input -> ``manifest["head"]["inputs"]``.
        head: ONNX model, (head inputs, seed) -> (logits, gradient).
        manifest: the metadata described in the README's "Bundle format" section.
        path: the directory the bundle was loaded from or last saved to, if any.
    """

    features: onnx.ModelProto
    head: onnx.ModelProto
    manifest: dict[str, Any]
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_manifest(self.manifest, "bundle")
        self._check_graphs()
        check_labels(self.manifest.get("labels"), self.manifest["num_classes"])

    def _check_graphs(self) -> None:
        head = self.manifest["head"]
        feature_inputs = [i.name for i in self.features.graph.input]
        if self.manifest["input"]["name"] not in feature_inputs:
            raise BundleError(f"input {self.manifest['input']['name']!r} is not an input of the "
                              f"features graph ({feature_inputs})")
        feature_outputs = [o.name for o in self.features.graph.output]
        head_inputs = [i.name for i in self.head.graph.input]
        head_outputs = [o.name for o in self.head.graph.output]
        for name in head["inputs"]:
            if name not in feature_outputs:
                raise BundleError(f"head input {name!r} is not an output of the features graph")
        for name in [*head["inputs"], head["seed"]]:
            if name not in head_inputs:
                raise BundleError(f"tensor {name!r} is not an input of the head graph")
        for name in (head["logits"], head["gradient"]):
            if name not in head_outputs:
                raise BundleError(f"tensor {name!r} is not an output of the head graph")
        if self.manifest["target"]["tensor"] != head["inputs"][0]:
            raise BundleError("the target tensor must be the first head input")

    # --- convenience views -------------------------------------------------------------------
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
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bundle directory ``path`` (created if needed) and return it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, model in (("features", self.features), ("head", self.head)):
            target = path / f"{name}.onnx"
            data = path / f"{name}.onnx.data"
            if data.exists():
                data.unlink()
            if model.ByteSize() > EXTERNAL_DATA_THRESHOLD:
                model = copy.deepcopy(model)
                onnx.save_model(
                    model,
                    target,
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=data.name,
                    size_threshold=1024,
                )
            else:
                onnx.save_model(model, target)
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
        _check_manifest(manifest, str(files["manifest.json"]))
        models = {}
        for name in ("features", "head"):
            try:
                models[name] = onnx.load(str(files[f"{name}.onnx"]))
            except Exception as err:  # protobuf raises DecodeError, missing external data OSError
                raise BundleError(
                    f"{files[f'{name}.onnx']}: cannot be read as ONNX ({err})"
                ) from err
        return cls(models["features"], models["head"], manifest, path=path)

    def check(self) -> None:
        """Run ``onnx.checker`` on both graphs (raises ``onnx.checker.ValidationError``)."""
        for model in (self.features, self.head):
            onnx.checker.check_model(model, full_check=True)
