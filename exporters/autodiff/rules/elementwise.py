"""Gradient rules of elementwise ops: identity-like, arithmetic, activations, softmax."""

from __future__ import annotations

import math

from ...graph import FLOAT_TYPES
from ..emitter import GradContext
from ..engine import register

__all__: list[str] = []

Grads = list[str | None]


# --------------------------------------------------------------------------- identity-like


@register("Identity", "Dropout")
def _identity(ctx: GradContext) -> Grads:
    return [ctx.dy]


@register("Cast")
def _cast(ctx: GradContext) -> Grads:
    """dx = dy in x's type; an integer x (the int32 accumulator of ``ConvInteger`` or
    ``MatMulInteger``) is real-valued, as quantized values are: its gradient stays float."""
    x = ctx.inputs[0]
    return [ctx.cast_like(ctx.dy, x) if ctx.dtype(x) in FLOAT_TYPES else ctx.dy]


@register("Neg")
def _neg(ctx: GradContext) -> Grads:
    return [ctx.op("Neg", ctx.dy)]


# --------------------------------------------------------------------------- arithmetic


@register("Add", "Sum", "Expand", unbroadcast=True)
def _add(ctx: GradContext) -> Grads:
    return [ctx.dy] * len(ctx.inputs)  # Expand's shape input is not differentiable


@register("Mean", unbroadcast=True)
def _mean(ctx: GradContext) -> Grads:
    g = ctx.op("Div", ctx.dy, ctx.scalar(len(ctx.inputs), ctx.dy))
    return [g] * len(ctx.inputs)


@register("Sub", unbroadcast=True)
def _sub(ctx: GradContext) -> Grads:
    return [ctx.dy, ctx.op("Neg", ctx.dy) if ctx.needs(1) else None]


@register("Mul", unbroadcast=True)
def _mul(ctx: GradContext) -> Grads:
    a, b = ctx.inputs
    return [
        ctx.op("Mul", ctx.dy, b) if ctx.needs(0) else None,
        ctx.op("Mul", ctx.dy, a) if ctx.needs(1) else None,
    ]


@register("Div", unbroadcast=True)
def _div(ctx: GradContext) -> Grads:
    _, b = ctx.inputs
    da = ctx.op("Div", ctx.dy, b)
    db = ctx.op("Neg", ctx.op("Mul", da, ctx.outputs[0])) if ctx.needs(1) else None
    return [da if ctx.needs(0) else None, db]


@register("Pow", unbroadcast=True)
def _pow(ctx: GradContext) -> Grads:
    a, b = ctx.inputs
    y = ctx.outputs[0]
    da = db = None
    if ctx.needs(0):  # b * a^(b-1)
        bf = ctx.cast_like(b, a)
        power = ctx.op("Pow", a, ctx.op("Sub", bf, ctx.scalar(1, a)))
        da = ctx.op("Mul", ctx.dy, ctx.op("Mul", bf, power))
    if ctx.needs(1):  # y * log(a)
        db = ctx.op("Mul", ctx.dy, ctx.op("Mul", y, ctx.op("Log", a)))
    return [da, db]


@register("Sqrt")
def _sqrt(ctx: GradContext) -> Grads:
    y = ctx.outputs[0]
    return [ctx.op("Div", ctx.op("Mul", ctx.dy, ctx.scalar(0.5, y)), y)]


@register("Exp")
def _exp(ctx: GradContext) -> Grads:
    return [ctx.op("Mul", ctx.dy, ctx.outputs[0])]


@register("Log")
def _log(ctx: GradContext) -> Grads:
    return [ctx.op("Div", ctx.dy, ctx.inputs[0])]


@register("Reciprocal")
def _reciprocal(ctx: GradContext) -> Grads:
    y = ctx.outputs[0]
    return [ctx.op("Neg", ctx.op("Mul", ctx.dy, ctx.op("Mul", y, y)))]


@register("Abs")
def _abs(ctx: GradContext) -> Grads:
    return [ctx.op("Mul", ctx.dy, ctx.op("Sign", ctx.inputs[0]))]


@register("Min", "Max", unbroadcast=True)
def _min_max(ctx: GradContext) -> Grads:
    """The gradient goes to the inputs equal to the result; tied inputs share it evenly
    (as ``torch.maximum``/``torch.minimum`` do)."""
    y = ctx.outputs[0]
    masks = [ctx.op("Cast", ctx.op("Equal", x, y), to=ctx.dtype(y)) for x in ctx.inputs]
    count = masks[0] if len(masks) == 1 else ctx.op("Sum", *masks)
    share = ctx.op("Div", ctx.dy, count)
    return [ctx.op("Mul", share, m) if ctx.needs(i) else None for i, m in enumerate(masks)]


@register("Where", unbroadcast=True)
def _where(ctx: GradContext) -> Grads:
    cond, _, _ = ctx.inputs
    zero = ctx.scalar(0, ctx.dy)
    return [
        None,
        ctx.op("Where", cond, ctx.dy, zero) if ctx.needs(1) else None,
        ctx.op("Where", cond, zero, ctx.dy) if ctx.needs(2) else None,
    ]


# --------------------------------------------------------------------------- activations


def _masked(ctx: GradContext, mask: str) -> str:
    return ctx.op("Where", mask, ctx.dy, ctx.scalar(0, ctx.dy))


@register("Relu")
def _relu(ctx: GradContext) -> Grads:
    y = ctx.outputs[0]
    return [_masked(ctx, ctx.op("Greater", y, ctx.scalar(0, y)))]


@register("LeakyRelu")
def _leaky_relu(ctx: GradContext) -> Grads:
    x = ctx.inputs[0]
    alpha = ctx.op("Mul", ctx.dy, ctx.scalar(ctx.attr("alpha", 0.01), x))
    return [ctx.op("Where", ctx.op("Greater", x, ctx.scalar(0, x)), ctx.dy, alpha)]


@register("PRelu", unbroadcast=True)
def _prelu(ctx: GradContext) -> Grads:
    x, slope = ctx.inputs
    if ctx.needs(1):
        raise ctx.error("gradient w.r.t. the slope is not supported")
    scaled = ctx.op("Mul", ctx.dy, slope)
    return [ctx.op("Where", ctx.op("Greater", x, ctx.scalar(0, x)), ctx.dy, scaled), None]


@register("Clip")
def _clip(ctx: GradContext) -> Grads:
    """Gradient passes where ``min < x < max``.

    The strict bounds follow PyTorch's ``hardtanh``/``relu6`` (what ``Clip`` comes from in
    exported classifiers), so that activations exactly at a bound (zeros, common with
    freshly initialised weights) get no gradient, as in ``torch.autograd``.
    """
    x = ctx.inputs[0]
    bounds = [(ctx.inputs[i] if len(ctx.inputs) > i else "") for i in (1, 2)]
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.error("gradient w.r.t. min/max is not supported")
    mask = None
    for bound, op_type in zip(bounds, ("Greater", "Less"), strict=True):
        if bound:
            m = ctx.op(op_type, x, bound)
            mask = m if mask is None else ctx.op("And", mask, m)
    return [_masked(ctx, mask) if mask else ctx.dy, None, None]


@register("Sigmoid")
def _sigmoid(ctx: GradContext) -> Grads:
    y = ctx.outputs[0]
    slope = ctx.op("Mul", y, ctx.op("Sub", ctx.scalar(1, y), y))
    return [ctx.op("Mul", ctx.dy, slope)]


@register("Tanh")
def _tanh(ctx: GradContext) -> Grads:
    y = ctx.outputs[0]
    slope = ctx.op("Sub", ctx.scalar(1, y), ctx.op("Mul", y, y))
    return [ctx.op("Mul", ctx.dy, slope)]


@register("HardSigmoid")
def _hard_sigmoid(ctx: GradContext) -> Grads:
    x = ctx.inputs[0]
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    t = ctx.op("Add", ctx.op("Mul", x, ctx.scalar(alpha, x)), ctx.scalar(beta, x))
    inside = ctx.op(
        "And", ctx.op("Greater", t, ctx.scalar(0, x)), ctx.op("Less", t, ctx.scalar(1, x))
    )
    scaled = ctx.op("Mul", ctx.dy, ctx.scalar(alpha, x))
    return [ctx.op("Where", inside, scaled, ctx.scalar(0, x))]


@register("HardSwish")
def _hard_swish(ctx: GradContext) -> Grads:
    """y = x * hardsigmoid(x; 1/6, 1/2): slope 0 below -3, 1 above 3, x/3 + 1/2 between."""
    x = ctx.inputs[0]
    mid = ctx.op("Add", ctx.op("Div", x, ctx.scalar(3, x)), ctx.scalar(0.5, x))
    upper = ctx.op("Where", ctx.op("Greater", x, ctx.scalar(3, x)), ctx.scalar(1, x), mid)
    slope = ctx.op("Where", ctx.op("Less", x, ctx.scalar(-3, x)), ctx.scalar(0, x), upper)
    return [ctx.op("Mul", ctx.dy, slope)]


@register("Erf")
def _erf(ctx: GradContext) -> Grads:
    x = ctx.inputs[0]
    gauss = ctx.op("Exp", ctx.op("Neg", ctx.op("Mul", x, x)))
    slope = ctx.op("Mul", gauss, ctx.scalar(2 / math.sqrt(math.pi), x))
    return [ctx.op("Mul", ctx.dy, slope)]


@register("Gelu")
def _gelu(ctx: GradContext) -> Grads:
    x = ctx.inputs[0]

    def c(v: float) -> str:
        return ctx.scalar(v, x)

    x2 = ctx.op("Mul", x, x)
    if ctx.attr("approximate", "none") == "tanh":
        # y = x/2 (1 + tanh(u)), u = k (x + 0.044715 x^3)
        k = math.sqrt(2 / math.pi)
        inner = ctx.op("Add", c(1), ctx.op("Mul", x2, c(0.044715)))
        t = ctx.op("Tanh", ctx.op("Mul", ctx.op("Mul", x, inner), c(k)))
        du = ctx.op("Mul", ctx.op("Add", c(1), ctx.op("Mul", x2, c(3 * 0.044715))), c(k))
        sech2 = ctx.op("Sub", c(1), ctx.op("Mul", t, t))
        second = ctx.op("Mul", ctx.op("Mul", ctx.op("Mul", x, c(0.5)), sech2), du)
        slope = ctx.op("Add", ctx.op("Mul", ctx.op("Add", c(1), t), c(0.5)), second)
    else:
        # y = x Phi(x): slope Phi(x) + x phi(x)
        cdf = ctx.op("Erf", ctx.op("Mul", x, c(1 / math.sqrt(2))))
        cdf = ctx.op("Mul", ctx.op("Add", cdf, c(1)), c(0.5))
        pdf = ctx.op("Exp", ctx.op("Mul", x2, c(-0.5)))
        pdf = ctx.op("Mul", pdf, c(1 / math.sqrt(2 * math.pi)))
        slope = ctx.op("Add", cdf, ctx.op("Mul", x, pdf))
    return [ctx.op("Mul", ctx.dy, slope)]


@register("Softmax")
def _softmax(ctx: GradContext) -> Grads:
    """dx = y * (dy - sum(dy * y, axis)) (opset 13 semantics: one axis)."""
    y = ctx.outputs[0]
    dot = ctx.reduce("ReduceSum", ctx.op("Mul", ctx.dy, y), [ctx.axis(-1)])
    return [ctx.op("Mul", y, ctx.op("Sub", ctx.dy, dot))]


@register("LogSoftmax")
def _log_softmax(ctx: GradContext) -> Grads:
    """dx = dy - exp(y) * sum(dy, axis)."""
    y = ctx.outputs[0]
    total = ctx.reduce("ReduceSum", ctx.dy, [ctx.axis(-1)])
    return [ctx.op("Sub", ctx.dy, ctx.op("Mul", ctx.op("Exp", y), total))]
