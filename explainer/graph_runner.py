"""The explanation graph on ONNX Runtime: a whole explanation in one session run.

A schema-2 bundle carries ``explanation.onnx`` (composed by ``exporters.compose``): the
features graph, the logits pass, the target selection, the gradient head for every (image,
target) pair, the CAM, the bilinear upsampling and the min-max, in one graph. One run keeps
ONNX Runtime's thread spinning on (its default) without two sessions fighting for the cores,
and no numpy post-processing is left. On CUDA the input and the outputs are bound once
(IO binding); the intermediate tensors never leave the device.

A graph whose input accepts any height and width runs on sessions specialized to the sizes
it meets (:class:`explainer.sessions.SizedSessions`): the second run at a size builds a
session for it (about as long as loading the bundle; the first runs on a session for every
size), that run and later ones at that size are as fast as with a bundle exported at that
fixed size. ``sizes`` bounds how many are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .bundle import COMPOSED_PREFIX
from .sessions import SizedSessions
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
        sizes: how many input sizes (height, width) keep a specialized session (built at
            the second run at a size), the least recently used released first; 0: one
            session for every size (slower where the size is symbolic). Graphs with a fixed
            input size have one session either way.
    """

    def __init__(self, model: onnx.ModelProto, entry: dict[str, Any],
                 options: ort.SessionOptions, providers: list[Any], on_cuda: bool,
                 sizes: int = 4) -> None:
        #: the CAM methods the graph computes; the ``method`` input is an index into it
        #: (graphs written before it had that input compute only ``entry["method"]``)
        self.methods: list[str] = list(entry.get("methods") or [entry["method"]])
        self.inputs: dict[str, str] = dict(entry["inputs"])
        self.outputs: list[str] = [entry["outputs"][key] for key in _FIELDS]
        self.on_cuda = on_cuda
        #: the sessions, one per input size met (see :class:`SizedSessions`)
        self.sessions = SizedSessions(model, self.inputs["input"], options, providers, sizes,
                                      fold_prefix=COMPOSED_PREFIX)
        if not self.sessions.axes:
            self.sessions.get(())  # a fixed size: build the one session now

    @property
    def session(self) -> ort.InferenceSession:
        """The session of the latest run (before any run: the session for the graph's own,
        possibly symbolic, sizes)."""
        return self.sessions.last

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
        session = self.sessions.get(x.shape)
        if self.on_cuda:
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in self.outputs:
                binding.bind_output(name, "cpu")
            session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = session.run(self.outputs, feeds)
        result = dict(zip(_FIELDS, values, strict=True))
        if targets.columns is not None:  # e.g. "least+top2": the graph gives top | least
            for key in _FIELDS[1:]:
                result[key] = np.ascontiguousarray(result[key][:, targets.columns])
        return result
