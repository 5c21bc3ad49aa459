"""Gradient rules of convolution, pooling and normalization."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..emitter import GradContext
from ..engine import register

__all__: list[str] = []

Grads = list[str | None]


# --------------------------------------------------------------------------- convolution


def _window_pads(
    ctx: GradContext,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out_spatial: Sequence[int],
) -> list[int]:
    """Explicit begin/end pads of a Conv/Pool node, resolving ``auto_pad``."""
    n = len(spatial)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n)
        for i in range(n):
            span = (kernel[i] - 1) * dilations[i] + 1
            total = max(0, (out_spatial[i] - 1) * strides[i] + span - spatial[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[n + i] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return pads
    if auto_pad == "VALID":
        return [0] * (2 * n)
    return list(ctx.attr("pads") or [0] * (2 * n))


def _transpose_window(
    ctx: GradContext, g: str, weight: str, group: int, kernel: Sequence[int]
) -> str:
    """``ConvTranspose`` of ``g`` that scatters each window back onto the input grid.

    Pads and output_padding are chosen so that the result has exactly the input's
    (static) spatial shape.
    """
    spatial = list(ctx.static_shape(ctx.inputs[0], from_axis=2)[2:])
    out_spatial = list(ctx.static_shape(ctx.outputs[0], from_axis=2)[2:])
    n = len(spatial)
    strides = list(ctx.attr("strides") or [1] * n)
    dilations = list(ctx.attr("dilations") or [1] * n)
    pads = _window_pads(ctx, spatial, kernel, strides, dilations, out_spatial)
    begin, end, output_padding = pads[:n], [0] * n, [0] * n
    for i in range(n):
        full = (out_spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        end[i] = max(0, full - begin[i] - spatial[i])
        output_padding[i] = spatial[i] - (full - begin[i] - end[i])
    return ctx.op(
        "ConvTranspose",
        g,
        weight,
        kernel_shape=list(kernel),
        strides=strides,
        dilations=dilations,
        group=group,
        pads=begin + end,
        output_padding=output_padding if any(output_padding) else None,
    )


@register("Conv")
def _conv(ctx: GradContext) -> Grads:
    """dX = ConvTranspose(dY, W) with the Conv's strides, dilations and group."""
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.error("gradients w.r.t. Conv weights/bias are not supported")
    w = ctx.inputs[1]
    kernel = ctx.attr("kernel_shape") or ctx.static_shape(w)[2:]
    return [_transpose_window(ctx, ctx.dy, w, ctx.attr("group", 1), kernel), None, None]


@register("AveragePool")
def _average_pool(ctx: GradContext) -> Grads:
    """Divide by each window's divisor, then scatter with a depthwise ones kernel."""
    x = ctx.inputs[0]
    x_shape = ctx.static_shape(x, from_axis=1)
    channels, spatial = x_shape[1], x_shape[2:]
    out_spatial = ctx.static_shape(ctx.outputs[0], from_axis=2)[2:]
    n = len(spatial)
    kernel = list(ctx.attr("kernel_shape"))
    strides = list(ctx.attr("strides") or [1] * n)
    dilations = list(ctx.attr("dilations") or [1] * n)
    pads = _window_pads(ctx, spatial, kernel, strides, dilations, out_spatial)
    include_pad = bool(ctx.attr("count_include_pad", 0))
    divisor = np.ones(out_spatial, dtype=np.float64)
    for i in range(n):
        o = np.arange(out_spatial[i])
        taps = o[:, None] * strides[i] - pads[i] + np.arange(kernel[i])[None] * dilations[i]
        lo, hi = (-pads[i], spatial[i] + pads[n + i]) if include_pad else (0, spatial[i])
        count = ((taps >= lo) & (taps < hi)).sum(axis=1)
        divisor = divisor * count.reshape([-1 if k == i else 1 for k in range(n)])
    g = ctx.op("Mul", ctx.dy, ctx.const((1 / divisor).astype(ctx.np_dtype(x))))
    ones = ctx.const(np.ones([channels, 1, *kernel], dtype=ctx.np_dtype(x)))
    return [_transpose_window(ctx, g, ones, channels, kernel)]


@register("MaxPool")
def _max_pool(ctx: GradContext) -> Grads:
    """Scatter-add ``dy`` to the argmax ``Indices`` of each window (needs opset 16)."""
    if ctx.opset < 16:
        raise ctx.error("the MaxPool gradient needs opset 16 (ScatterElements reduction='add')")
    if ctx.attr("storage_order", 0):
        raise ctx.error("storage_order=1 is not supported")
    x = ctx.inputs[0]
    if len(ctx.outputs) > 1 and ctx.outputs[1]:
        indices = ctx.outputs[1]
    else:
        attrs = {a.name: ctx.attr(a.name) for a in ctx.node.attribute}
        _, indices = ctx.op("MaxPool", x, num_outputs=2, name_hint="MaxPoolIndices", **attrs)
    flat = ctx.ints([-1])
    zeros = ctx.op("Reshape", ctx.zeros_like(x), flat)
    updates = ctx.op("Reshape", ctx.dy, flat)
    out = ctx.op(
        "ScatterElements",
        zeros,
        ctx.op("Reshape", indices, flat),
        updates,
        axis=0,
        reduction="add",
    )
    return [ctx.reshape_like(out, x)]


# --------------------------------------------------------------------------- normalization


@register("BatchNormalization")
def _batch_norm(ctx: GradContext) -> Grads:
    """Inference mode: dx = dy * scale / sqrt(var + epsilon) per channel."""
    if ctx.attr("training_mode", 0):
        raise ctx.error("training_mode=1 is not supported (export the model in eval mode)")
    if any(ctx.needs(i) for i in range(1, 5)):
        raise ctx.error("gradients w.r.t. scale/bias/mean/var are not supported")
    x, scale, _, _, var = ctx.inputs[:5]
    eps = ctx.scalar(ctx.attr("epsilon", 1e-5), var)
    factor = ctx.op("Div", scale, ctx.op("Sqrt", ctx.op("Add", var, eps)))
    factor = ctx.op("Reshape", factor, ctx.ints([-1] + [1] * (ctx.rank(x) - 2)))
    return [ctx.op("Mul", ctx.dy, ctx.cast_like(factor, x))]


@register("LayerNormalization")
def _layer_norm(ctx: GradContext) -> Grads:
    """dx = r * (g - mean(g) - xhat * mean(g * xhat)), g = dy * scale, r = 1/std."""
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.error("gradients w.r.t. scale/bias are not supported")
    x, scale = ctx.inputs[:2]
    rank = ctx.rank(x)
    axis = ctx.axis(-1)
    axes = list(range(axis, rank))
    mean = ctx.reduce("ReduceMean", x, axes)
    centered = ctx.op("Sub", x, mean)
    var = ctx.reduce("ReduceMean", ctx.op("Mul", centered, centered), axes)
    eps = ctx.scalar(ctx.attr("epsilon", 1e-5), x)
    inv_std = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, eps)))
    xhat = ctx.op("Mul", centered, inv_std)
    g = ctx.op("Mul", ctx.dy_or_zeros(0), scale)
    mean_g = ctx.reduce("ReduceMean", g, axes)
    mean_gx = ctx.reduce("ReduceMean", ctx.op("Mul", g, xhat), axes)
    inner = ctx.op("Sub", ctx.op("Sub", g, mean_g), ctx.op("Mul", xhat, mean_gx))
    return [ctx.op("Mul", inner, inv_std), None, None]
