"""Gradient rules of resampling ops: ``Resize`` and ``RoiAlign``.

Both are linear in their input and separable along the axes they resample, so their
vector-Jacobian product is one matrix product per axis with the transposed interpolation
matrix. ``Resize`` gets its matrices from ONNX Runtime itself (the node's own ``Resize`` applied
to an identity matrix, so every mode, coordinate transformation and rounding rule is the
forward's); ``RoiAlign`` builds its bilinear sampling weights from the boxes. The matrices are
computed at run time: symbolic sizes are fine.
"""

from __future__ import annotations

from onnx import helper

from ..emitter import GradContext
from ..engine import register

__all__: list[str] = []

Grads = list[str | None]


# --------------------------------------------------------------------------- Resize


def _axis_size(ctx: GradContext, x: str, axis: int) -> str:
    """Size of ``x`` along ``axis`` as a 1-d int64 tensor of one element."""
    dim = (ctx.shape(x) or [None] * (axis + 1))[axis]
    if isinstance(dim, int):
        return ctx.ints([dim])
    return ctx.op("Gather", ctx.op("Shape", x), ctx.ints([axis]))


def _resized_axes(ctx: GradContext, axes: list[int], scales: str, sizes: str) -> list[int]:
    """The axes the node may change (an axis known to keep its size and sampling is left out)."""
    x, y = ctx.inputs[0], ctx.outputs[0]
    if scales:
        value = ctx.constant_value(scales)
        if value is None:
            return axes
        return [a for a, s in zip(axes, value.reshape(-1).tolist(), strict=True) if s != 1]
    x_shape, y_shape = ctx.shape(x), ctx.shape(y)
    if x_shape is None or y_shape is None or (
        ctx.attr("coordinate_transformation_mode") == "tf_half_pixel_for_nn"
    ):
        return axes
    return [a for a in axes if x_shape[a] is None or x_shape[a] != y_shape[a]]


@register("Resize")
def _resize(ctx: GradContext) -> Grads:
    """dX = dY multiplied, along each resized axis, by the transposed interpolation matrix.

    The matrix of axis ``a`` (``[out, in]``) is the node's own ``Resize`` (same mode,
    coordinate transformation, nearest rounding, cubic coefficient, antialias) applied to an
    identity ``[in, in]`` with that axis' scale (or ``[out, in]`` sizes), so it matches the
    forward exactly; its transpose comes from resizing the identity's other axis.
    """
    x = ctx.inputs[0]
    roi, scales, sizes = (ctx.inputs + [""] * 4)[1:4]
    if ctx.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise ctx.error("coordinate_transformation_mode 'tf_crop_and_resize' is not supported")
    if sizes and ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise ctx.error("keep_aspect_ratio_policy other than 'stretch' is not supported")
    rank = ctx.rank(x)
    axes = [a % rank for a in (ctx.attr("axes") or range(rank))]
    attrs = {
        name: ctx.attr(name)
        for name in ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
                     "exclude_outside", "antialias")
    }
    g = ctx.dy
    for axis in _resized_axes(ctx, axes, scales, sizes):
        j = axes.index(axis)
        in_size = _axis_size(ctx, x, axis)
        zero = helper.make_tensor("value", ctx.dtype(x), [1], [0])
        square = ctx.op("Concat", in_size, in_size, axis=0)
        eye = ctx.op("EyeLike", ctx.op("ConstantOfShape", square, name_hint="eye", value=zero))
        last = axis == rank - 1
        # axis last: dX = dY @ A with A [out, in] (resize the identity's rows);
        # otherwise: dX = A^T @ dY along the axis, A^T [in, out] (resize its columns)
        if scales:
            factor = ctx.op("Gather", scales, ctx.ints([j]))
            one = ctx.const([1.0], "float32")
            pair = ctx.op("Concat", *((factor, one) if last else (one, factor)), axis=0)
            matrix = ctx.op("Resize", eye, None, pair, name_hint="interpolation", **attrs)
        else:
            out_size = ctx.op("Gather", sizes, ctx.ints([j]))
            pair = ctx.op("Concat", *((out_size, in_size) if last else (in_size, out_size)),
                          axis=0)
            matrix = ctx.op("Resize", eye, None, None, pair, name_hint="interpolation", **attrs)
        if last:
            g = ctx.op("MatMul", g, matrix)
        elif axis == rank - 2:
            g = ctx.op("MatMul", matrix, g)
        else:  # bring the axis next to last, multiply, put it back
            perm = [k for k in range(rank) if k not in (axis, rank - 1)] + [axis, rank - 1]
            inverse = sorted(range(rank), key=lambda k: perm[k])
            g = ctx.op("Transpose", ctx.op("MatMul", matrix, ctx.op("Transpose", g, perm=perm)),
                       perm=inverse)
    return [g, None, None, None]


# --------------------------------------------------------------------------- RoiAlign


def _sampling_weights(
    ctx: GradContext, rois: str, size: str, coordinate: int, pooled: int, grid: int
) -> str:
    """Bilinear weights ``[R, pooled, size]`` of one axis, averaged over the bin's samples.

    Follows ONNX Runtime's (and torchvision's) RoiAlign: ``grid`` samples per bin, a sample
    outside ``[-1, size]`` counts zero, coordinates below 0 clamp to 0, and a sample in the last
    row takes that row alone.
    """
    x = ctx.inputs[0]
    default = "half_pixel" if ctx.opset >= 16 else "output_half_pixel"  # RoiAlign-10 had none
    half_pixel = ctx.attr("coordinate_transformation_mode", default) == "half_pixel"
    scale = ctx.scalar(ctx.attr("spatial_scale", 1.0), x)
    offset = ctx.scalar(0.5 if half_pixel else 0.0, x)
    start = ctx.op("Slice", rois, ctx.ints([coordinate]), ctx.ints([coordinate + 1]),
                   ctx.ints([1]))
    end = ctx.op("Slice", rois, ctx.ints([coordinate + 2]), ctx.ints([coordinate + 3]),
                 ctx.ints([1]))
    start = ctx.op("Sub", ctx.op("Mul", start, scale), offset)  # [R, 1]
    length = ctx.op("Sub", ctx.op("Sub", ctx.op("Mul", end, scale), offset), start)
    if not half_pixel:  # malformed boxes count as 1 x 1
        length = ctx.op("Max", length, ctx.scalar(1.0, x))
    positions = [p + (i + 0.5) / grid for p in range(pooled) for i in range(grid)]
    bins = ctx.op("Div", length, ctx.scalar(pooled, x))
    where = ctx.op("Add", start, ctx.op("Mul", bins, ctx.const(positions, ctx.np_dtype(x))))
    extent = ctx.cast_like(size, x)  # [1]
    valid = ctx.op("And", ctx.op("Not", ctx.op("Less", where, ctx.scalar(-1.0, x))),
                   ctx.op("Not", ctx.op("Greater", where, extent)))
    where = ctx.op("Max", where, ctx.scalar(0.0, x))
    last = ctx.op("Sub", extent, ctx.scalar(1.0, x))
    low = ctx.op("Floor", where)
    at_end = ctx.op("Not", ctx.op("Less", low, last))
    low = ctx.op("Where", at_end, last, low)
    where = ctx.op("Where", at_end, last, where)
    high = ctx.op("Where", at_end, last, ctx.op("Add", low, ctx.scalar(1.0, x)))
    frac = ctx.op("Sub", where, low)
    keep = ctx.op("Cast", valid, to=ctx.dtype(x))
    rows = ctx.op("Range", ctx.scalar(0.0, x), ctx.op("Squeeze", extent, ctx.ints([0])),
                  ctx.scalar(1.0, x))  # [size]

    def one_hot(index: str) -> str:  # [R, S, 1] == [size] -> [R, S, size]
        return ctx.op("Cast", ctx.op("Equal", ctx.unsqueeze(index, [-1]), rows), to=ctx.dtype(x))

    low_weight = ctx.unsqueeze(ctx.op("Mul", ctx.op("Sub", ctx.scalar(1.0, x), frac), keep), [-1])
    high_weight = ctx.unsqueeze(ctx.op("Mul", frac, keep), [-1])
    weights = ctx.op("Add", ctx.op("Mul", one_hot(low), low_weight),
                     ctx.op("Mul", one_hot(high), high_weight))  # [R, pooled * grid, size]
    weights = ctx.op("Reshape", weights, ctx.op("Concat", ctx.ints([-1, pooled, grid]), size,
                                                axis=0))  # no box: [0, ...]
    weights = ctx.reduce("ReduceSum", weights, [2], keepdims=False)
    return ctx.op("Div", weights, ctx.scalar(grid, x))


@register("RoiAlign", held=(1,))
def _roi_align(ctx: GradContext) -> Grads:
    """dX[n] = sum over the boxes of image n of Wy^T dY Wx (average mode, fixed sampling).

    Average pooling of bilinear samples is separable: a box's output is ``Wy X Wx^T`` with
    ``Wy [out_h, H]`` and ``Wx [out_w, W]`` the sample weights averaged over each bin. The boxes
    are held constant (torchvision detaches the region proposals; the boxes select regions,
    like indices), so ``rois`` gets no gradient even when it depends on ``wrt``. The product
    ``dY Wx`` holds ``R x C x out_h x W`` values (a few MB for a torchvision detector at 320 px;
    1000 boxes on an 800 px image's finest FPN level would need GBs).
    """
    if ctx.attr("mode", "avg") != "avg":
        raise ctx.error("only mode 'avg' is supported")
    grid = ctx.attr("sampling_ratio", 0)
    if grid <= 0:
        raise ctx.error("sampling_ratio must be positive (adaptive sampling grids vary per box)")
    x, rois, batch_indices = ctx.inputs
    out_h, out_w = ctx.attr("output_height", 1), ctx.attr("output_width", 1)
    height, width = _axis_size(ctx, x, 2), _axis_size(ctx, x, 3)
    weights_y = _sampling_weights(ctx, rois, height, 1, out_h, grid)
    weights_x = _sampling_weights(ctx, rois, width, 0, out_w, grid)
    # dY Wx: [R, C, out_h, W], then [C, R * out_h, W]: (box, row) pairs are contracted
    t = ctx.op("MatMul", ctx.dy, ctx.unsqueeze(weights_x, [1]))
    t = ctx.op("Reshape", ctx.op("Transpose", t, perm=[1, 0, 2, 3]),
               ctx.op("Concat", ctx.ints([0, -1]), width, axis=0))
    # Wy of each box on its image's rows: [R, N, out_h, H] -> [N, 1, H, R * out_h]
    images = ctx.op("Range", ctx.const(0, "int64"),
                    ctx.op("Squeeze", _axis_size(ctx, x, 0), ctx.ints([0])),
                    ctx.const(1, "int64"))
    owner = ctx.op("Equal", ctx.unsqueeze(batch_indices, [1]), images)  # [R, N]
    owner = ctx.unsqueeze(ctx.op("Cast", owner, to=ctx.dtype(x)), [2, 3])
    per_image = ctx.op("Mul", owner, ctx.unsqueeze(weights_y, [1]))
    per_image = ctx.op("Transpose", per_image, perm=[1, 3, 0, 2])
    per_image = ctx.unsqueeze(ctx.op("Reshape", per_image, ctx.ints([0, 0, -1])), [1])
    return [ctx.op("MatMul", per_image, t), None, None]
