"""The manifest of a bundle, validated and typed in one place.

``manifest.json`` (``Bundle.manifest``, a plain dict, is what writers produce and save) is
checked and turned into a :class:`Manifest` of frozen dataclasses by :meth:`Manifest.parse`;
:attr:`explainer.bundle.Bundle.spec` gives that typed view. Readers use it instead of string
keys: ``spec.input.layout``, ``spec.head.logits``, ``spec.layers[0].tensor``...

Fields (see the README's "Bundle format"):

* ``schema_version``; ``num_classes``; ``labels`` (a list, or a named set such as
  ``"imagenet"``); ``preprocessing``;
* ``input``: the model input (``name``, ``shape`` of 4 dims, ``layout``, ``dtype``);
* ``target``: the explained layer (``layer``, ``tensor``, ``layout``, token fields) and, for a
  layer sweep, ``layers`` (each also with its ``gradient`` output of the head);
* ``head``: the gradient head's ``inputs`` (the cut tensors, the target first), ``seed``,
  ``logits`` (the explained tensor), ``gradient``, ``outputs`` (model outputs it also returns)
  and ``score`` (``"logit"`` or ``"probability"``);
* (schema 2) ``explanation``: the explanation graph's file, methods, inputs and outputs;
* (schema 3) ``task`` (``classify``, ``detect``, ``segment``, ``sequence``) and ``format``;
* ``input_gradient``: the guided input-gradient graph's file and tensor names;
* ``export``: notes of the export (the model output names, guessed preprocessing...).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .activations import LAYOUTS
from .errors import BundleError
from .labels import check_labels, resolve_labels
from .preprocessing import Preprocessing

__all__ = [
    "SCHEMA_VERSION", "TASKS", "ExplanationSpec", "HeadSpec", "InputGradientSpec", "InputSpec",
    "LayerSpec", "Manifest",
]

SCHEMA_VERSION = 3
#: the tasks a manifest may declare
TASKS = ("classify", "detect", "segment", "sequence")
#: layouts of the model input
INPUT_LAYOUTS = ("NCHW", "NHWC")

_REQUIRED = {"schema_version": int, "input": dict, "target": dict, "head": dict,
             "num_classes": int}
_REQUIRED_SUB = {
    "input": ("name", "shape", "layout"),
    "target": ("tensor", "layout"),
    "head": ("inputs", "seed", "logits", "gradient"),
}
_EXPLANATION_KEYS = ("file", "method", "inputs", "outputs")
_EXPLANATION_INPUTS = ("input", "top_k", "least", "class_ids")
_EXPLANATION_OUTPUTS = ("logits", "target_ids", "scores", "probabilities", "cams", "heatmaps")
#: fields of the ``input_gradient`` entry (the Guided Backpropagation graph)
INPUT_GRADIENT_KEYS = ("file", "input", "seed", "logits", "gradient")


@dataclass(frozen=True)
class InputSpec:
    """The model input the features graph reads.

    Attributes:
        name: its tensor name.
        shape: 4 dims, each a positive int or a symbolic name (or None).
        layout: ``"NCHW"`` or ``"NHWC"``.
        dtype: the numpy dtype the batch must have (float32 unless the manifest says otherwise).
    """

    name: str
    shape: tuple[int | str | None, ...]
    layout: str
    dtype: np.dtype

    @property
    def static_batch(self) -> int | None:
        """The fixed batch size of models exported with one (TensorFlow/Keras conversions),
        else None."""
        batch = self.shape[0] if self.shape else None
        return batch if isinstance(batch, int) else None

    def size(self, x: np.ndarray) -> tuple[int, int]:
        """(H, W) of an input batch in this layout."""
        return tuple(x.shape[2:4] if self.layout == "NCHW" else x.shape[1:3])


@dataclass(frozen=True)
class LayerSpec:
    """One explained layer: the target, or a layer of a layer sweep.

    Attributes:
        layer: the layer's name (a module or node name, else the tensor's).
        tensor: the activation tensor.
        layout: its layout (``"NCHW"``, ``"NHWC"`` or ``"NLC"`` tokens).
        gradient: the head output holding its gradient.
        entry: the manifest entry as a dict, token fields (``token_grid``, ``prefix_tokens``)
            included, for the functions of :mod:`explainer.activations` and
            :mod:`explainer.layers`; do not modify it.
    """

    layer: str
    tensor: str
    layout: str
    gradient: str
    entry: dict[str, Any]


@dataclass(frozen=True)
class HeadSpec:
    """The gradient head: (cut tensors, seed) -> (explained tensor, gradient, outputs).

    Attributes:
        inputs: the cut tensors (features graph outputs), the target's activation first.
        seed: the seed input (``sum(seed * logits)`` is differentiated).
        logits: the explained tensor (a classifier's logits, a detector's scores...).
        gradient: the gradient of the target's activation.
        outputs: model outputs the head returns besides ``logits`` (a detector's).
        score: what ``logits`` holds: ``"logit"``, or ``"probability"`` (a softmax's output
            whose logits the export could not find).
    """

    inputs: tuple[str, ...]
    seed: str
    logits: str
    gradient: str
    outputs: tuple[str, ...] = ()
    score: str = "logit"


@dataclass(frozen=True)
class ExplanationSpec:
    """The explanation graph (schema 2): a whole explanation in one run.

    Attributes:
        file: its file name in the bundle directory.
        methods: the CAM methods it computes (its ``method`` input indexes them).
        entry: the manifest entry as a dict (what :class:`explainer.graph_runner.
            ExplanationGraph` takes); do not modify it.
    """

    file: str
    methods: tuple[str, ...]
    entry: dict[str, Any]


@dataclass(frozen=True)
class InputGradientSpec:
    """The guided input-gradient graph: (input, seed) -> (logits, gradient w.r.t. the input)."""

    file: str
    input: str
    seed: str
    logits: str
    gradient: str


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest, validated (:meth:`parse`); see the module docstring.

    Attributes:
        schema_version: the manifest's schema version.
        input: the model input.
        target: the explained layer (the first head input).
        layers: every explained layer, ``target`` first (one unless a layer sweep).
        head: the gradient head.
        num_classes: the size of the explained tensor's class axis (1 where it has none).
        task: ``"classify"``, ``"detect"``, ``"segment"`` or ``"sequence"``.
        format: a task's output format (``name``, ``outputs``, ``classes``...), as a dict;
            None for a classifier.
        labels: class names (a named set such as ``"imagenet"`` resolved), or None.
        preprocessing: how images become the model input, or None when not recorded.
        explanation: the explanation graph, or None.
        input_gradient: the guided input-gradient graph, or None.
        export: the export's notes (``output``: the model output(s) explained...).
    """

    schema_version: int
    input: InputSpec
    target: LayerSpec
    layers: tuple[LayerSpec, ...]
    head: HeadSpec
    num_classes: int
    task: str = "classify"
    format: dict[str, Any] | None = None
    labels: list[str] | None = None
    preprocessing: Preprocessing | None = None
    explanation: ExplanationSpec | None = None
    input_gradient: InputGradientSpec | None = None
    export: dict[str, Any] | None = None

    @property
    def output_names(self) -> set[str]:
        """Names ``seeds=`` may use for the explained tensor: itself and the model output(s)
        it stands for."""
        output = (self.export or {}).get("output")
        names = {self.head.logits, *(output if isinstance(output, list) else [output])}
        return names - {None}

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str = "bundle") -> Manifest:
        """Validate a manifest dict and return its typed view.

        Args:
            raw: the manifest (``manifest.json`` as loaded).
            where: what to name in error messages (the file, or ``"bundle"``).

        Raises:
            BundleError: a field is missing, of the wrong type or out of range (named).
            LabelError: the labels are an unknown set, or not one name per class.
        """
        if not isinstance(raw, Mapping):
            raise BundleError(f"{where}: the manifest must be a JSON object, got "
                              f"{type(raw).__name__}")
        check_manifest(raw, where)
        raw = copy.deepcopy(dict(raw))  # the view never changes with the dict
        head_entry, target_entry = raw["head"], raw["target"]
        head = HeadSpec(tuple(head_entry["inputs"]), head_entry["seed"], head_entry["logits"],
                        head_entry["gradient"], tuple(head_entry.get("outputs") or ()),
                        head_entry.get("score", "logit"))
        model_input = raw["input"]
        layers = raw.get("layers") or [{**target_entry, "gradient": head.gradient}]
        explanation = raw.get("explanation")
        gradient = raw.get("input_gradient")
        pre = raw.get("preprocessing")
        return cls(
            schema_version=raw["schema_version"],
            input=InputSpec(model_input["name"], tuple(model_input["shape"]),
                            model_input["layout"], np.dtype(model_input.get("dtype") or "float32")),
            target=_layer({**target_entry, "gradient": head.gradient}),
            layers=tuple(_layer(entry) for entry in layers),
            head=head,
            num_classes=raw["num_classes"],
            task=raw.get("task", "classify"),
            format=raw.get("format"),
            labels=resolve_labels(check_labels(raw.get("labels"), raw["num_classes"])),
            preprocessing=Preprocessing.from_dict(pre) if pre else None,
            explanation=None if explanation is None else ExplanationSpec(
                explanation["file"],
                tuple(explanation.get("methods") or [explanation["method"]]), explanation),
            input_gradient=None if gradient is None else InputGradientSpec(
                *(gradient[k] for k in INPUT_GRADIENT_KEYS)),
            export=raw.get("export"),
        )


def _layer(entry: dict[str, Any]) -> LayerSpec:
    entry = {"layer": entry["tensor"], **entry}  # bundles that name no layer: the tensor
    return LayerSpec(entry["layer"], entry["tensor"], entry["layout"], entry["gradient"], entry)


# --- validation ---------------------------------------------------------------------------------
def check_manifest(manifest: Mapping[str, Any], where: str) -> None:
    """Check the fields the runtime relies on (:meth:`Manifest.parse` calls it).

    Raises:
        BundleError: naming ``where`` and each field at fault.
    """
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
    _check_layers(manifest, where)
    _check_input_gradient(manifest, where)
    _check_explanation(manifest, where)


def _check_explanation(manifest: Mapping[str, Any], where: str) -> None:
    entry = manifest.get("explanation")
    if entry is None:
        return
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: manifest field explanation must be an object")
    missing = [k for k in _EXPLANATION_KEYS if k not in entry]
    if missing:
        raise BundleError(f"{where}: manifest field explanation lacks {missing}")
    file, method = entry["file"], entry["method"]
    if not (isinstance(file, str) and file and Path(file).name == file):
        raise BundleError(f"{where}: explanation.file must be a file name, got {file!r}")
    if not isinstance(method, str):
        raise BundleError(f"{where}: explanation.method must be a string, got {method!r}")
    methods = entry.get("methods", [method])
    if not (isinstance(methods, list) and methods and methods[0] == method
            and all(isinstance(m, str) for m in methods)):
        raise BundleError(f"{where}: explanation.methods must be a list of method names "
                          f"starting with explanation.method {method!r}, got {methods!r}")
    if "methods" in entry and "method" not in entry["inputs"]:
        raise BundleError(f"{where}: explanation.inputs must name the method input")
    for key, names in (("inputs", _EXPLANATION_INPUTS), ("outputs", _EXPLANATION_OUTPUTS)):
        value = entry[key]
        if not (isinstance(value, dict) and all(isinstance(value.get(n), str) for n in names)):
            raise BundleError(f"{where}: explanation.{key} must map {list(names)} to tensor names")


def _check_input_gradient(manifest: Mapping[str, Any], where: str) -> None:
    entry = manifest.get("input_gradient")
    if entry is None:
        return
    if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) and entry[k] for k in INPUT_GRADIENT_KEYS):
        raise BundleError(f"{where}: manifest field input_gradient must map "
                          f"{list(INPUT_GRADIENT_KEYS)} to names")
    if Path(entry["file"]).name != entry["file"]:
        raise BundleError(f"{where}: input_gradient.file must be a file name, got "
                          f"{entry['file']!r}")


def _check_layers(manifest: Mapping[str, Any], where: str) -> None:
    layers = manifest.get("layers")
    if layers is None:
        return
    if not (isinstance(layers, list) and layers and all(
            isinstance(entry, dict) and all(isinstance(entry.get(k), str)
                                            for k in ("tensor", "layout", "gradient"))
            for entry in layers)):
        raise BundleError(f"{where}: manifest field layers must be a non-empty list of "
                          "{layer, tensor, layout, gradient} entries")


def _check_values(manifest: Mapping[str, Any], where: str) -> None:
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
    if head.get("score", "logit") not in ("logit", "probability"):
        problems.append(f"head.score must be 'logit' or 'probability', got {head['score']!r}")
    for key, value, allowed in (("input.layout", model_input["layout"], INPUT_LAYOUTS),
                                ("target.layout", target["layout"], LAYOUTS)):
        if value not in allowed:
            problems.append(f"{key} must be one of {allowed}, got {value!r}")
    shape = model_input["shape"]
    if not (isinstance(shape, list) and len(shape) == 4 and all(
            d is None or isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool)
                                                and d > 0) for d in shape)):
        problems.append(f"input.shape must be 4 dims (positive ints or names), got {shape!r}")
    if model_input.get("dtype") not in (None, "float32", "float16", "float64", "uint8"):
        problems.append(f"input.dtype must be float32 or uint8, got {model_input['dtype']!r}")
    if manifest.get("preprocessing") is not None:
        try:
            Preprocessing.from_dict(manifest["preprocessing"])
        except (TypeError, ValueError, AttributeError) as err:
            problems.append(f"preprocessing is invalid ({err})")
    problems += _task_problems(manifest)
    if problems:
        raise BundleError(f"{where}: manifest {'; '.join(problems)}")


def _task_problems(manifest: Mapping[str, Any]) -> list[str]:
    """The task fields (schema 3): ``task``, a detector's ``format``, ``head.outputs``."""
    task = manifest.get("task", "classify")
    if task not in TASKS:
        return [f"task must be one of {TASKS}, got {task!r}"]
    outputs = manifest["head"].get("outputs", [])
    problems = []
    if not (isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)):
        problems.append(f"head.outputs must be a list of tensor names, got {outputs!r}")
    if task != "classify":
        fmt = manifest.get("format")
        if not (isinstance(fmt, dict) and isinstance(fmt.get("name"), str)
                and isinstance(fmt.get("outputs"), dict)):
            problems.append(f"a {task} bundle needs format {{name, outputs}}, got {fmt!r}")
    return problems
