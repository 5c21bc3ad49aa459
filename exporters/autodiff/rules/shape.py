"""Gradient rules of shape ops (reshape, transpose, concat, split, slice, pad, gather) and
reductions (Reduce*, global pooling)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import TensorProto

from ..emitter import GradContext
from ..engine import register

__all__: list[str] = []

Grads = list[str | None]


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
    axis = ctx.axis(0)
    sizes = _axis_sizes(ctx, ctx.inputs, axis)
    parts = ctx.op("Split", ctx.dy, sizes, axis=axis, num_outputs=len(ctx.inputs))
    parts = [parts] if isinstance(parts, str) else parts
    return [p if ctx.needs(i) else None for i, p in enumerate(parts)]


@register("Split")
def _split(ctx: GradContext) -> Grads:
    parts = [ctx.dy_or_zeros(i) for i in range(len(ctx.outputs))]
    return [ctx.op("Concat", *parts, axis=ctx.axis(0))]


@register("Slice")
def _slice(ctx: GradContext) -> Grads:
    """Step 1: ``Pad`` the gradient back; other steps: pad a zero slab, ``Gather`` back.

    Starts and ends computed at run time (a detector slicing its concatenated levels), or a
    sliced axis of symbolic size, take :func:`_slice_dynamic` (step 1 only).
    """
    x = ctx.inputs[0]
    names = (ctx.inputs + [""] * 5)[1:5]
    values = [ctx.constant_value(n) if n else None for n in names]
    if any(n and v is None for n, v in zip(names[2:], values[2:], strict=True)):
        raise ctx.error("axes/steps must be constants")
    starts, ends, axes, steps = values
    shape, rank = ctx.shape(x), ctx.rank(x)
    count = len(starts) if starts is not None else len(ends) if ends is not None else None
    if axes is None and count is None:
        count = ctx.static_shape(names[0])[0]
    axes = [int(a) % rank for a in (axes if axes is not None else range(count))]
    steps = [int(s) for s in (steps if steps is not None else [1] * len(axes))]
    if starts is None or ends is None or any(
        not isinstance(shape[a], int) for a in axes
    ):
        return [_slice_dynamic(ctx, axes, steps)]
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


def _slice_dynamic(ctx: GradContext, axes: list[int], steps: list[int]) -> str:
    """``Pad`` the gradient back with pads computed at run time (ONNX's clamping of negative
    and out-of-range starts/ends, step 1)."""
    if any(step != 1 for step in steps):
        raise ctx.error("with run-time starts/ends or symbolic sizes, only step 1 is supported")
    x, starts, ends = ctx.inputs[:3]
    rank = ctx.rank(x)
    shape = ctx.shape(x)
    dims = [shape[a] if isinstance(shape[a], int) else None for a in axes]
    if all(d is not None for d in dims):
        size = ctx.ints(dims)  # type: ignore[arg-type]
    else:
        size = ctx.op("Gather", ctx.op("Shape", x), ctx.ints(axes))
    zero = ctx.ints([0] * len(axes))

    def clamp(bound: str) -> str:
        bound = ctx.op("Cast", bound, to=TensorProto.INT64)
        wrapped = ctx.op("Where", ctx.op("Less", bound, zero), ctx.op("Add", bound, size), bound)
        return ctx.op("Min", ctx.op("Max", wrapped, zero), size)

    begin = clamp(starts)
    end = ctx.op("Max", clamp(ends), begin)
    after = ctx.op("Sub", size, end)
    parts = []
    for side in (begin, after):
        for k in range(rank):
            parts.append(ctx.op("Slice", side, ctx.ints([axes.index(k)]),
                                ctx.ints([axes.index(k) + 1])) if k in axes else ctx.ints([0]))
    return ctx.op("Pad", ctx.dy, ctx.op("Concat", *parts, axis=0))


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
    axis = ctx.axis(0)
    idx_rank = ctx.rank(indices)
    idx = ctx.constant_value(indices)
    dim = (ctx.shape(data) or [None] * rank)[axis]
    if idx is not None and isinstance(dim, int):
        idx = ctx.const(np.where(idx < 0, idx + dim, idx).astype(np.int64))
    else:
        idx = ctx.op("Cast", indices, to=7)  # int64
        # 0-d size and zero: the normalized indices keep their rank (scalar indices included)
        n = ctx.op("Gather", ctx.op("Shape", data), ctx.const(axis, np.int64))
        zero = ctx.const(0, np.int64)
        idx = ctx.op("Where", ctx.op("Less", idx, zero), ctx.op("Add", idx, n), idx)
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
