"""The CAM part of the explanation graph (:mod:`exporters.compose`): the chosen method's
CAMs from the activation and its gradient (an If chain over the methods' emitters, each a
:class:`~explainer.methods.MethodSpec`'s ``emit``), then the heatmaps (bilinear upsampling as
two products with interpolation matrices built in the graph, per-map min-max)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from explainer.methods import METHODS, MethodSpec

from .builder import Builder

__all__ = ["CAM_METHODS", "cams", "heatmaps"]

#: Methods the explanation graph can express (those closed-form in the activation and its
#: gradient), in the order of the graph's ``method`` input: name -> spec, every spec of
#: :data:`explainer.methods.METHODS` with an ONNX emitter (``emit``), which sits beside its
#: numpy twin in the method's module.
CAM_METHODS: dict[str, MethodSpec] = {
    name: spec for name, spec in METHODS.items() if spec.emit is not None
}


def _method_cams(b: Builder, method: MethodSpec, activation: str, gradient: str,
                 out: str) -> None:
    """Raw CAMs [B, K, h, w] = ReLU(sum_c w_c A^c) from NCHW A and gradient [B, K, C, h, w]."""
    weights = method.emit(b, activation, gradient)
    if method.per_position:
        product = b.op("Mul", weights, b.op("Unsqueeze", activation, b.const([1])))
        b.op("Relu", b.reduce("ReduceSum", product, [2], keepdims=0), out=out)
        return
    flat = b.op("MatMul", weights, b.op("Reshape", activation, b.const([0, 0, -1])))
    shape = b.op("Concat", b.dims(b.op("Shape", flat), 0, 2),
                 b.dims(b.op("Shape", activation), 2, 4), axis=0)
    b.op("Relu", b.op("Reshape", flat, shape), out=out)


def _branch(b: Builder, name: str, emit: Callable[[str], None]) -> onnx.GraphProto:
    """A subgraph (an If branch) whose one output ``emit(output name)`` computes; the
    branch reads the activation, the gradient and its constants from the outer graph."""
    outer, b.nodes = b.nodes, []
    out = b._name("cams")
    emit(out)
    graph = helper.make_graph(b.nodes, b._name(name), [],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
    b.nodes = outer
    return graph


def cams(b: Builder, methods: list[str], activation: str, gradient: str, choice: str,
         out: str) -> str:
    """Raw CAMs [B, K, h, w] (``out``) of the method the int64 [1] ``choice`` picks (its
    index in ``methods``): If(choice == 0, first, If(choice == 1, second, ...)), so a run
    computes only the chosen method's nodes."""

    def select(i: int, out: str) -> None:
        if i == len(methods) - 1:
            _method_cams(b, CAM_METHODS[methods[i]], activation, gradient, out)
            return
        chosen = b.op("Equal", choice, b.const([i]))
        then = _branch(b, methods[i], lambda o: _method_cams(
            b, CAM_METHODS[methods[i]], activation, gradient, o))
        b.op("If", chosen, out=out, then_branch=then,
             else_branch=_branch(b, "else", lambda o: select(i + 1, o)))

    select(0, out)
    return out


def _interpolation(b: Builder, src: str, dst: str) -> tuple[str, str]:
    """The [dst, src] matrix of 1-D linear interpolation with half-pixel centres for sizes
    ``src`` -> ``dst`` (int64 [1] tensors): row i holds max(0, 1 - |p_i - j|) over source
    positions j, p_i = (i + 0.5) src / dst - 0.5 clamped to [0, src - 1] (the two weights
    that ``Resize`` linear gives output i; :func:`explainer.maps.interpolation_matrix`);
    and the outputs that end its runs (int64 [n]): the first and last of each run of outputs
    with the same lower tap and clamping, within which an output is linear in its index
    (:func:`explainer.maps.upsampled_range` reads a map's range off them)."""
    def positions(size: str) -> str:  # 0, 1, ..., size - 1 as floats
        scalar = b.op("Reshape", size, b.const(np.zeros(0, np.int64)))
        return b.op("Cast", b.op("Range", b.const(0), scalar, b.const(1)),
                    to=TensorProto.FLOAT)

    half, zero = b.const(0.5, np.float32), b.const(0.0, np.float32)
    src_f, dst_f = (b.op("Cast", v, to=TensorProto.FLOAT) for v in (src, dst))
    unclamped = b.op("Sub", b.op("Mul", b.op("Add", positions(dst), half),
                                 b.op("Div", src_f, dst_f)), half)
    last = b.op("Sub", src_f, b.const(1.0, np.float32))
    p = b.op("Min", b.op("Max", unclamped, zero), last)
    distance = b.op("Abs", b.op("Sub", b.op("Reshape", p, b.const([-1, 1])), positions(src)))
    matrix = b.op("Relu", b.op("Sub", b.const(1.0, np.float32), distance))
    # a run: one lower tap (Floor of p), below, inside or past the source centres
    run = b.op("Add", b.op("Mul", b.op("Floor", p), b.const(3.0, np.float32)), b.op(
        "Add", b.op("Cast", b.op("Less", unclamped, zero), to=TensorProto.FLOAT),
        b.op("Mul", b.op("Cast", b.op("Greater", unclamped, last), to=TensorProto.FLOAT),
             b.const(2.0, np.float32))))
    changes = b.op("Not", b.op("Equal", b.op("Slice", run, b.const([1]), b.const([1 << 62])),
                               b.op("Slice", run, b.const([0]), b.const([-1]))))
    edge = b.const([True], np.bool_)
    ends = b.op("Or", b.op("Concat", edge, changes, axis=0),
                b.op("Concat", changes, edge, axis=0))
    return matrix, b.op("Reshape", b.op("NonZero", ends), b.const([-1]))


def heatmaps(b: Builder, cams: str, activation: str, model_input: str, input_layout: str,
             out: str) -> str:
    """``cams`` [B, K, h, w] (of the NCHW ``activation`` [B, C, h, w]) upsampled bilinearly
    (half-pixel) to the size of ``model_input`` (in ``input_layout``), then min-max scaled
    per map to [0, 1] (``out``). The upsampling is two matrix products with the
    interpolation matrices (rows @ cams @ columns^T: ``Resize``'s values, 3-4x faster on
    ONNX Runtime's CPU provider). The matrices are computed from the activation's and the
    input's sizes, not the CAMs' (an If's output): in a session specialized to an input
    size they are constants (:func:`explainer.sessions.specialize`)."""
    h = 2 if input_layout == "NCHW" else 1
    rows, row_ends = _interpolation(b, b.shape_dims(activation, 2, 3),
                                    b.shape_dims(model_input, h, h + 1))
    columns, column_ends = _interpolation(b, b.shape_dims(activation, 3, 4),
                                          b.shape_dims(model_input, h + 1, h + 2))
    # each map's range [B, K, 1, 1], read off the upsampled map at the runs' ends only
    ends = b.op("MatMul", b.op("MatMul", b.op("Gather", rows, row_ends, axis=0), cams),
                b.op("Transpose", b.op("Gather", columns, column_ends, axis=0), perm=[1, 0]))
    low = b.reduce("ReduceMin", ends, [2, 3])
    span = b.op("Sub", b.reduce("ReduceMax", ends, [2, 3]), low)
    zero, one = b.const(0.0, np.float32), b.const(1.0, np.float32)
    scale = b.op("Where", b.op("Greater", span, zero), b.op("Reciprocal", span), zero)
    # the scaling on the small maps (each row of the matrices sums to 1), so that the last
    # product writes the heatmaps; the clip takes rounding's 1e-7 off [0, 1]
    scaled = b.op("Mul", b.op("Sub", cams, low), scale)
    up = b.op("MatMul", b.op("MatMul", rows, scaled), b.op("Transpose", columns, perm=[1, 0]))
    if b.opset >= 11:
        return b.op("Clip", up, zero, one, out=out)
    return b.op("Clip", up, out=out, min=0.0, max=1.0)
