"""Explain a deployed ONNX model: candidate layers, automatic target, layouts, outputs.

:func:`export_onnx` turns any single-input image classifier in ONNX (tf2onnx, torch.onnx,
hand-built...) into a :class:`explainer.Bundle`; :func:`candidate_layers` lists the tensors one
can explain it from. Needs onnx and numpy only (never torch). One module per job:

* :mod:`.load`: reading files (external data, old opsets), hashing, a light copy for analysis;
* :mod:`.outputs`: which output holds the class scores, through a final softmax;
* :mod:`exporters.layouts`: NCHW/NHWC by propagation through the graph's ops;
* :mod:`.candidates`: the candidate layers and :func:`auto_targets`, the one rule for the
  automatic target (``onnxcam inspect`` and :func:`export_onnx` both use it);
* :mod:`.rewrites`: edits that make a cut possible (batch size read from the target);
* :mod:`.tasks`: the task (classify, detect, segment, sequence), told from the outputs, with
  :mod:`.probe` (one run for the outputs' real sizes) and :mod:`.formats` (the output formats);
* :mod:`.heads`: where a task's head differentiates and where its features enter it (the
  automatic targets); :mod:`.targets`: the target and input layout an export uses;
* :mod:`.defaults`: the preprocessing and vocabulary recorded when none is given;
* :mod:`.export`: :func:`export_onnx` and :func:`candidate_layers`.

A model with a fixed batch size is exported as it is; the :class:`explainer.Explainer` runs it
in chunks of that size.
"""

from __future__ import annotations

from ..errors import OnnxExportError
from ..layouts import SUPPORTED_LAYOUTS, detect_layouts
from .candidates import Candidate, auto_targets
from .export import candidate_layers, export_onnx, inspect_model
from .load import file_digest, load_model

__all__ = [
    "Candidate",
    "OnnxExportError",
    "SUPPORTED_LAYOUTS",
    "auto_targets",
    "candidate_layers",
    "detect_layouts",
    "export_onnx",
    "file_digest",
    "inspect_model",
    "load_model",
]
