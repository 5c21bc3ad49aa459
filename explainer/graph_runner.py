"""The explanation graph on ONNX Runtime: a whole explanation in one session run.

A schema-2 bundle carries ``explanation.onnx`` (composed by ``exporters.explanation``): the
features graph, the logits pass, the target selection, the gradient head for every (image,
target) pair, the CAM, the bilinear upsampling and the min-max, in one graph. One run keeps
ONNX Runtime's thread spinning on (its default) without two sessions fighting for the cores,
and no numpy post-processing is left. On CUDA the input and the outputs are bound once
(IO binding); the intermediate tensors never leave the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .targets import GraphTargets

__all__ = ["ExplanationGraph"]

#: The graph's outputs, as :class:`explainer.Explanation` fields want them.
_FIELDS = ("logits", "target_ids", "scores", "probabilities", "cams", "heatmaps")


class ExplanationGraph:
    """Run a bundle's explanation graph.

    Args:
        model: the explanation graph (``Bundle.explanation``).
        entry: its manifest entry (``manifest["explanation"]``: method, inputs, outputs).
        options: session options (the caller's threads and optimization level; spinning on).
        providers: ONNX Runtime providers.
        on_cuda: bind the input and the outputs with IO binding.
    """

    def __init__(self, model: onnx.ModelProto, entry: dict[str, Any],
                 options: ort.SessionOptions, providers: list[Any], on_cuda: bool) -> None:
        #: the CAM methods the graph computes; the ``method`` input is an index into it
        #: (graphs written before it had that input compute only ``entry["method"]``)
        self.methods: list[str] = list(entry.get("methods") or [entry["method"]])
        self.inputs: dict[str, str] = dict(entry["inputs"])
        self.outputs: list[str] = [entry["outputs"][key] for key in _FIELDS]
        self.on_cuda = on_cuda
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=providers)

    def run(self, x: np.ndarray, targets: GraphTargets,
            method: str | None = None) -> dict[str, np.ndarray]:
        """One session run: the input batch, the targets and a method of :attr:`methods`
        (None: the first) -> the outputs by field name (``logits``, ``target_ids``,
        ``scores``, ``probabilities``, ``cams``, ``heatmaps``), target columns in the order
        the user asked for."""
        feeds = {
            self.inputs["input"]: x,
            self.inputs["top_k"]: np.array([targets.top_k], np.int64),
            self.inputs["least"]: np.array([targets.least], np.int64),
            self.inputs["class_ids"]: np.ascontiguousarray(targets.class_ids, np.int64),
        }
        if "method" in self.inputs:
            index = self.methods.index(method) if method is not None else 0
            feeds[self.inputs["method"]] = np.array([index], np.int64)
        if self.on_cuda:
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in self.outputs:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self.session.run(self.outputs, feeds)
        result = dict(zip(_FIELDS, values, strict=True))
        if targets.columns is not None:  # e.g. "least+top2": the graph gives top | least
            for key in _FIELDS[1:]:
                result[key] = np.ascontiguousarray(result[key][:, targets.columns])
        return result
