"""Rules that replace the true gradient for pixel-space explanations.

Guided Backpropagation (Springenberg et al., "Striving for Simplicity: The All Convolutional
Net", ICLR 2015 workshop): at every ReLU only positive gradients pass, and only where the
forward input was positive: ``dx = dy * (x > 0) * (dy > 0)``. Pass :data:`GUIDED_RULES` as
``rules=`` to :func:`~exporters.autodiff.build_gradient_graph`.
"""

from __future__ import annotations

from ..emitter import GradContext
from ..engine import GradientRule

__all__ = ["GUIDED_RULES"]


def _guided_relu(ctx: GradContext) -> list[str | None]:
    x, dy = ctx.inputs[0], ctx.dy
    mask = ctx.op("And", ctx.op("Greater", x, ctx.scalar(0, x)),
                  ctx.op("Greater", dy, ctx.scalar(0, dy)))
    return [ctx.op("Where", mask, dy, ctx.scalar(0, dy))]


#: op type -> the guided rule that replaces its gradient
GUIDED_RULES = {"Relu": GradientRule(_guided_relu)}
