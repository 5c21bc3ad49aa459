"""Gradient rules (vector-Jacobian products) of ONNX ops.

Each rule receives a :class:`~exporters.autodiff.engine.GradContext` for one forward
node and returns one gradient name per node input, ``None`` for inputs without a
gradient (shapes, indices, axes, weights).  Rules registered with
``unbroadcast=True`` return their gradients in the shape of output 0 and the engine
sums them back to the inputs' shapes.  Rules may reuse the op's own output
(``Sigmoid``, ``Tanh``, ``Softmax``...).

Adding an op = one ``@register`` function here + one row in
``tests/test_autodiff_rules.py``.

Opset notes: every rule emits ops valid from opset 13 (the engine's minimum) and
follows the model's opset where forms differ (``Reduce*`` axes as attribute or input,
``Split`` sizes as input).  ``MaxPool`` and ``Gather`` scatter-add their gradients with
``ScatterElements``/``ScatterND`` ``reduction='add'``, which needs opset 16; below that
they raise :class:`~exporters.autodiff.engine.GradientError`.

Limitations (each raises ``GradientError`` naming the node): gradients w.r.t. weights,
biases, normalization statistics, ``Clip`` bounds and ``PRelu`` slopes; ``Pad`` modes
other than ``constant``; ``MaxPool`` with ``storage_order=1``; ``BatchNormalization`` in
training mode; ``Slice`` with non-constant starts/ends/axes/steps or a sliced axis of
symbolic size; ``Conv``/``AveragePool`` with symbolic spatial sizes (only the batch may
be symbolic).

Conventions at kinks follow ``torch.autograd``: ties of ``Max``/``Min`` and
``ReduceMax``/``ReduceMin`` share the gradient evenly; ``MaxPool``/``GlobalMaxPool`` give
it to the first maximum; ``Relu`` passes it where ``x > 0`` and ``Clip`` strictly inside
its bounds (like ``relu6``/``hardtanh``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from onnx import helper

from .engine import Dim, GradContext, register

__all__: list[str] = []

Grads = list[str | None]


# --------------------------------------------------------------------------- identity-like


@register("Identity", "Dropout")
def _identity(ctx: GradContext) -> Grads:
    return [ctx.dy]


@register("Cast")
def _cast(ctx: GradContext) -> Grads:
    return [ctx.cast_like(ctx.dy, ctx.inputs[0])]


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


def _axis(ctx: GradContext, default: int) -> int:
    axis = ctx.attr("axis", default)
    return axis + ctx.rank(ctx.inputs[0]) if axis < 0 else axis


@register("Softmax")
def _softmax(ctx: GradContext) -> Grads:
    """dx = y * (dy - sum(dy * y, axis)) (opset 13 semantics: one axis)."""
    y = ctx.outputs[0]
    dot = ctx.reduce("ReduceSum", ctx.op("Mul", ctx.dy, y), [_axis(ctx, -1)])
    return [ctx.op("Mul", y, ctx.op("Sub", ctx.dy, dot))]


@register("LogSoftmax")
def _log_softmax(ctx: GradContext) -> Grads:
    """dx = dy - exp(y) * sum(dy, axis)."""
    y = ctx.outputs[0]
    total = ctx.reduce("ReduceSum", ctx.dy, [_axis(ctx, -1)])
    return [ctx.op("Sub", ctx.dy, ctx.op("Mul", ctx.op("Exp", y), total))]


# --------------------------------------------------------------------------- shapes


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(ctx: GradContext) -> Grads:
    return [ctx.reshape_like(ctx.dy, ctx.inputs[0])]


@register("Transpose")
def _transpose(ctx: GradContext) -> Grads:
    perm = ctx.attr("perm") or list(reversed(range(ctx.rank(ctx.inputs[0]))))
    inverse = [int(k) for k in np.argsort(perm)]
    return [ctx.op("Transpose", ctx.dy, perm=inverse)]


def _axis_sizes(ctx: GradContext, names: Sequence[str], axis: int) -> str:
    """Sizes of ``names`` along ``axis`` as a 1-d int64 tensor."""
    sizes = [(ctx.shape(n) or (None,) * (axis + 1))[axis] for n in names]
    if all(isinstance(s, int) for s in sizes):
        return ctx.ints(sizes)  # type: ignore[arg-type]
    parts = [
        ctx.op("Shape", n, start=axis, end=axis + 1)
        if ctx.opset >= 15
        else ctx.op("Gather", ctx.op("Shape", n), ctx.ints([axis]))
        for n in names
    ]
    return ctx.op("Concat", *parts, axis=0)


@register("Concat")
def _concat(ctx: GradContext) -> Grads:
    axis = _axis(ctx, 0)
    sizes = _axis_sizes(ctx, ctx.inputs, axis)
    parts = ctx.op("Split", ctx.dy, sizes, axis=axis, num_outputs=len(ctx.inputs))
    parts = [parts] if isinstance(parts, str) else parts
    return [p if ctx.needs(i) else None for i, p in enumerate(parts)]


@register("Split")
def _split(ctx: GradContext) -> Grads:
    parts = [ctx.dy_or_zeros(i) for i in range(len(ctx.outputs))]
    return [ctx.op("Concat", *parts, axis=_axis(ctx, 0))]


@register("Slice")
def _slice(ctx: GradContext) -> Grads:
    """Step 1: ``Pad`` the gradient back; other steps: pad a zero slab, ``Gather`` back."""
    x = ctx.inputs[0]
    names = (ctx.inputs + [""] * 5)[1:5]
    values = [ctx.constant_value(n) if n else None for n in names]
    if any(n and v is None for n, v in zip(names, values, strict=True)):
        raise ctx.error("starts/ends/axes/steps must be constants")
    starts, ends, axes, steps = values
    shape, rank = ctx.shape(x), ctx.rank(x)
    axes = [int(a) % rank for a in (axes if axes is not None else range(len(starts)))]
    steps = [int(s) for s in (steps if steps is not None else [1] * len(starts))]
    g = ctx.dy
    pads = [0] * (2 * rank)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        dim = shape[axis]
        if not isinstance(dim, int):
            raise ctx.error(f"sliced axis {axis} must have a static size")
        picked = list(range(*slice(int(start), int(end), step).indices(dim)))
        if step == 1:
            pads[axis] = picked[0] if picked else 0
            pads[rank + axis] = dim - (picked[-1] + 1 if picked else 0)
            continue
        # position of each input index in the slice output, or len(picked) (a zero slab)
        inverse = np.full(dim, len(picked), dtype=np.int64)
        inverse[picked] = np.arange(len(picked))
        slab = [0] * (2 * rank)
        slab[rank + axis] = 1
        g = ctx.op("Pad", g, ctx.ints(slab))
        g = ctx.op("Gather", g, ctx.ints(inverse), axis=axis)
    if any(pads):
        g = ctx.op("Pad", g, ctx.ints(pads))
    return [g]


@register("Pad")
def _pad(ctx: GradContext) -> Grads:
    """Constant mode: pad with the negated pads (negative pads crop)."""
    if ctx.attr("mode", "constant") != "constant":
        raise ctx.error(f"Pad mode '{ctx.attr('mode')}' is not supported (constant only)")
    pads = ctx.inputs[1]
    value = ctx.constant_value(pads)
    neg = ctx.ints(-value) if value is not None else ctx.op("Neg", pads)
    axes = ctx.inputs[3] if len(ctx.inputs) > 3 else ""
    zero = ctx.scalar(0, ctx.dy) if axes else None  # ORT crashes on Pad(x, p, "", axes)
    return [ctx.op("Pad", ctx.dy, neg, zero, axes or None)]


@register("Gather")
def _gather(ctx: GradContext) -> Grads:
    """Scatter-add ``dy`` back (repeated indices are summed); needs opset 16."""
    if ctx.opset < 16:
        raise ctx.error("the Gather gradient needs opset 16 (ScatterND reduction='add')")
    data, indices = ctx.inputs
    rank = ctx.rank(data)
    axis = _axis(ctx, 0)
    idx_rank = ctx.rank(indices)
    idx = ctx.constant_value(indices)
    dim = (ctx.shape(data) or [None] * rank)[axis]
    if idx is not None and isinstance(dim, int):
        idx = ctx.const(np.where(idx < 0, idx + dim, idx).astype(np.int64))
    else:
        idx = ctx.op("Cast", indices, to=7)  # int64
        n = ctx.op("Gather", ctx.op("Shape", data), ctx.ints([axis]))
        idx = ctx.op("Where", ctx.op("Less", idx, ctx.ints([0])), ctx.op("Add", idx, n), idx)
    # dy: data[:axis] + indices + data[axis+1:]; move the indices' axes to the front
    perm = [*range(axis, axis + idx_rank), *range(axis)]
    perm += range(axis + idx_rank, rank - 1 + idx_rank)
    dy = ctx.op("Transpose", ctx.dy, perm=perm) if perm != sorted(perm) else ctx.dy
    data_perm = [axis, *range(axis), *range(axis + 1, rank)]
    zeros = ctx.zeros_like(data)
    if data_perm != sorted(data_perm):
        zeros = ctx.op("Transpose", zeros, perm=data_perm)
    out = ctx.op("ScatterND", zeros, ctx.unsqueeze(idx, [-1]), dy, reduction="add")
    if data_perm != sorted(data_perm):
        out = ctx.op("Transpose", out, perm=[int(k) for k in np.argsort(data_perm)])
    return [out, None]


# --------------------------------------------------------------------------- reductions


def _reduce_axes(ctx: GradContext) -> list[int] | None:
    """Reduced axes (normalized) or None for "all axes"; [] means no-op."""
    x = ctx.inputs[0]
    rank = ctx.rank(x)
    if len(ctx.inputs) > 1 and ctx.inputs[1]:
        value = ctx.constant_value(ctx.inputs[1])
        if value is None:
            raise ctx.error("reduction axes must be constant")
        axes = [int(a) for a in value.reshape(-1)]
    else:
        axes = ctx.attr("axes")
    if not axes:
        return [] if ctx.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(a % rank for a in axes)


def _expand_back(ctx: GradContext, g: str, axes: list[int]) -> str:
    """Broadcast a reduced gradient back to the input's shape."""
    if not ctx.attr("keepdims", 1):
        g = ctx.unsqueeze(g, axes)
    return ctx.expand_like(g, ctx.inputs[0], axes)


@register("ReduceSum")
def _reduce_sum(ctx: GradContext) -> Grads:
    axes = _reduce_axes(ctx)
    return [_expand_back(ctx, ctx.dy, axes) if axes else ctx.dy, None]


@register("ReduceMean")
def _reduce_mean(ctx: GradContext) -> Grads:
    axes = _reduce_axes(ctx)
    if not axes:
        return [ctx.dy, None]
    x = ctx.inputs[0]
    shape = ctx.shape(x)
    dims = [shape[a] for a in axes] if shape else [None]
    if all(isinstance(d, int) for d in dims):
        count = ctx.scalar(float(np.prod(dims)), ctx.dy)
    else:
        ratio = ctx.op("Div", ctx.op("Size", x), ctx.op("Size", ctx.outputs[0]))
        count = ctx.op("Cast", ratio, to=ctx.dtype(ctx.dy))
    return [_expand_back(ctx, ctx.op("Div", ctx.dy, count), axes), None]


@register("ReduceMax", "ReduceMin")
def _reduce_max(ctx: GradContext) -> Grads:
    """Ties share the gradient evenly (like ``torch.amax``)."""
    axes = _reduce_axes(ctx)
    if not axes:
        return [ctx.dy, None]
    x, y = ctx.inputs[0], ctx.outputs[0]
    if not ctx.attr("keepdims", 1):
        y = ctx.unsqueeze(y, axes)
    mask = ctx.op("Cast", ctx.op("Equal", x, y), to=ctx.dtype(x))
    share = ctx.op("Div", mask, ctx.reduce("ReduceSum", mask, axes))
    return [ctx.op("Mul", share, _expand_back(ctx, ctx.dy, axes)), None]


@register("GlobalAveragePool")
def _global_average_pool(ctx: GradContext) -> Grads:
    x = ctx.inputs[0]
    shape = ctx.shape(x)
    spatial = shape[2:] if shape else [None]
    if all(isinstance(d, int) for d in spatial):
        count = ctx.scalar(float(np.prod(spatial)), x)
    else:
        ratio = ctx.op("Div", ctx.op("Size", x), ctx.op("Size", ctx.outputs[0]))
        count = ctx.op("Cast", ratio, to=ctx.dtype(x))
    g = ctx.op("Div", ctx.dy, count)
    return [ctx.expand_like(g, x, range(2, ctx.rank(x)))]


@register("GlobalMaxPool")
def _global_max_pool(ctx: GradContext) -> Grads:
    """The gradient goes to the first maximum of each channel (like PyTorch)."""
    x = ctx.inputs[0]
    flat_shape = ctx.ints([0, 0, -1])
    where = ctx.op("ArgMax", ctx.op("Reshape", x, flat_shape), axis=2, keepdims=1)
    updates = ctx.op("Reshape", ctx.dy, ctx.ints([0, 0, 1]))
    zeros = ctx.op("Reshape", ctx.zeros_like(x), flat_shape)
    out = ctx.op("ScatterElements", zeros, where, updates, axis=2)
    return [ctx.reshape_like(out, x)]


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


# --------------------------------------------------------------------------- quantization


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
    ``tests/test_autodiff_rules.py``).
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
    axis = _axis(ctx, -1)
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
