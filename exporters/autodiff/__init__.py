"""Reverse-mode automatic differentiation of ONNX graphs (gradient graphs for Grad-CAM).

Example:
    >>> grad_model = build_gradient_graph(head, wrt="A", output="logits")  # doctest: +SKIP

The registry :data:`RULES` maps op types to gradient rules; the rules live in
:mod:`exporters.autodiff.rules`.
"""

from __future__ import annotations

from . import rules as _rules  # noqa: F401  (fills RULES)
from .engine import (
    RULES,
    GradContext,
    GradientError,
    GradientRule,
    MissingGradientRule,
    build_gradient_graph,
    has_rule,
    path_ops,
    register,
    unsupported_nodes,
)

__all__ = [
    "RULES",
    "GradContext",
    "GradientError",
    "GradientRule",
    "MissingGradientRule",
    "build_gradient_graph",
    "has_rule",
    "path_ops",
    "register",
    "unsupported_nodes",
]
