"""Finite-difference checks of every gradient rule, driven by one table.

Each row is a single-op (or tiny) ONNX graph.  For every differentiable input the test
builds the gradient graph with :func:`build_gradient_graph`, runs it with ONNX Runtime
and compares it with central finite differences of the forward graph, also run by ONNX
Runtime (element by element for small inputs, along random directions otherwise).
Adding a rule = adding a row here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.autodiff import RULES, build_gradient_graph
from exporters.graph import prune


@dataclass(frozen=True)
class Spec:
    """One input of a test graph.

    ``kind`` is ``"diff"`` (a float graph input we differentiate), ``"const"`` (a random
    float initializer) or ``"value"`` (an initializer with the given ``value``).  String
    dims are symbolic (``dim_param``) and take the row's ``batch`` value at run time.
    """

    shape: tuple[int | str, ...] = ()
    kind: str = "diff"
    value: Any = None
    low: float = -1.0
    high: float = 1.0
    distinct: bool = False  # well separated values: no ties for max-like ops under FD
    avoid: tuple[float, ...] = ()  # kinks the values keep away from


def F(*shape: int | str, **kw: Any) -> Spec:  # noqa: N802
    """A differentiable float input."""
    return Spec(tuple(shape), "diff", **kw)


def C(*shape: int | str, **kw: Any) -> Spec:  # noqa: N802
    """A random float constant (initializer)."""
    return Spec(tuple(shape), "const", **kw)


def V(value: Any, dtype: Any = np.int64) -> Spec:  # noqa: N802
    """A constant with a fixed value (axes, shapes, indices, bounds...)."""
    return Spec(kind="value", value=np.asarray(value, dtype=dtype))


@dataclass
class Row:
    """A test graph: nodes, named inputs, the output to differentiate, opset."""

    id: str
    nodes: list[onnx.NodeProto]
    inputs: dict[str, Spec]
    output: str = "y"
    opset: int = 20
    batch: int = 2
    eps: float = 1e-3
    rtol: float = 1e-2
    ops: set[str] = field(default_factory=set)
    # finite differences of this smooth graph instead (straight-through estimators)
    surrogate: Row | None = None
    # ONNX Runtime cannot run the forward op (LSTM/GRU with layout=1): run the gradient graph
    # pruned to the gradient (which must not need the forward's outputs); FD of the surrogate
    gradient_only: bool = False

    def __post_init__(self) -> None:
        self.ops = self.ops or {n.op_type for n in self.nodes}


def op(
    id: str, op_type: str, *inputs: Spec | None, opset: int = 20, batch: int = 2,
    outputs: int = 1, out: int = 0, eps: float = 1e-3, **attrs: Any,
) -> Row:
    """A single-op row; ``None`` inputs are omitted optional inputs."""
    names = [f"x{i}" if s is not None else "" for i, s in enumerate(inputs)]
    while names and not names[-1]:
        names.pop()  # ORT may crash on trailing empty optional inputs
    outs = ["y" if k == out else f"y_{k}" for k in range(outputs)]
    node = helper.make_node(op_type, names, outs, name=f"{op_type.lower()}_node", **attrs)
    specs = {n: s for n, s in zip(names, inputs, strict=False) if s is not None}
    return Row(id, [node], specs, opset=opset, batch=batch, eps=eps)


def node(op_type: str, inputs: list[str], outputs: list[str], **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op_type, inputs, outputs, name=f"{op_type}_{outputs[0]}", **attrs)


def _fake_quant(id: str, x: Spec, scale: Any, zero_point: Any, opset: int = 20) -> Row:
    """QuantizeLinear -> DequantizeLinear, whose STE gradient is the derivative of
    ``(clip(x / scale + zp, qmin - 1/2, qmax + 1/2) - zp) * scale`` (the surrogate row)."""
    scale = np.asarray(scale, np.float32)
    info = np.iinfo(zero_point.dtype)
    rank = len(x.shape)
    bshape = (-1,) + (1,) * (rank - 2) if scale.ndim else ()
    nodes = [node("QuantizeLinear", ["x", "scale", "zp"], ["q"]),
             node("DequantizeLinear", ["q", "scale", "zp"], ["y"])]
    inputs = {"x": x, "scale": V(scale, np.float32), "zp": V(zero_point, zero_point.dtype)}
    smooth = [node("Div", ["x", "s"], ["t0"]), node("Add", ["t0", "z"], ["t1"]),
              node("Clip", ["t1", "lo", "hi"], ["t2"]), node("Sub", ["t2", "z"], ["t3"]),
              node("Mul", ["t3", "s"], ["y"])]
    smooth_inputs = {
        "x": x, "s": V(scale.reshape(bshape), np.float32),
        "z": V(np.asarray(zero_point, np.float32).reshape(bshape), np.float32),
        "lo": V(info.min - 0.5, np.float32), "hi": V(info.max + 0.5, np.float32),
    }
    return Row(id, nodes, inputs, opset=opset, batch=2,
               surrogate=Row(f"{id}-surrogate", smooth, smooth_inputs, opset=opset))


def _dynamic_quant(id: str, x: Spec, op_type: str, weights: np.ndarray, zero_point: np.ndarray,
                   scale: np.ndarray, **attrs: Any) -> Row:
    """DynamicQuantizeLinear -> ConvInteger/MatMulInteger -> Cast -> scaled, as
    onnxruntime's ``quantize_dynamic`` writes a Conv or MatMul: the STE gradient is the
    derivative of the float op with the weights ``(w - zp) * scale`` (the surrogate row: the
    dequantized activation is x itself when ``round`` is the identity)."""
    float_op = {"ConvInteger": "Conv", "MatMulInteger": "MatMul"}[op_type]
    nodes = [node("DynamicQuantizeLinear", ["x"], ["q", "q_scale", "q_zp"]),
             node(op_type, ["q", "w", "q_zp", "w_zp"], ["acc"], **attrs),
             node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
             node("Mul", ["q_scale", "w_scale"], ["scales"]),
             node("Mul", ["acc_f", "scales"], ["y"])]
    inputs = {"x": x, "w": V(weights, weights.dtype), "w_zp": V(zero_point, zero_point.dtype),
              "w_scale": V(scale, np.float32)}
    bshape = (-1, 1, 1, 1) if float_op == "Conv" and zero_point.ndim else zero_point.shape
    dequantized = (weights.astype(np.float32) - zero_point.astype(np.float32).reshape(bshape))
    smooth = [node(float_op, ["x", "wf"], ["t"], **attrs), node("Mul", ["t", "s"], ["y"])]
    smooth_inputs = {"x": x, "wf": V(dequantized, np.float32),
                     "s": V(scale.reshape(bshape if scale.ndim else ()), np.float32)}
    return Row(id, nodes, inputs, surrogate=Row(f"{id}-surrogate", smooth, smooth_inputs))


def _recurrent_layout1(id: str, op_type: str, out: int, **attrs: Any) -> Row:
    """A batch-first (``layout=1``) LSTM/GRU row with ``initial_h``, differentiating output
    ``out``; its surrogate is the same op in layout 0 between Transposes."""
    rng = np.random.default_rng(zlib.crc32(id.encode()))
    gates, dirs = {"LSTM": 4, "GRU": 3}[op_type], 1 if attrs.get("direction") else 2
    attrs = {"direction": "bidirectional", **attrs, "hidden_size": 4}
    consts = {name: V(rng.uniform(-1, 1, shape).astype(np.float32), np.float32)
              for name, shape in (("w", (dirs, gates * 4, 3)), ("r", (dirs, gates * 4, 4)),
                                  ("b", (dirs, gates * 8)))}
    inputs = {"x": F(2, 5, 3), **consts, "h0": F(2, dirs, 4)}
    outs = [f"o{k}" for k in range(3 if op_type == "LSTM" else 2)]
    outs[out] = "y"
    nodes = [node(op_type, ["x", "w", "r", "b", "", "h0"], outs, layout=1, **attrs)]
    time_major = [
        node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        node("Transpose", ["h0"], ["h0t"], perm=[1, 0, 2]),
        node(op_type, ["xt", "w", "r", "b", "", "h0t"], [*outs[:out], "yt"], **attrs),
        node("Transpose", ["yt"], ["y"], perm=[2, 0, 1, 3] if out == 0 else [1, 0, 2]),
    ]
    return Row(id, nodes, inputs, gradient_only=True,
               surrogate=Row(f"{id}-surrogate", time_major, inputs))


f32 = np.float32
ROWS: list[Row] = [
    # ---- identity-like
    op("identity", "Identity", F(2, 3)),
    op("dropout", "Dropout", F(2, 3)),
    op("dropout-mask", "Dropout", F(2, 3), V(0.5, f32), outputs=2, opset=13),
    op("cast-double", "Cast", F(2, 3), to=TensorProto.DOUBLE),
    op("neg", "Neg", F(3, 4)),
    # ---- arithmetic, broadcasting
    op("add", "Add", F(2, 3, 4), F(2, 3, 4)),
    op("add-bcast-c11", "Add", F(2, 3, 4, 5), F(3, 1, 1)),
    op("add-bcast-batch", "Add", F("batch", 3, 2, 2), F(1, 3, 1, 1), batch=3, opset=13),
    op("add-scalar-const", "Add", F(2, 3), C()),
    op("sum", "Sum", F(2, 3), F(3), F(2, 1)),
    op("mean", "Mean", F(2, 3), F(3)),
    op("sub", "Sub", F(2, 3), F(3)),
    op("sub-bcast-left", "Sub", F(1, 3), F(4, 1)),
    op("mul", "Mul", F(2, 3, 4), F(2, 3, 4)),
    op("mul-scalar", "Mul", F(2, 3, 4), F()),
    op("mul-const-batch", "Mul", F("batch", 4, 3, 3), C(1, 4, 1, 1), batch=3),
    op("div", "Div", F(2, 3, 4), F(3, 4, low=0.5, high=2.0)),
    op("pow", "Pow", F(2, 3, low=0.5, high=2.0), F(2, 3, low=-1.0, high=2.0)),
    op("pow-int-exponent", "Pow", F(2, 3), V(3)),
    op("pow-float-const", "Pow", F(2, 3, low=0.5, high=2.0), V(2.5, f32)),
    op("sqrt", "Sqrt", F(3, 4, low=0.5, high=2.0)),
    op("exp", "Exp", F(3, 4)),
    op("log", "Log", F(3, 4, low=0.5, high=2.0)),
    op("reciprocal", "Reciprocal", F(3, 4, low=0.5, high=2.0)),
    op("abs", "Abs", F(3, 4, avoid=(0.0,))),
    op("max", "Max", F(2, 3, 4), F(3, 4)),
    op("min", "Min", F(2, 3, 4), F(2, 3, 4), C(4)),
    op("where", "Where", V(np.arange(12).reshape(3, 4) % 3 == 0, bool), F(2, 3, 4), F(4)),
    op("expand", "Expand", F(3, 1), V([2, 3, 4])),
    op("expand-batch", "Expand", F("batch", 1, 4), V([1, 3, 1]), batch=3),
    # ---- activations
    op("relu", "Relu", F(2, 3, 4, avoid=(0.0,))),
    op("leaky-relu", "LeakyRelu", F(2, 3, 4, avoid=(0.0,)), alpha=0.1),
    op("prelu", "PRelu", F(2, 3, 2, 2, avoid=(0.0,)), C(3, 1, 1)),
    op("clip", "Clip", F(2, 3, 4, avoid=(-0.5, 0.5)), V(-0.5, f32), V(0.5, f32)),
    op("clip-min-only", "Clip", F(2, 3, 4, avoid=(-0.5,)), V(-0.5, f32), None),
    op("relu6", "Clip", F(2, 3, 4, low=-2, high=8, avoid=(0.0, 6.0)), V(0, f32), V(6, f32)),
    op("clip-none", "Clip", F(2, 3)),
    op("sigmoid", "Sigmoid", F(2, 3, 4, low=-3, high=3)),
    op("tanh", "Tanh", F(2, 3, 4, low=-2, high=2)),
    op("hard-sigmoid", "HardSigmoid", F(2, 3, 4, low=-4, high=4, avoid=(-2.5, 2.5))),
    op("hard-sigmoid-torch", "HardSigmoid", F(2, 3, 4, low=-4, high=4, avoid=(-3, 3)),
       alpha=1 / 6, beta=0.5),
    op("hard-swish", "HardSwish", F(2, 3, 4, low=-5, high=5, avoid=(-3.0, 3.0))),
    op("erf", "Erf", F(2, 3, 4, low=-2, high=2)),
    op("gelu", "Gelu", F(2, 3, 4, low=-3, high=3)),
    op("gelu-tanh", "Gelu", F(2, 3, 4, low=-3, high=3), approximate="tanh"),
    op("softmax", "Softmax", F(2, 5, 3), axis=1),
    op("softmax-default-13", "Softmax", F(2, 3, 4), opset=13),
    op("log-softmax", "LogSoftmax", F(2, 5), axis=-1),
    op("log-softmax-13", "LogSoftmax", F(2, 4, 3), axis=1, opset=13),
    # ---- shapes
    op("reshape", "Reshape", F(2, 3, 4), V([4, -1])),
    op("reshape-allowzero", "Reshape", F("batch", 3, 4), V([-1, 12]), allowzero=1),
    op("flatten", "Flatten", F("batch", 3, 2, 2), axis=1, batch=3),
    op("transpose", "Transpose", F(2, 3, 4, 5), perm=[0, 2, 3, 1]),
    op("transpose-default", "Transpose", F(2, 3, 4)),
    op("squeeze", "Squeeze", F(2, 1, 3, 1), V([1, -1]), opset=13),
    op("squeeze-all", "Squeeze", F(2, 1, 3, 1)),
    op("unsqueeze", "Unsqueeze", F(2, 3), V([0, -1])),
    op("concat", "Concat", F(2, 3, 4), F(2, 2, 4), C(2, 1, 4), axis=1),
    op("concat-batch-axis", "Concat", F("batch", 3), F("batch", 3), axis=0, opset=13),
    op("concat-batch-axis-18", "Concat", F("batch", 3), F(1, 3), axis=-2, opset=18),
    op("split-13", "Split", F(2, 6), V([2, 3, 1]), axis=1, outputs=3, out=1, opset=13),
    op("split-num-outputs", "Split", F(6, 2), axis=0, num_outputs=3, outputs=3, out=2,
       opset=18),
    op("slice", "Slice", F(6, 7, 5), V([1, -2]), V([5, 0]), V([0, 1]), V([1, -2])),
    op("slice-step2", "Slice", F(2, 9), V([1]), V([1 << 40]), V([-1]), V([2]), opset=13),
    op("slice-default-axes", "Slice", F(5, 6), V([1, 2]), V([4, -1])),
    op("slice-batch", "Slice", F("batch", 6), V([-5]), V([-1]), V([1]), V([1]), batch=3),
    op("slice-symbolic-axis", "Slice", F("batch", 3), V([1]), V([1 << 40]), V([0]), batch=4),
    # starts/ends computed at run time (a detector slicing its concatenated levels)
    Row("slice-runtime-bounds", [
        node("Shape", ["x"], ["shape"]), node("Gather", ["shape", "axes"], ["dims"], axis=0),
        node("Sub", ["dims", "back"], ["starts"]), node("Sub", ["dims", "trim"], ["ends"]),
        node("Slice", ["x", "starts", "ends", "axes"], ["y"]),
    ], {"x": F("batch", 7, 5), "axes": V([1, -1]), "back": V([5, 9]), "trim": V([1, 2])},
        batch=3),
    Row("slice-runtime-starts-13", [
        node("Shape", ["x"], ["shape"]), node("Slice", ["shape", "zero", "one"], ["n"]),
        node("Sub", ["n", "three"], ["starts"]),
        node("Slice", ["x", "starts", "big"], ["y"]),
    ], {"x": F(6, 2), "zero": V([0]), "one": V([1]), "three": V([3]), "big": V([1 << 62])},
        opset=13),
    op("pad", "Pad", F(2, 3, 4), V([0, 1, 2, 0, 0, 1]), V(0.5, f32)),
    op("pad-negative", "Pad", F(2, 3, 4), V([0, -1, 1, 0, 1, -1]), opset=13),
    op("pad-axes", "Pad", F("batch", 3, 4), V([1, 2, 0, 1]), V(0, f32), V([1, 2]), opset=18),
    op("gather-repeated", "Gather", F(5, 4), V([[0, 2], [2, 4]]), axis=0),
    op("gather-negative", "Gather", F(2, 5, 3), V([-1, 0, -1]), axis=1),
    op("gather-scalar-batch", "Gather", F("batch", 3, 4), V(1), axis=1, opset=16),
    op("gather-scalar-symbolic-axis", "Gather", F("batch", 3, 2), V(-1), axis=0, batch=3),
    # ---- indexing (indices are constants: the selection is held)
    op("gather-elements", "GatherElements", F(3, 4), V([[0, 2, 2, -1], [1, 0, 0, 3]]), axis=1,
       opset=16),
    op("gather-elements-axis0", "GatherElements", F("batch", 3), V([[2, 0, 1], [2, 2, 0]]),
       axis=0, batch=3, opset=18),
    op("gather-nd", "GatherND", F(4, 3, 2), V([[0, 1], [2, 2], [0, 1]]), opset=16),
    op("gather-nd-negative", "GatherND", F(3, 4), V([[[-1], [0]], [[-1], [1]]])),
    op("gather-nd-full-index", "GatherND", F(3, 4), V([[0, 1], [2, 3], [0, 1]])),
    op("gather-nd-batch-dims", "GatherND", F(2, 3, 4), V([[[1], [0]], [[2], [2]]]),
       batch_dims=1),
    op("gather-nd-batch-dims-2", "GatherND", F(2, 2, 3, 2), V([[[[2, 1]], [[0, 0]]],
                                                              [[[1, 1]], [[2, 0]]]]),
       batch_dims=2),
    op("top-k", "TopK", F(3, 6, distinct=True), V([2]), outputs=2),
    op("top-k-smallest-13", "TopK", F(5, 3, distinct=True), V([3]), axis=0, largest=0,
       sorted=0, outputs=2, opset=13),
    op("scatter-elements", "ScatterElements", F(3, 4), V([[1, 0, 2, 1]]), F(1, 4), axis=0,
       opset=13),
    op("scatter-elements-add", "ScatterElements", F(3, 4), V([[1, 1, -1], [0, 3, 3]]), F(2, 3),
       axis=1, reduction="add", opset=16),
    op("scatter-nd", "ScatterND", F(4, 3), V([[1], [3]]), F(2, 3), opset=13),
    op("scatter-nd-add", "ScatterND", F(2, 3), V([[0, 1], [1, 2], [0, 1]]), F(3),
       reduction="add", opset=16),
    # ---- resampling
    op("resize-nearest-scales", "Resize", F(1, 2, 3, 4), None, V([1, 1, 2, 2], f32),
       mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
       opset=13),
    op("resize-nearest-sizes", "Resize", F(1, 2, 3, 4), None, None, V([1, 2, 5, 7]),
       mode="nearest"),
    op("resize-nearest-down-ceil", "Resize", F(2, 7, 6), None, V([1, 0.5, 0.7], f32),
       mode="nearest", nearest_mode="round_prefer_ceil"),
    op("resize-linear-align-corners", "Resize", F(1, 2, 3, 4), None, V([1, 1, 2, 2], f32),
       mode="linear", coordinate_transformation_mode="align_corners"),
    op("resize-linear-pytorch-half-pixel", "Resize", F(1, 2, 4, 3), None, None,
       V([1, 2, 7, 1]), mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    op("resize-linear-half-pixel-down", "Resize", F(1, 2, 8, 7), None, V([1, 1, 0.5, 0.6], f32),
       mode="linear", opset=16),
    op("resize-linear-antialias", "Resize", F(1, 2, 8, 7), None, V([1, 1, 0.5, 0.6], f32),
       mode="linear", antialias=1, opset=18),
    op("resize-cubic", "Resize", F(1, 2, 4, 5), None, V([1, 1, 1.5, 2], f32), mode="cubic",
       cubic_coeff_a=-0.75, exclude_outside=1),
    op("resize-nearest-outer-axes", "Resize", F(2, 3, 4), None, V([2, 1.5, 1], f32),
       mode="nearest"),
    op("resize-axes-18", "Resize", F(1, 2, 3, 4), None, V([2, 1.5], f32), mode="linear",
       axes=[-1, 2], opset=18),
    op("resize-sizes-batch", "Resize", F("batch", 2, 3, 4), None, None, V([3, 2, 6, 8]),
       mode="linear", batch=3),
    op("resize-hw-symbolic", "Resize", F(1, 2, "h", "w"), None, V([1, 1, 2, 2], f32),
       mode="linear", batch=5),
    # sizes computed at run time, as torch exports F.interpolate(x, size=...) (FPN top-down)
    Row("resize-runtime-sizes", [
        node("Shape", ["x"], ["shape"]), node("Slice", ["shape", "zero", "two"], ["nc"]),
        node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    ], {"x": F(1, 2, 3, 4), "zero": V([0]), "two": V([2]), "hw": V([6, 7])}, opset=13),
    Row("resize-runtime-sizes-symbolic", [
        node("Shape", ["x"], ["shape"]), node("Slice", ["shape", "zero", "two"], ["nc"]),
        node("Slice", ["shape", "two", "four"], ["hw"]), node("Mul", ["hw", "two"], ["hw2"]),
        node("Concat", ["nc", "hw2"], ["sizes"], axis=0),
        node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear"),
    ], {"x": F("n", 2, "h", "w"), "zero": V([0]), "two": V([2]), "four": V([4])}, batch=3),
    op("roi-align", "RoiAlign", F(2, 3, 6, 7),
       V([[0.5, 1, 9, 7], [-3, -2, 4, 14], [10, 8, 13.8, 11.9], [3, 3, 3.2, 3.1]], f32),
       V([0, 1, 1, 0]), output_height=2, output_width=3, sampling_ratio=2, spatial_scale=0.5,
       coordinate_transformation_mode="output_half_pixel", opset=16),
    op("roi-align-half-pixel", "RoiAlign", F(1, 2, 5, 6),
       V([[0.2, 0.4, 4.5, 3.3], [1, 2, 7, 6]], f32), V([0, 0]), output_height=3,
       output_width=2, sampling_ratio=3),
    op("roi-align-no-box", "RoiAlign", F(1, 2, 4, 4), V(np.zeros((0, 4), f32), f32),
       V(np.zeros(0, np.int64)), output_height=2, output_width=2, sampling_ratio=2),
    op("roi-align-13", "RoiAlign", F("batch", 2, 5, 5), V([[1, 1, 3, 4], [0, 2, 4.5, 5]], f32),
       V([1, 0]), output_height=2, output_width=2, sampling_ratio=1, opset=13),
    # ---- reductions
    op("reduce-mean-13", "ReduceMean", F(2, 3, 4, 5), axes=[2, 3], opset=13),
    op("reduce-mean-18", "ReduceMean", F("batch", 3, 4), V([-1]), keepdims=0, opset=18),
    op("reduce-mean-all", "ReduceMean", F(2, 3, 4), keepdims=0),
    op("reduce-sum", "ReduceSum", F(2, 3, 4), V([1]), keepdims=0, opset=13),
    op("reduce-sum-noop", "ReduceSum", F(2, 3), noop_with_empty_axes=1),
    op("reduce-max-13", "ReduceMax", F(2, 5, 3, distinct=True), axes=[1], opset=13),
    op("reduce-max-18", "ReduceMax", F(2, 5, 3, distinct=True), V([0, 2]), keepdims=0,
       opset=18),
    op("reduce-min", "ReduceMin", F(2, 5, 3, distinct=True), V([-1])),
    op("global-average-pool", "GlobalAveragePool", F("batch", 3, 5, 4), batch=3),
    op("global-max-pool", "GlobalMaxPool", F("batch", 3, 4, 5, distinct=True)),
    # ---- pooling
    op("max-pool", "MaxPool", F(1, 2, 7, 7, distinct=True), kernel_shape=[3, 3],
       strides=[2, 2], pads=[1, 1, 1, 1]),
    op("max-pool-ceil", "MaxPool", F("batch", 2, 8, 8, distinct=True), kernel_shape=[3, 3],
       strides=[2, 2], ceil_mode=1),
    op("max-pool-dilated-16", "MaxPool", F(1, 2, 9, 8, distinct=True), kernel_shape=[2, 3],
       dilations=[2, 1], pads=[1, 0, 0, 1], opset=16),
    op("max-pool-indices", "MaxPool", F(2, 2, 6, 6, distinct=True), kernel_shape=[2, 2],
       strides=[2, 2], outputs=2),
    op("max-pool-same", "MaxPool", F(1, 2, 8, 8, distinct=True), kernel_shape=[3, 3],
       strides=[2, 2], auto_pad="SAME_UPPER"),
    op("max-pool-1d", "MaxPool", F(2, 3, 9, distinct=True), kernel_shape=[3], strides=[2]),
    op("avg-pool", "AveragePool", F("batch", 3, 6, 6), kernel_shape=[2, 2], strides=[2, 2]),
    op("avg-pool-pad-exclude", "AveragePool", F(1, 2, 7, 7), kernel_shape=[3, 3],
       strides=[2, 2], pads=[1, 1, 1, 1]),
    op("avg-pool-pad-include", "AveragePool", F(1, 2, 7, 6), kernel_shape=[3, 3],
       strides=[2, 2], pads=[1, 0, 1, 2], count_include_pad=1, opset=13),
    op("avg-pool-ceil", "AveragePool", F(1, 2, 8, 8), kernel_shape=[3, 3], strides=[2, 2],
       ceil_mode=1),
    op("avg-pool-ceil-include", "AveragePool", F(1, 2, 8, 7), kernel_shape=[3, 3],
       strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
    op("avg-pool-same", "AveragePool", F(1, 2, 8, 7), kernel_shape=[3, 3], strides=[2, 2],
       auto_pad="SAME_UPPER"),
    op("avg-pool-dilated", "AveragePool", F(1, 2, 8, 8), kernel_shape=[2, 2],
       dilations=[2, 2], strides=[1, 2]),
    op("avg-pool-1x1", "AveragePool", F(1, 2, 3, 3), kernel_shape=[1, 1]),
    # ---- convolution (gradient w.r.t. X; weights and bias are constants)
    op("conv", "Conv", F(1, 3, 6, 6), C(4, 3, 3, 3), C(4), pads=[1, 1, 1, 1]),
    op("conv-s2-odd", "Conv", F(1, 3, 7, 7), C(4, 3, 3, 3), strides=[2, 2],
       pads=[1, 1, 1, 1]),
    op("conv-s2-even", "Conv", F(1, 2, 8, 8), C(3, 2, 3, 3), strides=[2, 2],
       pads=[1, 1, 1, 1], opset=13),
    op("conv-dilated", "Conv", F(1, 2, 9, 9), C(3, 2, 3, 3), dilations=[2, 2], pads=[2, 2, 2, 2]),
    op("conv-groups", "Conv", F(1, 4, 6, 6), C(6, 2, 3, 3), group=2),
    op("conv-depthwise-batch", "Conv", F("batch", 4, 5, 5), C(4, 1, 3, 3), group=4,
       pads=[1, 1, 1, 1], batch=3),
    op("conv-asym-pads", "Conv", F(1, 2, 7, 6), C(3, 2, 3, 2), strides=[2, 2],
       pads=[0, 1, 2, 1]),
    op("conv-same-upper", "Conv", F(1, 2, 8, 7), C(3, 2, 3, 3), strides=[2, 2],
       auto_pad="SAME_UPPER"),
    op("conv-same-lower", "Conv", F(1, 2, 7, 8), C(3, 2, 4, 4), strides=[2, 2],
       auto_pad="SAME_LOWER"),
    op("conv-valid-s3", "Conv", F(1, 2, 8, 8), C(3, 2, 2, 2), strides=[3, 3], auto_pad="VALID"),
    op("conv-1x1-s2", "Conv", F(1, 3, 7, 7), C(2, 3, 1, 1), strides=[2, 2]),
    op("conv-1d", "Conv", F(2, 2, 9), C(3, 2, 3), strides=[2]),
    op("conv-k7-s2-p3", "Conv", F(1, 2, 11, 11), C(2, 2, 7, 7), strides=[2, 2],
       pads=[3, 3, 3, 3]),
    # stride 1: a Conv with the flipped kernel (pads span - 1 - pad), ConvTranspose otherwise
    op("conv-s1-asym-pads", "Conv", F(1, 2, 7, 6), C(3, 2, 3, 2), pads=[0, 1, 2, 1]),
    op("conv-s1-same-upper-even", "Conv", F(1, 2, 6, 7), C(3, 2, 4, 2),
       auto_pad="SAME_UPPER"),
    op("conv-s1-same-lower-even", "Conv", F(1, 2, 7, 6), C(3, 2, 4, 4),
       auto_pad="SAME_LOWER"),
    op("conv-s1-groups-dilated", "Conv", F(2, 6, 9, 8), C(9, 2, 3, 3), group=3,
       dilations=[2, 1], pads=[2, 1, 2, 1]),
    op("conv-s1-1d", "Conv", F(2, 2, 9), C(3, 2, 3), pads=[1, 1]),
    op("conv-s1-3d", "Conv", F(1, 2, 4, 5, 5), C(3, 2, 3, 3, 3), pads=[1, 1, 1, 1, 1, 1]),
    op("conv-s1-pad-wider-than-window", "Conv", F(1, 2, 5, 5), C(3, 2, 3, 3),
       pads=[3, 1, 1, 3]),
    op("conv-s1-hw-symbolic-same-lower", "Conv", F(1, 2, "h", "w"), C(3, 2, 4, 3),
       auto_pad="SAME_LOWER", batch=7),
    # symbolic height and width (a model explained at any input size): sizes at run time
    op("conv-hw-symbolic", "Conv", F(1, 2, "h", "w"), C(3, 2, 3, 3), strides=[2, 2],
       pads=[1, 1, 1, 1], batch=7),
    op("conv-hw-symbolic-same-upper", "Conv", F(1, 2, "h", "w"), C(3, 2, 3, 3), strides=[2, 2],
       auto_pad="SAME_UPPER", batch=8),
    op("conv-hw-symbolic-same-lower", "Conv", F(1, 2, "h", "w"), C(3, 2, 4, 4), strides=[2, 2],
       auto_pad="SAME_LOWER", batch=7),
    op("conv-hw-symbolic-valid-s3", "Conv", F(1, 2, "h", "w"), C(3, 2, 2, 2), strides=[3, 3],
       auto_pad="VALID", batch=8),
    op("conv-hw-symbolic-depthwise-dilated", "Conv", F("b", 4, "h", "w"), C(4, 1, 3, 3),
       group=4, dilations=[2, 2], pads=[2, 2, 2, 2], batch=6),
    op("avg-pool-hw-symbolic", "AveragePool", F(1, 2, "h", "w"), kernel_shape=[3, 3],
       strides=[2, 2], pads=[1, 1, 1, 1], batch=7),
    op("avg-pool-hw-symbolic-include", "AveragePool", F(1, 2, "h", "w"), kernel_shape=[3, 3],
       strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1, batch=7),
    op("avg-pool-hw-symbolic-same", "AveragePool", F(1, 2, "h", "w"), kernel_shape=[3, 3],
       strides=[2, 2], auto_pad="SAME_UPPER", batch=8),
    # ---- transposed convolution (gradient w.r.t. X: a Conv)
    op("conv-transpose", "ConvTranspose", F(1, 3, 4, 4), C(3, 2, 3, 3), C(2), strides=[2, 2],
       pads=[1, 1, 1, 1], output_padding=[1, 1]),
    op("conv-transpose-groups-dilated", "ConvTranspose", F(1, 4, 5, 4), C(4, 3, 3, 2),
       group=2, dilations=[2, 1], pads=[1, 0, 2, 1], opset=13),
    op("conv-transpose-output-padding-over-pad", "ConvTranspose", F(1, 2, 3, 3),
       C(2, 2, 2, 2), strides=[3, 2], pads=[1, 1, 0, 0], output_padding=[2, 1]),
    op("conv-transpose-1d-valid", "ConvTranspose", F(2, 2, 5), C(2, 3, 4), strides=[2],
       auto_pad="VALID"),
    op("conv-transpose-hw-symbolic", "ConvTranspose", F("b", 2, "h", "w"), C(2, 4, 4, 4),
       strides=[2, 2], pads=[1, 1, 1, 1], batch=3),
    # ---- normalization
    op("batch-norm", "BatchNormalization", F("batch", 3, 4, 4), C(3), C(3), C(3),
       C(3, low=0.5, high=2.0), epsilon=1e-3, batch=3, opset=13),
    op("batch-norm-training-mode-0", "BatchNormalization", F(2, 3, 5), C(3), C(3), C(3),
       C(3, low=0.5, high=2.0), training_mode=0, opset=15),
    op("layer-norm", "LayerNormalization", F(2, 3, 8), C(8), C(8), epsilon=1e-5, opset=17),
    op("layer-norm-axis1", "LayerNormalization", F("batch", 3, 4), C(3, 4), None, axis=1,
       outputs=3),
    op("instance-norm", "InstanceNormalization", F(2, 3, 4, 5), C(3), C(3), epsilon=1e-3),
    op("instance-norm-1d-batch", "InstanceNormalization", F("batch", 2, 6), C(2), C(2),
       batch=3, opset=13),
    # ---- linear algebra
    op("gemm", "Gemm", F(2, 3), F(4, 3), C(4), transB=1),
    op("gemm-trans-a", "Gemm", F(3, 2), F(3, 4), F(1, 4), alpha=0.5, beta=2.0, transA=1),
    op("gemm-trans-ab", "Gemm", F(3, 2), F(4, 3), F(2, 1), transA=1, transB=1, beta=0.5),
    op("matmul", "MatMul", F(2, 3, 4), F(4, 5)),
    op("matmul-bcast", "MatMul", F(2, 1, 3, 4), F(3, 4, 2)),
    op("matmul-vec-left", "MatMul", F(4), F(2, 4, 3)),
    op("matmul-vec-right", "MatMul", F(2, 3, 4), F(4)),
    op("matmul-batch", "MatMul", F("batch", 5, 4), C(4, 3), batch=3),
    # ---- recurrent (w.r.t. X and the initial states; weights are constants). LSTM: I=3, H=4
    op("lstm", "LSTM", F(5, 2, 3), C(1, 16, 3), C(1, 16, 4), C(1, 32), hidden_size=4,
       outputs=3),
    # gradients arrive on Y, Y_h and Y_c at once
    Row("lstm-bidirectional-y-y-h-y-c", [
        node("LSTM", ["x", "w", "r", "b"], ["Y", "Y_h", "Y_c"], direction="bidirectional",
             hidden_size=4),
        node("Mul", ["Y", "Y_h"], ["m"]), node("Add", ["m", "Y_c"], ["y"]),
    ], {"x": F(4, 2, 3), "w": C(2, 16, 3), "r": C(2, 16, 4), "b": C(2, 32)}),
    op("lstm-reverse-initial-states-y-c", "LSTM", F(4, 2, 3), C(1, 16, 3), C(1, 16, 4),
       C(1, 32), None, F(1, 2, 4), F(1, 2, 4), direction="reverse", hidden_size=4, outputs=3,
       out=2),
    _recurrent_layout1("lstm-layout1-y-h", "LSTM", out=1),
    _recurrent_layout1("lstm-layout1-y-reverse", "LSTM", out=0, direction="reverse"),
    op("lstm-sequence-lens-full", "LSTM", F(5, 2, 3), C(1, 16, 3), C(1, 16, 4), C(1, 32),
       V([5, 5], np.int32), hidden_size=4),
    # symbolic sequence length (and batch): the backward's Scan loops never need T at export
    op("lstm-sequence-symbolic", "LSTM", F("t", "n", 3), C(2, 16, 3), C(2, 16, 4), C(2, 32),
       direction="bidirectional", hidden_size=4, batch=3),
    op("gru", "GRU", F(5, 2, 3), C(1, 12, 3), C(1, 12, 4), C(1, 24), hidden_size=4),
    Row("gru-bidirectional-y-y-h", [
        node("GRU", ["x", "w", "r", "b"], ["Y", "Y_h"], direction="bidirectional",
             hidden_size=4),
        node("Mul", ["Y", "Y_h"], ["y"]),
    ], {"x": F(4, 2, 3), "w": C(2, 12, 3), "r": C(2, 12, 4), "b": C(2, 24)}),
    op("gru-linear-before-reset", "GRU", F(5, 2, 3), C(1, 12, 3), C(1, 12, 4), C(1, 24), None,
       F(1, 2, 4), direction="reverse", linear_before_reset=1, hidden_size=4, outputs=2, out=1),
    op("gru-sequence-symbolic-no-bias", "GRU", F("t", 2, 3), C(2, 12, 3), C(2, 12, 4),
       direction="bidirectional", linear_before_reset=1, hidden_size=4, batch=6),
    _recurrent_layout1("gru-layout1-y", "GRU", out=0, linear_before_reset=1),
    # ---- tiny graphs
    Row("split-both-used", [node("Split", ["x"], ["a", "b"], axis=0, num_outputs=2),
                            node("Mul", ["a", "b"], ["y"])], {"x": F(4, 3)}, opset=18),
    Row("silu", [node("Sigmoid", ["x"], ["s"]), node("Mul", ["x", "s"], ["y"])],
        {"x": F(2, 3, 4, low=-3, high=3)}),
    # a detector's post-processing: threshold (NonZero), per-class top-k, NMS selection; the
    # integer producers are off the float path and need no rule
    Row("detector-post-processing", [
        node("Sigmoid", ["x"], ["p"]), node("Reshape", ["p", "flat"], ["s"]),
        node("Greater", ["s", "thresh"], ["above"]), node("NonZero", ["above"], ["nz"]),
        node("Transpose", ["nz"], ["where"], perm=[1, 0]),
        node("GatherND", ["s", "where"], ["kept"]), node("TopK", ["kept", "k"], ["top", "at"]),
        node("Gather", ["where", "at"], ["at_pos"], axis=0),
        node("Squeeze", ["at_pos", "one"], ["pos"]),
        node("Gather", ["boxes", "pos"], ["b"], axis=0),
        node("Unsqueeze", ["b", "zero"], ["b3"]),
        node("Reshape", ["top", "score_shape"], ["s3"]),
        node("NonMaxSuppression", ["b3", "s3", "max_out", "iou"], ["sel"]),
        node("Gather", ["sel", "two"], ["keep"], axis=1),
        node("ArgMax", ["x"], ["best"], axis=1, keepdims=0),
        node("Gather", ["top", "keep"], ["y0"], axis=0),
        node("Gather", ["x", "best"], ["y1"], axis=0),
        node("ReduceSum", ["y1"], ["y1s"], keepdims=0),
        node("Mul", ["y0", "y1s"], ["y"]),
    ], {"x": F(3, 5, low=-2, high=2, distinct=True, avoid=(0.0,)), "flat": V([-1]),
        "thresh": V(0.5, f32), "k": V([5]), "one": V([1]), "zero": V([0]),
        "boxes": V(np.array([[0, 0, 4, 4], [1, 1, 5, 5], [0, 0, 4.2, 4.1], [6, 6, 9, 9],
                             [2, 7, 4, 9], [0, 0, 1, 1], [3, 3, 8, 8], [5, 0, 9, 3],
                             [1, 6, 3, 9], [7, 1, 9, 4], [0, 5, 2, 8], [4, 4, 6, 6],
                             [8, 8, 9, 9], [2, 2, 3, 3], [6, 0, 8, 2]], f32), f32),
        "score_shape": V([1, 1, -1]), "max_out": V([3]), "iou": V(np.array([0.5], f32), f32),
        "two": V(2)}, opset=16),
    # RoiAlign holds its boxes: the Floor on their path (no rule) is off the gradient path
    Row("roi-align-held-boxes", [
        node("ReduceMean", ["x"], ["m"], keepdims=0),
        node("Mul", ["m", "zero"], ["m0"]), node("Add", ["boxes", "m0"], ["shifted"]),
        node("Floor", ["shifted"], ["rois"]),
        node("RoiAlign", ["x", "rois", "batch_indices"], ["y"], output_height=2,
             output_width=2, sampling_ratio=2),
    ], {"x": F(1, 2, 6, 6), "zero": V(0.0, f32),
        "boxes": V(np.array([[0, 1, 4, 5], [2, 2, 6, 5]], f32), f32),
        "batch_indices": V([0, 0])}, opset=16),
    # ---- quantization: straight-through estimator, checked against a smooth surrogate
    _fake_quant("quantize-dequantize-uint8", F(2, 3, 4, low=-2, high=2, avoid=(-1.285, 1.275)),
                scale=0.01, zero_point=np.uint8(128)),
    _fake_quant("quantize-dequantize-int8-per-axis",
                F("batch", 3, 4, 4, low=-1, high=1, avoid=(-0.645, 0.635, -0.3225, 0.3175)),
                scale=np.array([0.005, 0.0025, 0.01], f32),
                zero_point=np.zeros(3, np.int8), opset=13),
    _dynamic_quant("dynamic-quantize-conv-integer", F("batch", 3, 6, 6), "ConvInteger",
                   np.random.default_rng(3).integers(0, 255, (4, 3, 3, 3)).astype(np.uint8),
                   np.uint8(128), np.float32(0.01), kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    _dynamic_quant("dynamic-quantize-conv-integer-strided-int8", F(2, 3, 7, 7), "ConvInteger",
                   np.random.default_rng(4).integers(-127, 127, (4, 3, 3, 3)).astype(np.int8),
                   np.int8(3), np.float32(0.02), kernel_shape=[3, 3], strides=[2, 2]),
    _dynamic_quant("dynamic-quantize-matmul-integer-per-column", F("batch", 5), "MatMulInteger",
                   np.random.default_rng(5).integers(0, 255, (5, 3)).astype(np.uint8),
                   np.array([120, 128, 131], np.uint8), np.float32(0.005)),
]


# --------------------------------------------------------------------------- harness


def _model(row: Row) -> onnx.ModelProto:
    inputs, inits = [], []
    for name, spec in row.inputs.items():
        if spec.kind == "diff":
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, spec.shape))
        else:
            inits.append(numpy_helper.from_array(_value(row, name, spec), name))
    graph = helper.make_graph(
        row.nodes, row.id, inputs, [helper.make_value_info(row.output, onnx.TypeProto())], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", row.opset)])
    model.ir_version = 10
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])  # typed, as exporters write it
    return model


def _value(row: Row, name: str, spec: Spec) -> np.ndarray:
    if spec.kind == "value":
        return spec.value
    rng = np.random.default_rng(zlib.crc32(f"{row.id}/{name}".encode()))
    shape = tuple(row.batch if isinstance(d, str) else d for d in spec.shape)
    if spec.distinct:
        n = int(np.prod(shape))
        x = np.linspace(spec.low, spec.high, n)[rng.permutation(n)].reshape(shape)
    else:
        x = rng.uniform(spec.low, spec.high, shape)
    for point in spec.avoid:
        near = np.abs(x - point) < 0.05
        x = np.where(near, point + np.where(x >= point, 0.05, -0.05) + 0.1 * (x - point), x)
    return np.asarray(x, dtype=np.float32)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _check_row(row: Row) -> None:
    model = _model(row)
    feeds = {n: _value(row, n, s) for n, s in row.inputs.items() if s.kind == "diff"}
    forward = _session(_model(row.surrogate) if row.surrogate else model)
    (y,) = forward.run([row.output], feeds)
    seed = np.random.default_rng(zlib.crc32(row.id.encode())).standard_normal(y.shape)
    seed = seed.astype(y.dtype)

    def objective(name: str, value: np.ndarray) -> float:
        (out,) = forward.run([row.output], {**feeds, name: value})
        return float(np.sum(seed.astype(np.float64) * out.astype(np.float64)))

    for wrt in feeds:
        grad_model = build_gradient_graph(model, wrt, row.output)
        onnx.checker.check_model(grad_model, full_check=True)
        if row.gradient_only:
            prune(grad_model.graph, ["gradient"])
        (grad,) = _session(grad_model).run(["gradient"], {**feeds, "seed": seed})
        x = feeds[wrt]
        assert grad.shape == x.shape and grad.dtype == x.dtype, (wrt, grad.shape, x.shape)
        if x.size <= 400:  # element by element
            directions = np.eye(x.size, dtype=np.float64).reshape(x.size, *x.shape)
        else:
            rng = np.random.default_rng(1)
            directions = rng.standard_normal((8, *x.shape))
        fd = np.array([
            (objective(wrt, np.asarray(x + row.eps * d, np.float32))
             - objective(wrt, np.asarray(x - row.eps * d, np.float32))) / (2 * row.eps)
            for d in directions
        ])
        analytic = directions.reshape(len(directions), -1) @ grad.reshape(-1).astype(np.float64)
        scale = max(np.abs(fd).max(), 1e-3)
        np.testing.assert_allclose(
            analytic, fd, rtol=row.rtol, atol=row.rtol * scale, err_msg=f"d/d{wrt}"
        )


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_rule_matches_finite_differences(row: Row) -> None:
    _check_row(row)


def test_every_rule_has_a_row() -> None:
    covered = set().union(*(r.ops for r in ROWS))
    assert set(RULES) - covered == set()


def test_row_ids_are_unique() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))
