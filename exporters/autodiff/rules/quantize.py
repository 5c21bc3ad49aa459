"""Gradient rules of quantization: QuantizeLinear and DequantizeLinear (static, QDQ graphs)
and DynamicQuantizeLinear with MatMulInteger (dynamic quantization; ConvInteger's rule is with
Conv's).

Quantized graphs are explained as they run; the gradient passes a quantizer as a
straight-through estimator (see :func:`_quantize_linear`).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..emitter import GradContext
from ..engine import register

__all__ = ["float_weights"]

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


def float_weights(ctx: GradContext, zero_point: int, axis: int = 0) -> np.ndarray:
    """The constant integer weights (input 1) of ``ConvInteger``/``MatMulInteger`` less their
    zero point (input ``zero_point``: a scalar, or one per slice along ``axis``), as float32."""
    w = ctx.constant_value(ctx.inputs[1])
    if w is None:
        raise ctx.error(f"the gradient needs constant weights; '{ctx.inputs[1]}' is computed")
    w = w.astype(np.float32)
    name = ctx.inputs[zero_point] if len(ctx.inputs) > zero_point else ""
    if name:
        zp = ctx.constant_value(name)
        if zp is None:
            raise ctx.error(f"the gradient needs a constant zero point; '{name}' is computed")
        zp = zp.astype(np.float32)
        if zp.ndim == 1 and zp.size > 1:
            zp = np.expand_dims(zp, tuple(range(1, w.ndim))) if axis == 0 else zp
        w = w - zp
    return w


@register("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx: GradContext) -> Grads:
    """``y = saturate(round(x / s) + zp)`` with ``s`` and ``zp`` computed from x's range, which
    holds 0 and every value of x: nothing saturates. Straight-through, as
    :func:`_quantize_linear`: ``dx = dy / s``. ``s`` and ``zp`` are not differentiated: in the
    surrogate (``round`` as the identity) the dequantized ``(y - zp) * s`` is x whatever ``s``
    is, so the paths through ``s`` cancel (the gradients of outputs 1 and 2 are dropped)."""
    x = ctx.inputs[0]
    return [ctx.op("Div", ctx.cast_like(ctx.dy, x), ctx.cast_like(ctx.outputs[1], x))]


@register("MatMulInteger")
def _matmul_integer(ctx: GradContext) -> Grads:
    """``y = (a - a_zero_point) @ (b - b_zero_point)`` in int32 (dynamic quantization), as a
    function of a real-valued ``a``: ``dA = dY @ (b - b_zero_point)^T`` with constant 2-d ``b``."""
    if ctx.needs(1):
        raise ctx.error("gradients w.r.t. MatMulInteger's B are not supported")
    b = float_weights(ctx, 3, axis=-1)
    if b.ndim != 2:
        raise ctx.error(f"the gradient supports a 2-d B, got shape {list(b.shape)}")
    return [ctx.op("MatMul", ctx.dy, ctx.const(np.ascontiguousarray(b.T))), None, None, None]
