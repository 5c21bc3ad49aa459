"""Heatmap arrays: bilinear upsampling (half-pixel centers) and per-map min-max scaling, in
numpy, and the same as an ONNX graph (:func:`heatmap_model`) that ONNX Runtime runs several
times faster on many maps (a detector's K detections at 640x640): the upsampling as matrix
products with the interpolation matrices (:func:`interpolation_matrix`), the height's by
blocks of output rows that skip the matrix's zeros (:func:`row_blocks`).

A layer sweep's fused heatmap (the mean of its layers' heatmaps, scaled again) is one resize:
each layer's CAMs are shifted and scaled first so that their resize spans [0, 1]
(:func:`scaled_layers`), and the layers' interpolation matrices side by side sum their
resizes in the same product. The range of a bilinear resize, or of such a sum, is read off
about 2h x 2w of its values (the ends of the runs in which it is linear,
:func:`upsampled_range`), so the graph scales before it resizes and writes each output once.
Only the maps returned are resized."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["fused_heatmaps", "heatmap_feeds", "heatmap_model", "interpolation_matrix",
           "normalize_maps", "row_blocks", "scaled_layers", "upsample_bilinear",
           "upsampled_range"]


@lru_cache(maxsize=64)
def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and weight of hi for 1-D linear interpolation with half-pixel
    centers (align_corners=False, as torch.nn.functional.interpolate and cv2.resize)."""
    pos = np.clip((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo).astype(np.float32)


@lru_cache(maxsize=64)
def interpolation_matrix(src: int, dst: int) -> np.ndarray:
    """The [dst, src] float32 matrix of 1-D linear interpolation with half-pixel centers: row
    i holds the two weights of output i (:func:`_linear_taps`), so that ``A @ v`` resizes v."""
    lo, hi, frac = _linear_taps(src, dst)
    matrix = np.zeros((dst, src), np.float32)
    rows = np.arange(dst)
    np.add.at(matrix, (rows, lo), 1 - frac)  # lo == hi at the clamped edges: weights add
    np.add.at(matrix, (rows, hi), frac)
    matrix.setflags(write=False)
    return matrix


def _lerp_columns(maps: np.ndarray, width: int, select: np.ndarray | None = None
                  ) -> np.ndarray:
    """``maps`` [..., w] resized along the last axis to ``width`` (half-pixel centers), or to
    the outputs ``select`` of that resize only."""
    lo, hi, frac = _linear_taps(maps.shape[-1], width)
    if select is not None:
        lo, hi, frac = lo[select], hi[select], frac[select]
    return maps[..., lo] * (1 - frac) + maps[..., hi] * frac


def upsample_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize ``maps`` [..., h, w] to [..., H, W] (half-pixel centers).

    Gathers and lerps rather than multiplying by interpolation matrices: BLAS threads left
    spinning after a matmul would steal the cores from the next ONNX Runtime run.
    """
    maps = maps.astype(np.float32, copy=False)
    columns = _lerp_columns(maps, size[1])  # [..., h, W], small
    lo, hi, frac = _linear_taps(maps.shape[-2], size[0])
    frac = frac[:, None]
    out = np.ascontiguousarray(columns[..., lo, :])  # fancy indexing may leave odd strides
    out *= 1 - frac
    upper = columns[..., hi, :]
    upper *= frac
    out += upper
    return out


@lru_cache(maxsize=64)
def _extreme_outputs(src: int, dst: int) -> np.ndarray:
    """The outputs of a 1-D linear resize from ``src`` to ``dst`` that end its runs: the first
    and last of each run of outputs with the same lower tap and clamping (an output past the
    first or last source center takes that center's value). Within a run an output is linear
    in its index, so the minimum and maximum of a bilinear resize, and of a sum of resizes
    from several sizes (on the union of their ends), lie on these rows and columns."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    lo, _, _ = _linear_taps(src, dst)
    run = lo * 3 + (pos < 0) + 2 * (pos > src - 1)
    edges = np.flatnonzero(np.diff(run))
    return np.unique(np.concatenate([[0, dst - 1], edges, edges + 1]))


def upsampled_range(cams: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The minimum and maximum [N] of each of ``cams`` [N, h, w] bilinearly resized to
    ``size`` (:func:`upsample_bilinear`), without resizing them: the resize evaluated on the
    rows and columns of :func:`_extreme_outputs` only (about 2h x 2w values)."""
    h, w = cams.shape[-2:]
    columns = _lerp_columns(cams.astype(np.float32, copy=False), size[1],
                            _extreme_outputs(w, size[1]))
    values = _lerp_columns(np.swapaxes(columns, -1, -2), size[0], _extreme_outputs(h, size[0]))
    flat = values.reshape(len(values), -1)
    return flat.min(axis=1), flat.max(axis=1)


def scaled_layers(layers: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Several layers' CAMs [N, h_l, w_l], each shifted and scaled so that its bilinear resize
    to ``size`` spans [0, 1] (a constant CAM: zeros, as :func:`explainer.layers.heatmaps_of`
    gives it): the sum of their resizes is the sum of the layers' heatmaps, since the
    interpolation weights sum to one. One layer is returned as it is (the final min-max
    scaling does the rest)."""
    if len(layers) == 1:
        return [layers[0].astype(np.float32, copy=False)]
    out = []
    for cams in layers:
        low, high = upsampled_range(cams, size)
        span = high - low
        flat = cams.reshape(len(cams), -1)
        # a constant CAM is zeros: its resize may vary by rounding, which scaling would blow up
        varies = (span > 0) & (flat.max(axis=1, initial=-np.inf) > flat.min(axis=1, initial=np.inf))
        scale = np.divide(1, span, out=np.zeros_like(span), where=varies)
        out.append(((cams - low[:, None, None]) * scale[:, None, None]).astype(np.float32))
    return out


def fused_heatmaps(layers: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """The heatmaps [N, H, W] of one layer's CAMs [N, h, w] (resized to ``size``, min-max
    scaled per map), or of several layers' CAMs: the mean of their heatmaps, min-max scaled
    again. numpy's; :func:`heatmap_model` is the same on ONNX Runtime."""
    scaled = scaled_layers(layers, size)
    out = upsample_bilinear(scaled[0], size)
    for cams in scaled[1:]:
        out += upsample_bilinear(cams, size)
    return normalize_maps(out, copy=False)


def normalize_maps(maps: np.ndarray, copy: bool = True) -> np.ndarray:
    """Per-map min-max scaling of [..., H, W] to [0, 1]; a constant map becomes all zeros.

    With ``copy=False`` a C-contiguous float32 input is scaled in place (and returned).
    """
    out = np.array(maps, dtype=np.float32, order="C", copy=True if copy else None)
    flat = out.reshape(-1, out.shape[-2] * out.shape[-1])  # a view: `out` is C-contiguous
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    flat -= low
    flat *= np.divide(1, span, out=np.zeros_like(span), where=span > 0)
    return out


def _block_rows(height: int) -> int:
    """Output rows per block of the height resize: the divisor of ``height`` from 16 to 64
    closest to 32 (fewest source rows per output row for a GEMM still worth running), else
    ``height`` (one block)."""
    divisors = [d for d in range(16, 65) if height % d == 0]
    return min(divisors, key=lambda d: abs(d - 32)) if divisors else height


@lru_cache(maxsize=32)
def row_blocks(heights: tuple[int, ...], height: int) -> tuple[np.ndarray, np.ndarray]:
    """The height resizes of layers of ``heights`` rows to ``height``, side by side
    ([height, sum(heights)], each row two weights per layer), cut into blocks of
    :func:`_block_rows` output rows that read only the source rows they need: ``index``
    [blocks, K] (those rows; padded with 0) and ``weights`` [blocks, rows, K] (0 for padding)."""
    matrix = np.concatenate([interpolation_matrix(h, height) for h in heights], axis=1)
    r = _block_rows(height)
    blocks = matrix.reshape(height // r, r, -1)
    used = [np.flatnonzero(block.any(axis=0)) for block in blocks]
    k = max(len(u) for u in used)
    index = np.zeros((len(blocks), k), np.int64)
    weights = np.zeros((len(blocks), r, k), np.float32)
    for b, (block, rows) in enumerate(zip(blocks, used, strict=True)):
        index[b, :len(rows)] = rows
        weights[b, :, :len(rows)] = block[:, rows]
    index.setflags(write=False)
    weights.setflags(write=False)
    return index, weights


def heatmap_model(layers: int = 1) -> onnx.ModelProto:
    """:func:`fused_heatmaps` of ``layers`` layers as one ONNX graph (3-4x faster than
    ``Resize`` on many maps), inputs from :func:`heatmap_feeds`, output ``heatmaps``
    [N, H, W].

    The resize is two products: each layer's CAMs ``cams{i}`` [N, h_i, w_i] by its width's
    interpolation matrix ``columns{i}`` [w_i, W] (the ``tall`` maps, [N, h_i, W], side by side
    [N, sum h_i, W]), then the layers' height resizes side by side, by blocks of output rows
    (:func:`row_blocks`: ``index``, ``weights``; a block of 32 rows of three YOLO levels at
    640 reads 13 of their 140 rows), which also sums the layers. Every scaling is folded into
    the small ``tall`` maps before that last product, so the output is written once (and
    clipped to [0, 1], which rounding may leave): the resizes are evaluated on the union of
    the layers' run ends only (:func:`upsampled_range`; columns ``ucolumns{i}``), each
    layer's range on its own rows' ends (``erows{i}``), the fused map's, of the scaled maps,
    on the union's (``uweights``: the rows of ``weights`` there; more outputs than a range
    needs leave it as it is). A constant layer adds nothing; a constant map is zeros."""
    node = helper.make_node
    nodes: list[onnx.NodeProto] = []
    for i in range(layers):
        nodes += [
            node("MatMul", [f"cams{i}", f"columns{i}"], [f"tall{i}"]),  # [N, h_i, W]
            node("MatMul", [f"cams{i}", f"ucolumns{i}"], [f"ucol{i}"]),  # [N, h_i, U]
            node("MatMul", [f"erows{i}", f"ucol{i}"], [f"ext{i}"]),  # the resize's run ends
        ]
        for op, src, out in (("ReduceMin", f"ext{i}", "lo"), ("ReduceMax", f"ext{i}", "hi"),
                             ("ReduceMin", f"cams{i}", "cmin"), ("ReduceMax", f"cams{i}", "cmax")):
            nodes += [node(op, [src, "axes12"], [f"{out}{i}_"], keepdims=0),
                      node("Unsqueeze", [f"{out}{i}_", "axis1"], [f"{out}{i}"])]  # [N, 1]
    for name in ("tall", "ucol", "lo", "hi", "cmin", "cmax"):
        nodes.append(node("Concat", [f"{name}{i}" for i in range(layers)], [name], axis=1))
    nodes += [  # each layer scaled to span [0, 1]: tall * s + b, per layer [N, L]
        node("Sub", ["hi", "lo"], ["span"]),
        node("Greater", ["span", "zero"], ["spread"]),
        node("Greater", ["cmax", "cmin"], ["varies"]),  # rounding may spread a constant CAM
        node("And", ["spread", "varies"], ["live"]),
        node("Reciprocal", ["span"], ["inverse"]),
        node("Where", ["live", "inverse", "zero"], ["s"]),
        node("Mul", ["lo", "s"], ["lo_s"]),
        node("Neg", ["lo_s"], ["b"]),
        node("Gather", ["s", "rows_layer"], ["s_rows_"], axis=1),  # [N, sum h]
        node("Gather", ["b", "rows_layer"], ["b_rows_"], axis=1),
        node("Unsqueeze", ["s_rows_", "axis2"], ["s_rows"]),  # [N, sum h, 1]
        node("Unsqueeze", ["b_rows_", "axis2"], ["b_rows"]),
        # the sum of the scaled resizes on the union of the run ends: its range
        node("Mul", ["ucol", "s_rows"], ["ucol_s"]),  # [N, sum h, U]
        node("Add", ["ucol_s", "b_rows"], ["ucol_scaled"]),
        node("Gather", ["ucol_scaled", "index"], ["upicked"], axis=1),  # [N, blocks, K, U]
        node("MatMul", ["uweights", "upicked"], ["uext"]),  # [N, blocks, m, U]
        node("ReduceMin", ["uext", "axes123"], ["flo_"], keepdims=0),
        node("ReduceMax", ["uext", "axes123"], ["fhi_"], keepdims=0),
        node("Unsqueeze", ["flo_", "axes12"], ["flo"]),  # [N, 1, 1]
        node("Unsqueeze", ["fhi_", "axes12"], ["fhi"]),
        node("Sub", ["fhi", "flo"], ["fspan"]),
        node("Greater", ["fspan", "zero"], ["fspread"]),
        node("Reciprocal", ["fspan"], ["finverse"]),
        node("Where", ["fspread", "finverse", "zero"], ["fs"]),
        # final = (tall * s + b - flo / L) * fs = tall * a + c: the rows' sums of weights are L
        node("Mul", ["s_rows", "fs"], ["a"]),
        node("Mul", ["flo", "share"], ["flo_share"]),
        node("Sub", ["b_rows", "flo_share"], ["b_shift"]),
        node("Mul", ["b_shift", "fs"], ["c"]),
        node("Mul", ["tall", "a"], ["tall_a"]),
        node("Add", ["tall_a", "c"], ["final"]),
        node("Gather", ["final", "index"], ["picked"], axis=1),  # [N, blocks, K, W]
        node("MatMul", ["weights", "picked"], ["blocks"]),  # [N, blocks, r, W]
        node("Reshape", ["blocks", "shape"], ["up"]),
        node("Clip", ["up", "zero", "one"], ["heatmaps"]),
    ]
    ints = [("index", ["blocks", "K"]), ("rows_layer", ["S"]), ("shape", [3])]
    floats = [("weights", ["blocks", "r", "K"]), ("uweights", ["blocks", "m", "K"])]
    for i in range(layers):
        floats += [(f"cams{i}", ["n", f"h{i}", f"w{i}"]), (f"columns{i}", [f"w{i}", "W"]),
                   (f"ucolumns{i}", [f"w{i}", "U"]), (f"erows{i}", [f"eh{i}", f"h{i}"])]
    graph = helper.make_graph(
        nodes, "heatmaps",
        [helper.make_tensor_value_info(n, TensorProto.INT64, d) for n, d in ints]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in floats],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["n", "H", "W"])],
        initializer=[helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
                     helper.make_tensor("axes12", TensorProto.INT64, [2], [1, 2]),
                     helper.make_tensor("axes123", TensorProto.INT64, [3], [1, 2, 3]),
                     helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                     helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
                     helper.make_tensor("share", TensorProto.FLOAT, [], [1.0 / layers])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@lru_cache(maxsize=32)
def _constant_feeds(heights: tuple[int, ...], widths: tuple[int, ...], size: tuple[int, int]
                    ) -> dict[str, np.ndarray]:
    """The inputs of :func:`heatmap_model` that depend on the sizes only."""
    index, weights = row_blocks(heights, size[0])
    feeds = {"index": index, "weights": weights, "shape": np.array([-1, *size], np.int64),
             "rows_layer": np.repeat(np.arange(len(heights), dtype=np.int64), heights)}
    union = np.unique(np.concatenate([_extreme_outputs(w, size[1]) for w in widths]))
    for i, (h, w) in enumerate(zip(heights, widths, strict=True)):
        columns = interpolation_matrix(w, size[1]).T
        feeds[f"columns{i}"] = np.ascontiguousarray(columns)
        feeds[f"ucolumns{i}"] = np.ascontiguousarray(columns[:, union])
        feeds[f"erows{i}"] = np.ascontiguousarray(
            interpolation_matrix(h, size[0])[_extreme_outputs(h, size[0])])
    ends = np.zeros(size[0], bool)  # the union of the layers' run ends along the height
    for h in heights:
        ends[_extreme_outputs(h, size[0])] = True
    rows = ends.reshape(len(weights), weights.shape[1])
    m = int(rows.sum(axis=1).max())
    # each block's run-end rows, padded with its first (any output row leaves the range as is)
    picks = [np.resize(np.flatnonzero(r), m) if r.any() else np.zeros(m, np.intp)
             for r in rows]
    feeds["uweights"] = np.ascontiguousarray(
        np.stack([block[p] for block, p in zip(weights, picks, strict=True)]))
    for value in feeds.values():
        value.setflags(write=False)
    return feeds


def heatmap_feeds(layers: list[np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """:func:`heatmap_model`'s inputs for one or several layers' CAMs [N, h_i, w_i] and an
    output ``size`` (H, W)."""
    feeds = dict(_constant_feeds(tuple(c.shape[-2] for c in layers),
                                 tuple(c.shape[-1] for c in layers), tuple(size)))
    for i, cams in enumerate(layers):
        feeds[f"cams{i}"] = np.ascontiguousarray(cams, dtype=np.float32)
    return feeds
