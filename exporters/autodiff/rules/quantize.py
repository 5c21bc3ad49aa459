"""Gradient rules of quantization: QuantizeLinear and DequantizeLinear (QDQ graphs).

Quantized graphs are explained as they run; the gradient passes QuantizeLinear as a
straight-through estimator (see :func:`_quantize_linear`).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..emitter import GradContext
from ..engine import register

__all__: list[str] = []

Grads = list[str | None]


def _per_axis(ctx: GradContext, scale: str, like: str) -> str:
    """``scale`` shaped to broadcast against ``like`` (per-tensor scalar or per-axis 1-d)."""
    if ctx.attr("block_size", 0):
        raise ctx.error("blocked quantization (block_size) is not supported")
    shape = ctx.shape(scale)
    if shape is not None and (len(shape) == 0 or shape == (1,)):
        return scale
    rank = ctx.rank(like)
    axis = ctx.attr("axis", 1)
    axis = axis + rank if axis < 0 else axis
    return ctx.op("Reshape", scale, ctx.ints([-1] + [1] * (rank - 1 - axis)))


@register("DequantizeLinear")
def _dequantize_linear(ctx: GradContext) -> Grads:
    """y = (x - zero_point) * scale, differentiated as a function of a real-valued ``x``.

    ``x`` is an integer tensor; its "gradient" is the float ``dy * scale``, which only a
    :func:`_quantize_linear` upstream consumes (the engine lets gradients flow through
    ``QuantizeLinear`` outputs). Paired with that rule, ``DequantizeLinear(QuantizeLinear(x))``
    gets the straight-through gradient of fake quantization.
    """
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.error("gradients w.r.t. scale/zero point are not supported")
    x, scale = ctx.inputs[:2]
    return [ctx.op("Mul", ctx.dy, _per_axis(ctx, scale, x)), None, None]


@register("QuantizeLinear")
def _quantize_linear(ctx: GradContext) -> Grads:
    """Straight-through estimator (STE): ``round`` is treated as the identity.

    ``y = saturate(round(x / scale) + zero_point)`` has a zero derivative almost everywhere, so
    quantization-aware training and every explainer of quantized graphs use the derivative of
    ``clip(x / scale + zero_point, qmin, qmax)`` instead: ``dx = dy / scale`` where the value is
    representable (``qmin - 1/2 < x / scale + zero_point < qmax + 1/2``: it does not saturate)
    and 0 where it saturates. This is not the true derivative of the op; its table row checks it
    against finite differences of that smooth surrogate (``Row.surrogate`` in
    ``tests/export/autodiff/test_autodiff_rules.py``).
    """
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.error("gradients w.r.t. scale/zero point are not supported")
    x, scale = ctx.inputs[:2]
    zero_point = ctx.inputs[2] if len(ctx.inputs) > 2 else ""
    output_type = ctx.dtype(ctx.outputs[0])
    zp_type = ctx.dtype(zero_point) if zero_point else 0
    elem_type = output_type if output_type not in (0, 1) else (zp_type or 2)  # default uint8
    info = np.iinfo(helper.tensor_dtype_to_np_dtype(elem_type))
    scale = ctx.cast_like(_per_axis(ctx, scale, x), x)
    t = ctx.op("Div", x, scale)
    if zero_point:
        t = ctx.op("Add", t, ctx.cast_like(_per_axis(ctx, zero_point, x), x))
    inside = ctx.op("And", ctx.op("Greater", t, ctx.scalar(info.min - 0.5, x)),
                    ctx.op("Less", t, ctx.scalar(info.max + 0.5, x)))
    dx = ctx.op("Div", ctx.cast_like(ctx.dy, x), scale)
    return [ctx.op("Where", inside, dx, ctx.scalar(0, x)), None, None]
