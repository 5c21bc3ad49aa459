"""Gradient rules of linear algebra: Gemm and MatMul."""

from __future__ import annotations

from collections.abc import Sequence

from ..emitter import Dim, GradContext
from ..engine import register

__all__: list[str] = []

Grads = list[str | None]


# --------------------------------------------------------------------------- linear algebra


@register("Gemm")
def _gemm(ctx: GradContext) -> Grads:
    """Y = alpha * A' B' + beta * C with A' = A^T if transA, B' = B^T if transB."""
    a, b = ctx.inputs[:2]
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    dy = ctx.dy
    da = db = dc = None
    if ctx.needs(0):
        if trans_a:
            da = ctx.op("Gemm", b, dy, alpha=alpha, transA=trans_b, transB=1)
        else:
            da = ctx.op("Gemm", dy, b, alpha=alpha, transB=1 - trans_b)
    if ctx.needs(1):
        if trans_b:
            db = ctx.op("Gemm", dy, a, alpha=alpha, transA=1, transB=trans_a)
        else:
            db = ctx.op("Gemm", a, dy, alpha=alpha, transA=1 - trans_a)
    if ctx.needs(2):
        scaled = ctx.op("Mul", dy, ctx.scalar(beta, dy)) if beta != 1 else dy
        dc = ctx.unbroadcast(scaled, ctx.shape(ctx.outputs[0]), ctx.inputs[2])
    return [da, db, dc]


@register("MatMul")
def _matmul(ctx: GradContext) -> Grads:
    """dA = dY B^T, dB = A^T dY (numpy semantics, 1-d operands and broadcasting)."""
    a, b = ctx.inputs
    ra, rb = ctx.rank(a), ctx.rank(b)
    y_shape = ctx.shape(ctx.outputs[0])
    if y_shape is None:
        raise ctx.error("the gradient needs the output's rank")
    dy = ctx.dy
    a2, b2 = a, b
    a_shape, b_shape = ctx.shape(a), ctx.shape(b)
    if ra == 1:
        a2, dy = ctx.unsqueeze(a, [0]), ctx.unsqueeze(dy, [-2])
        a_shape, y_shape = (1, *a_shape), (*y_shape[:-1], 1, y_shape[-1])
    if rb == 1:
        b2, dy = ctx.unsqueeze(b, [-1]), ctx.unsqueeze(dy, [-1])
        b_shape, y_shape = (*b_shape, 1), (*y_shape, 1)
    batch = y_shape[:-2]

    def t(v: str, rank: int) -> str:
        return ctx.op("Transpose", v, perm=[*range(rank - 2), rank - 1, rank - 2])

    grads: Grads = [None, None]
    if ctx.needs(0):
        da = ctx.op("MatMul", dy, t(b2, len(b_shape)))
        da = _sum_to(ctx, da, (*batch, *a_shape[-2:]), a_shape)
        grads[0] = ctx.reshape_like(da, a) if ra == 1 else da
    if ctx.needs(1):
        db = ctx.op("MatMul", t(a2, len(a_shape)), dy)
        db = _sum_to(ctx, db, (*batch, *b_shape[-2:]), b_shape)
        grads[1] = ctx.reshape_like(db, b) if rb == 1 else db
    return grads


def _sum_to(ctx: GradContext, g: str, g_shape: Sequence[Dim], target_shape: Sequence[Dim]) -> str:
    """Sum the broadcast batch axes of a MatMul gradient (static decisions only)."""
    lead = len(g_shape) - len(target_shape)
    axes = list(range(lead))
    for k, (d_in, d_out) in enumerate(zip(target_shape, g_shape[lead:], strict=True)):
        if d_in == 1 and d_out != 1:
            axes.append(lead + k)
        elif d_in != d_out and not isinstance(d_in, int) and d_out != 1:
            raise ctx.error("cannot decide the broadcast of MatMul batch dims statically")
    if not axes:
        return g
    g = ctx.reduce("ReduceSum", g, axes, keepdims=True)
    return ctx.squeeze(g, range(lead)) if lead else g
