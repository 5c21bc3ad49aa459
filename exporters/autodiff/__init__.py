"""Reverse-mode automatic differentiation of ONNX graphs (gradient graphs for Grad-CAM).

Example:
    >>> grad_model = build_gradient_graph(head, wrt="A", output="logits")  # doctest: +SKIP

:mod:`~exporters.autodiff.engine` holds the registry :data:`RULES` and the reverse walk,
:mod:`~exporters.autodiff.emitter` what a rule sees and writes, and
:mod:`exporters.autodiff.rules` one rule per op, grouped by family.
"""

from __future__ import annotations

from ..errors import GradientError, MissingGradientRule
from . import rules as _rules  # noqa: F401  (fills RULES)
from .emitter import GradContext
from .engine import (
    RULES,
    GradientRule,
    build_gradient_graph,
    differentiable,
    gradient_path,
    register,
)
from .rules.guided import GUIDED_RULES

__all__ = [
    "GUIDED_RULES",
    "RULES",
    "GradContext",
    "GradientError",
    "GradientRule",
    "MissingGradientRule",
    "build_gradient_graph",
    "differentiable",
    "gradient_path",
    "register",
]
