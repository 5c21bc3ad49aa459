"""Gradient rules of convolution, pooling and normalization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..emitter import GradContext
from ..engine import register
from .quantize import float_weights

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


def _static_spatial(ctx: GradContext, name: str) -> list[int] | None:
    shape = ctx.shape(name)
    spatial = list(shape[2:]) if shape is not None else [None]
    return spatial if all(isinstance(d, int) for d in spatial) else None  # type: ignore[return-value]


def _transpose_window(
    ctx: GradContext, g: str, weight: str, group: int, kernel: Sequence[int]
) -> str:
    """``ConvTranspose`` of ``g`` that scatters each window back onto the input grid.

    With static spatial sizes, pads and output_padding are chosen so that the result has
    exactly the input's shape. With symbolic ones (a model explained at any input size) the
    sizes come from the runtime shapes instead (:func:`_transpose_window_dynamic`).
    """
    spatial = _static_spatial(ctx, ctx.inputs[0])
    out_spatial = _static_spatial(ctx, ctx.outputs[0])
    if spatial is None or out_spatial is None:
        return _transpose_window_dynamic(ctx, g, weight, group, kernel)
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


def _transpose_window_dynamic(
    ctx: GradContext, g: str, weight: str, group: int, kernel: Sequence[int]
) -> str:
    """The window scatter for symbolic spatial sizes: a ``ConvTranspose`` without pads covers
    the padded input but its last ``stride - 1`` rows (dropped by the stride); ``Pad`` those
    with zeros, then ``Slice`` out the input's rows, starting at the begin pad, which
    ``auto_pad`` SAME computes from the runtime sizes."""
    x, y = ctx.inputs[0], ctx.outputs[0]
    n = len(kernel)
    strides = list(ctx.attr("strides") or [1] * n)
    dilations = list(ctx.attr("dilations") or [1] * n)
    full = ctx.op("ConvTranspose", g, weight, kernel_shape=list(kernel), strides=strides,
                  dilations=dilations, group=group)
    if any(s > 1 for s in strides):
        full = ctx.op("Pad", full, ctx.ints([0] * (n + 2) + [0, 0] + [s - 1 for s in strides]))
    in_size = ctx.op("Slice", ctx.op("Shape", x), ctx.ints([2]), ctx.ints([2 + n]))
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_size = ctx.op("Slice", ctx.op("Shape", y), ctx.ints([2]), ctx.ints([2 + n]))
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
        total = ctx.op("Sub", ctx.op("Add", ctx.op("Mul", ctx.op("Sub", out_size, ctx.ints([1])),
                                                   ctx.ints(strides)), ctx.ints(span)), in_size)
        total = ctx.op("Max", total, ctx.ints([0] * n))
        begin = ctx.op("Div", total, ctx.ints([2] * n))
        if auto_pad == "SAME_LOWER":
            begin = ctx.op("Sub", total, begin)
    elif auto_pad == "VALID":
        begin = ctx.ints([0] * n)
    else:
        begin = ctx.ints(list(ctx.attr("pads") or [0] * (2 * n))[:n])
    end = ctx.op("Add", begin, in_size)
    return ctx.op("Slice", full, begin, end, ctx.ints(range(2, 2 + n)))


def _stride1_pads(ctx: GradContext, kernel: Sequence[int], dilations: Sequence[int]
                  ) -> list[int]:
    """Explicit begin/end pads of a stride-1 Conv (``auto_pad`` SAME pads by the kernel's
    span alone, whatever the input size)."""
    n = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return [0] * (2 * n) if auto_pad == "VALID" else list(ctx.attr("pads") or [0] * (2 * n))
    totals = [(k - 1) * d for k, d in zip(kernel, dilations, strict=True)]
    small, big = [t // 2 for t in totals], [t - t // 2 for t in totals]
    return small + big if auto_pad == "SAME_UPPER" else big + small


def _flipped_conv(ctx: GradContext, g: str, weight: str, group: int,
                  kernel: Sequence[int], shape: Sequence[Any] | None = None) -> str | None:
    """dX of a stride-1 Conv as a Conv of ``g`` with the flipped kernel (each group's
    ``[M/g, C/g]`` transposed, the window reversed), padded by ``span - 1 - pad``: the same
    values as the window scatter, and ONNX Runtime's Conv kernels are several times faster
    than its ConvTranspose. None where that does not apply (strides, a pad wider than the
    window, a weight of unknown shape). ``shape``: the weight's, for a weight the rule made."""
    n = len(kernel)
    strides = list(ctx.attr("strides") or [1] * n)
    dilations = list(ctx.attr("dilations") or [1] * n)
    shape = shape or ctx.shape(weight)
    if any(s != 1 for s in strides) or shape is None or not all(
            isinstance(d, int) for d in shape[:2]):
        return None
    pads = _stride1_pads(ctx, kernel, dilations)
    spans = [(k - 1) * d for k, d in zip(kernel, dilations, strict=True)]
    flipped_pads = [spans[i % n] - p for i, p in enumerate(pads)]
    if any(p < 0 for p in flipped_pads):
        return None
    out_channels, in_per_group = int(shape[0]), int(shape[1])
    w = ctx.op("Reshape", weight, ctx.ints([group, out_channels // group, in_per_group,
                                            *kernel]))
    w = ctx.op("Transpose", w, perm=[0, 2, 1, *range(3, 3 + n)])
    w = ctx.op("Reshape", w, ctx.ints([group * in_per_group, out_channels // group, *kernel]))
    if any(k > 1 for k in kernel):
        w = ctx.op("Slice", w, ctx.ints([-1] * n), ctx.ints([-(2**63)] * n),
                   ctx.ints(range(2, 2 + n)), ctx.ints([-1] * n))
    return ctx.op("Conv", g, w, kernel_shape=list(kernel), dilations=dilations, group=group,
                  pads=flipped_pads)


@register("Conv")
def _conv(ctx: GradContext) -> Grads:
    """dX = ConvTranspose(dY, W) with the Conv's strides, dilations and group; for stride 1,
    the equal Conv with the flipped kernel (:func:`_flipped_conv`)."""
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.error("gradients w.r.t. Conv weights/bias are not supported")
    w = ctx.inputs[1]
    kernel = ctx.attr("kernel_shape") or ctx.static_shape(w)[2:]
    group = ctx.attr("group", 1)
    dx = _flipped_conv(ctx, ctx.dy, w, group, kernel)
    return [dx or _transpose_window(ctx, ctx.dy, w, group, kernel), None, None]


@register("ConvInteger")
def _conv_integer(ctx: GradContext) -> Grads:
    """y = Conv(x - x_zero_point, w - w_zero_point) in int32 (dynamic quantization), as a
    function of a real-valued ``x`` (see :func:`~.quantize._dynamic_quantize_linear`): dX is
    the Conv rule's with ``w - w_zero_point`` as a float constant."""
    if ctx.needs(1):
        raise ctx.error("gradients w.r.t. ConvInteger weights are not supported")
    w = float_weights(ctx, 3)
    kernel = ctx.attr("kernel_shape") or list(w.shape[2:])
    group = ctx.attr("group", 1)
    name = ctx.const(w)
    dx = _flipped_conv(ctx, ctx.dy, name, group, kernel, w.shape)
    return [dx or _transpose_window(ctx, ctx.dy, name, group, kernel), None, None, None]


@register("ConvTranspose")
def _conv_transpose(ctx: GradContext) -> Grads:
    """dX = Conv(dY, W) with the node's strides, dilations, group and begin pads.

    ``ConvTranspose`` is the adjoint of that ``Conv`` (its weight ``[C_in, C_out / group, k...]``
    is the Conv's ``[M, C / group, k...]`` as it is). The output's trailing rows that only
    ``output_padding`` adds take no part in it: the end pads shrink by ``output_padding``
    (clamped at 0), which makes the Conv's output exactly the input's size, symbolic sizes
    included.
    """
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.error("gradients w.r.t. ConvTranspose weights/bias are not supported")
    if ctx.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") or ctx.attr("output_shape"):
        raise ctx.error("auto_pad SAME_* and output_shape are not supported (explicit pads only)")
    w = ctx.inputs[1]
    kernel = list(ctx.attr("kernel_shape") or ctx.static_shape(w)[2:])
    n = len(kernel)
    strides = list(ctx.attr("strides") or [1] * n)
    output_padding = list(ctx.attr("output_padding") or [0] * n)
    pads = [0] * (2 * n) if ctx.attr("auto_pad", "NOTSET") == "VALID" else list(
        ctx.attr("pads") or [0] * (2 * n)
    )
    if any(p >= s for p, s in zip(output_padding, strides, strict=True)):
        raise ctx.error(f"output_padding {output_padding} must be smaller than the strides")
    end = [max(0, pads[n + i] - output_padding[i]) for i in range(n)]
    dx = ctx.op(
        "Conv",
        ctx.dy,
        w,
        kernel_shape=kernel,
        strides=strides,
        dilations=list(ctx.attr("dilations") or [1] * n),
        group=ctx.attr("group", 1),
        pads=pads[:n] + end,
    )
    return [dx, None, None]


@register("AveragePool")
def _average_pool(ctx: GradContext) -> Grads:
    """Divide by each window's divisor, then scatter with a depthwise ones kernel."""
    x = ctx.inputs[0]
    channels = ctx.static_shape(x, from_axis=1)[1] if ctx.rank(x) < 3 else ctx.shape(x)[1]
    if not isinstance(channels, int):
        raise ctx.error(f"the gradient needs the static channel count of '{x}'")
    kernel = list(ctx.attr("kernel_shape"))
    spatial, out_spatial = _static_spatial(ctx, x), _static_spatial(ctx, ctx.outputs[0])
    ones = ctx.const(np.ones([channels, 1, *kernel], dtype=ctx.np_dtype(x)))
    if spatial is None or out_spatial is None:
        g = ctx.op("Div", ctx.dy, _window_counts(ctx, kernel))
        return [_transpose_window(ctx, g, ones, channels, kernel)]
    n = len(spatial)
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
    return [_transpose_window(ctx, g, ones, channels, kernel)]


def _window_counts(ctx: GradContext, kernel: Sequence[int]) -> str:
    """AveragePool's divisor per output position [1, 1, *out], computed at run time.

    With ``count_include_pad=0`` it is the number of taps inside the input: a Conv with a ones
    kernel (the pool's strides, pads and dilations) over a grid of ones. With 1 it is the
    window size.
    """
    x = ctx.inputs[0]
    if ctx.attr("ceil_mode", 0):
        raise ctx.error("AveragePool with ceil_mode=1 needs static spatial sizes")
    if ctx.attr("count_include_pad", 0):
        return ctx.scalar(float(np.prod(kernel)), x)
    n = len(kernel)
    grid = ctx.op("Concat", ctx.ints([1, 1]),
                  ctx.op("Slice", ctx.op("Shape", x), ctx.ints([2]), ctx.ints([2 + n])), axis=0)
    ones = ctx.op("Expand", ctx.scalar(1.0, x), grid)
    weight = ctx.const(np.ones([1, 1, *kernel], dtype=ctx.np_dtype(x)))
    attrs = {name: ctx.attr(name) for name in ("auto_pad", "pads", "strides", "dilations")}
    return ctx.op("Conv", ones, weight, kernel_shape=list(kernel), name_hint="window_counts",
                  **{k: v for k, v in attrs.items() if v is not None})


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


def _normalized_gradient(ctx: GradContext, x: str, g: str, axes: list[int], eps: str) -> str:
    """Gradient of ``xhat = (x - mean) / std`` over ``axes`` given ``g = d xhat``:
    ``(g - mean(g) - xhat * mean(g * xhat)) / std``."""
    mean = ctx.reduce("ReduceMean", x, axes)
    centered = ctx.op("Sub", x, mean)
    var = ctx.reduce("ReduceMean", ctx.op("Mul", centered, centered), axes)
    inv_std = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, eps)))
    xhat = ctx.op("Mul", centered, inv_std)
    mean_g = ctx.reduce("ReduceMean", g, axes)
    mean_gx = ctx.reduce("ReduceMean", ctx.op("Mul", g, xhat), axes)
    inner = ctx.op("Sub", ctx.op("Sub", g, mean_g), ctx.op("Mul", xhat, mean_gx))
    return ctx.op("Mul", inner, inv_std)


@register("LayerNormalization")
def _layer_norm(ctx: GradContext) -> Grads:
    """dx = r * (g - mean(g) - xhat * mean(g * xhat)), g = dy * scale, r = 1/std."""
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.error("gradients w.r.t. scale/bias are not supported")
    x, scale = ctx.inputs[:2]
    axes = list(range(ctx.axis(-1), ctx.rank(x)))
    eps = ctx.scalar(ctx.attr("epsilon", 1e-5), x)
    g = ctx.op("Mul", ctx.dy_or_zeros(0), scale)
    return [_normalized_gradient(ctx, x, g, axes, eps), None, None]


@register("InstanceNormalization")
def _instance_norm(ctx: GradContext) -> Grads:
    """As LayerNormalization over the spatial axes of each (sample, channel), with a per-channel
    scale (GroupNorm exports as Reshape -> InstanceNormalization -> Reshape -> Mul -> Add)."""
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.error("gradients w.r.t. scale/bias are not supported")
    x, scale = ctx.inputs[:2]
    rank = ctx.rank(x)
    eps = ctx.scalar(ctx.attr("epsilon", 1e-5), x)
    scale = ctx.op("Reshape", scale, ctx.ints([-1] + [1] * (rank - 2)))
    g = ctx.op("Mul", ctx.dy, scale)
    return [_normalized_gradient(ctx, x, g, list(range(2, rank)), eps), None, None]
