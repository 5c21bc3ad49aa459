"""Shape recovery: ranks that onnx.shape_inference loses after tf2onnx-style Flatten chains."""

from __future__ import annotations

import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from explainer import check_gradients
from exporters import export_onnx
from exporters import shapes as shapes_module
from exporters.graph import infer_shapes
from exporters.shapes import missing_shapes, recover_shapes


def _tf2onnx_style_cnn(seed: int = 0) -> onnx.ModelProto:
    """NHWC input -> Conv (NCHW, transposed) -> Relu -> Flatten as tf2onnx writes it
    (Shape -> Cast -> Slice -> Cast -> Concat -> Reshape) -> MatMul -> Add -> Softmax."""
    rng = np.random.default_rng(seed)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [
        init("w", rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)),
        init("b", rng.normal(0, 0.1, (4,)).astype(np.float32)),
        init("dense", rng.normal(0, 0.3, (4 * 4 * 4, 5)).astype(np.float32)),
        init("bias", rng.normal(0, 0.1, (5,)).astype(np.float32)),
        init("start", np.array([0], np.int64)), init("end", np.array([1], np.int64)),
        init("minus_one", np.array([-1], np.int64)),
    ]
    nodes = [
        helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["x_nchw", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Transpose", ["relu"], ["features"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Shape", ["features"], ["shape"], name="shape"),
        helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT, name="cast_f"),
        helper.make_node("Slice", ["shape_f", "start", "end"], ["batch_f"], name="slice"),
        helper.make_node("Cast", ["batch_f"], ["batch"], to=TensorProto.INT64, name="cast_i"),
        helper.make_node("Concat", ["batch", "minus_one"], ["target_shape"], axis=0,
                         name="concat"),
        helper.make_node("Reshape", ["features", "target_shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "dense"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "bias"], ["logits"], name="bias_add"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "tf2onnx_style",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["unk__1", 4, 4, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["unk__1", 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _shape(model: onnx.ModelProto, name: str):
    for info in model.graph.value_info:
        if info.name == name:
            return [d.dim_value or d.dim_param or None for d in info.type.tensor_type.shape.dim] \
                if info.type.tensor_type.HasField("shape") else None
    return None


def test_onnx_inference_loses_the_rank() -> None:
    inferred = infer_shapes(_tf2onnx_style_cnn())
    assert {"flat", "mm", "logits"} <= set(missing_shapes(inferred))


def test_symbolic_inference_recovers_ranks_and_keeps_the_batch_symbolic() -> None:
    recovered = recover_shapes(infer_shapes(_tf2onnx_style_cnn()))
    assert _shape(recovered, "flat") == ["unk__1", 64]
    assert _shape(recovered, "logits") == ["unk__1", 5]
    assert missing_shapes(recovered) == []
    # kept by later onnx shape inference
    assert _shape(infer_shapes(recovered), "logits") == ["unk__1", 5]


def test_probe_run_recovers_what_symbolic_inference_does_not(monkeypatch) -> None:
    monkeypatch.setattr(shapes_module, "_symbolic", lambda model: ({}, {}))
    model = infer_shapes(_tf2onnx_style_cnn())
    for tensor in model.graph.initializer:  # stripped weights, as export_onnx analyses them
        if tensor.name == "dense":
            tensor.ClearField("raw_data")
    recovered = recover_shapes(model)
    assert _shape(recovered, "flat") == ["unk__1", 64]
    assert _shape(recovered, "logits") == ["unk__1", 5]
    assert recover_shapes(model, probe=False) is model


def test_graphs_with_data_dependent_sizes_skip_symbolic_inference(monkeypatch) -> None:
    """A NonZero (as in a detector's box selection) sends shape recovery to the probe run:
    symbolic inference can spend minutes in sympy on such graphs."""
    model = _tf2onnx_style_cnn()
    model.graph.node.append(helper.make_node("NonZero", ["relu"], ["kept"], name="select"))
    model.graph.output.append(helper.make_tensor_value_info("kept", TensorProto.INT64, None))
    calls = []
    fake = types.ModuleType("onnxruntime.tools.symbolic_shape_infer")  # needs no sympy

    class SymbolicShapeInference:
        @staticmethod
        def infer_shapes(*args, **kwargs):
            calls.append(1)

    fake.SymbolicShapeInference = SymbolicShapeInference
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    recovered = recover_shapes(infer_shapes(model))
    assert calls == [], "symbolic inference ran on a graph with NonZero"
    assert _shape(recovered, "flat") == ["unk__1", 64]
    assert _shape(recovered, "logits") == ["unk__1", 5]


def test_nothing_missing_returns_the_model_itself(tiny_cnn) -> None:
    inferred = infer_shapes(tiny_cnn)
    assert recover_shapes(inferred) is inferred


@pytest.mark.parametrize("batch", [1, 3])
def test_softmax_head_after_tf2onnx_flatten_is_explained(batch: int) -> None:
    bundle = export_onnx(_tf2onnx_style_cnn())
    assert bundle.manifest["target"]["tensor"] == "features"
    assert bundle.manifest["head"]["logits"] == "logits"
    x = np.random.default_rng(1).normal(size=(batch, 4, 4, 3)).astype(np.float32)
    assert check_gradients(bundle, x).passed


def test_shape_inference_leaves_large_weights_out_and_infers_the_same(monkeypatch) -> None:
    """A model with weights over the skeleton limit is inferred on their types alone: the
    same value infos and outputs as the inference over the whole model (data propagation
    through the small shape constants included), the weights and the given model untouched."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 3, 3, 3)).astype(np.float32)  # 1728: stays in
    head = rng.normal(size=(64 * 8 * 8, 10)).astype(np.float32)  # 40960: left out
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "minus_one"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["r", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(head, "head"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    given = model.SerializeToString()
    real = onnx.shape_inference.infer_shapes
    whole = real(model, check_type=False, data_prop=True)
    sizes = []
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes",
                        lambda m, **kw: sizes.append(m.ByteSize()) or real(m, **kw))
    got = infer_shapes(model)
    assert sizes and max(sizes) < head.nbytes  # the head's weights were not serialized
    assert model.SerializeToString() == given
    assert {v.name: v for v in got.graph.value_info} == {v.name: v for v in whole.graph.value_info}
    assert list(got.graph.output) == list(whole.graph.output)
    assert [d.dim_value for d in got.graph.output[0].type.tensor_type.shape.dim][1:] == [10]
    assert list(got.graph.initializer) == list(model.graph.initializer)
