"""Gradient rules of indexing ops: element gathers and scatters, and ``TopK``.

These are the ops of a detector's post-processing (score thresholds, per-level top-k, the
selection after non-maximum suppression). Indices are never differentiated: they are held at
the values the forward pass computed. Gathers scatter-add their gradient back
(``reduction='add'``, opset 16); ``TopK`` picks distinct elements, so a plain scatter does.
"""

from __future__ import annotations

from ..emitter import GradContext
from ..engine import register

__all__: list[str] = []

Grads = list[str | None]


@register("GatherElements")
def _gather_elements(ctx: GradContext) -> Grads:
    """Scatter-add ``dy`` back along ``axis`` (repeated indices are summed); needs opset 16."""
    if ctx.opset < 16:
        raise ctx.error("the GatherElements gradient needs opset 16 (ScatterElements "
                        "reduction='add')")
    data, indices = ctx.inputs
    out = ctx.op("ScatterElements", ctx.zeros_like(data), indices, ctx.dy, axis=ctx.axis(0),
                 reduction="add")
    return [out, None]


@register("GatherND")
def _gather_nd(ctx: GradContext) -> Grads:
    """Scatter-add ``dy`` back with ``ScatterND`` (needs opset 16).

    ``batch_dims=b > 0`` is turned into ``b = 0`` by prepending each batch position's
    coordinates to its index tuples.
    """
    if ctx.opset < 16:
        raise ctx.error("the GatherND gradient needs opset 16 (ScatterND reduction='add')")
    data, indices = ctx.inputs
    batch_dims = ctx.attr("batch_dims", 0)
    if batch_dims:
        indices = _with_batch_coordinates(ctx, data, indices, batch_dims)
    out = ctx.op("ScatterND", ctx.zeros_like(data), indices, ctx.dy, reduction="add")
    return [out, None]


def _with_batch_coordinates(ctx: GradContext, data: str, indices: str, batch_dims: int) -> str:
    """GatherND ``indices`` of ``batch_dims`` leading batch axes as ``batch_dims=0`` indices."""
    rank = ctx.rank(indices)
    lead = ctx.op("Shape", indices, start=0, end=rank - 1) if ctx.opset >= 15 else ctx.op(
        "Slice", ctx.op("Shape", indices), ctx.ints([0]), ctx.ints([rank - 1])
    )
    grid = ctx.op("Concat", lead, ctx.ints([1]), axis=0)
    data_shape = ctx.op("Shape", data)
    coords = []
    for j in range(batch_dims):
        size = ctx.op("Gather", data_shape, ctx.const(j, "int64"))
        positions = ctx.op("Range", ctx.const(0, "int64"), size, ctx.const(1, "int64"))
        positions = ctx.op("Reshape", positions, ctx.ints([1] * j + [-1] + [1] * (rank - 1 - j)))
        coords.append(ctx.op("Expand", positions, grid))
    return ctx.op("Concat", *coords, indices, axis=-1)


@register("TopK")
def _top_k(ctx: GradContext) -> Grads:
    """Scatter the values' gradient to the input at the ``Indices`` output (distinct positions,
    so no reduction is needed: opset 13). The indices output has no gradient."""
    x = ctx.inputs[0]
    out = ctx.op("ScatterElements", ctx.zeros_like(x), ctx.outputs[1], ctx.dy_or_zeros(0),
                 axis=ctx.axis(-1))
    return [out, None]


def _scatter_reduction(ctx: GradContext) -> str:
    reduction = ctx.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise ctx.error(f"reduction '{reduction}' is not supported (none and add only)")
    return reduction


@register("ScatterElements")
def _scatter_elements(ctx: GradContext) -> Grads:
    """``data`` gets ``dy`` except at the written positions (all of it with ``add``);
    ``updates`` gets ``dy`` gathered at ``indices``. Indices are assumed distinct for
    ``reduction='none'`` (with repeats, which update wins is unspecified)."""
    data, indices, updates = ctx.inputs
    reduction = _scatter_reduction(ctx)
    axis = ctx.axis(0)
    d_data = d_updates = None
    if ctx.needs(0):
        d_data = ctx.dy if reduction == "add" else ctx.op(
            "ScatterElements", ctx.dy, indices, ctx.zeros_like(updates), axis=axis
        )
    if ctx.needs(2):
        d_updates = ctx.op("GatherElements", ctx.dy, indices, axis=axis)
    return [d_data, None, d_updates]


@register("ScatterND")
def _scatter_nd(ctx: GradContext) -> Grads:
    """As ``ScatterElements``, with ``ScatterND``/``GatherND`` (indices distinct for
    ``reduction='none'``)."""
    data, indices, updates = ctx.inputs
    reduction = _scatter_reduction(ctx)
    d_data = d_updates = None
    if ctx.needs(0):
        d_data = ctx.dy if reduction == "add" else ctx.op(
            "ScatterND", ctx.dy, indices, ctx.zeros_like(updates)
        )
    if ctx.needs(2):
        d_updates = ctx.op("GatherND", ctx.dy, indices)
    return [d_data, None, d_updates]
