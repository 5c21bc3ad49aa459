"""Errors of the exporters, all under :class:`explainer.OnnxcamError` (re-exported here).

Usage errors (exit code 2 in the CLI): a model, target, output or option that cannot be
explained as asked. Failures (exit code 1): an export or a gradient graph that could not be
built.
"""

from __future__ import annotations

import onnx

from explainer.errors import OnnxcamError, UsageError

__all__ = [
    "ExportError",
    "GradientError",
    "MissingGradientRule",
    "OnnxExportError",
    "OnnxcamError",
    "SplitError",
]


class OnnxExportError(UsageError):
    """An ONNX model cannot be explained as asked (unreadable file, no image input, unknown
    target or output, unknown layout, wrong number of labels...)."""


class SplitError(UsageError):
    """A model cannot be cut where asked (unknown tensor, target not on the output path...)."""


class ExportError(OnnxcamError, RuntimeError):
    """A PyTorch model could not be exported or tapped at the requested layer."""


class GradientError(OnnxcamError):
    """A gradient graph could not be built (unknown names, shapes a rule needs, opset...).

    Attributes:
        node_index: where a rule failed, the index of its node in the differentiated graph
            (set by the engine), else None.
    """

    node_index: int | None = None


class MissingGradientRule(GradientError):
    """A node on the path from the activation to the logits has an op without gradient rule."""

    def __init__(self, node: onnx.NodeProto) -> None:
        self.op_type = node.op_type
        self.node_name = node.name
        domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
        super().__init__(
            f"no gradient rule for op '{domain}{node.op_type}' (node '{node.name}'); choose a "
            "target layer after this node, or add a rule in exporters/autodiff/rules/"
        )
