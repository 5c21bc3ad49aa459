from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.graph import infer_shapes
from exporters.split import SplitError, split_model


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)


@pytest.mark.parametrize("target", ["r1", "act", "r3", "flat"])
def test_split_chains_to_the_original_outputs_exactly(tiny_cnn, target):
    model = infer_shapes(tiny_cnn)
    split = split_model(model, target)
    onnx.checker.check_model(split.features)
    onnx.checker.check_model(split.head)
    x = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)
    (expected,) = _run(model, {"input": x})
    features = _run(split.features, {"input": x})
    assert split.cut_tensors[0] == target
    (logits,) = _run(split.head, dict(zip(split.cut_tensors, features)))
    np.testing.assert_array_equal(logits, expected)
    # no node is in both halves, and every node is in one of them
    names_f = {n.name for n in split.features.graph.node}
    names_h = {n.name for n in split.head.graph.node}
    assert not names_f & names_h
    assert names_f | names_h == {n.name for n in model.graph.node}


def test_split_keeps_dynamic_batch(tiny_cnn):
    split = split_model(infer_shapes(tiny_cnn), "act")
    dim = split.head.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"


def _residual_model() -> onnx.ModelProto:
    """x -> a = Relu(x) -> b = Mul(a, 2) -> c = Add(b, a) -> logits; skip edge across a cut at b."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Constant", [], ["three"], name="const",
                         value=numpy_helper.from_array(np.array(3.0, np.float32))),
        helper.make_node("Mul", ["a", "two"], ["b"], name="mul"),
        helper.make_node("Mul", ["b", "three"], ["b3"], name="mul3"),
        helper.make_node("Add", ["b3", "a"], ["logits"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[two],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_split_adds_tensors_that_cross_the_cut_and_copies_constants():
    model = infer_shapes(_residual_model())
    split = split_model(model, "b")
    assert split.cut_tensors == ["b", "a"]
    assert "const" in {n.name for n in split.head.graph.node}
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    features = _run(split.features, {"x": x})
    (out,) = _run(split.head, dict(zip(split.cut_tensors, features)))
    np.testing.assert_array_equal(out, _run(model, {"x": x})[0])


def test_split_errors_name_the_tensor(tiny_cnn):
    with pytest.raises(SplitError, match="nope"):
        split_model(infer_shapes(tiny_cnn), "nope")
    with pytest.raises(SplitError, match="w1"):
        split_model(infer_shapes(tiny_cnn), "w1")  # an initializer: nothing downstream computed


def test_split_with_external_data(tiny_cnn, tmp_path):
    path = tmp_path / "m.onnx"
    (expected,) = _run(tiny_cnn, {"input": np.ones((1, 3, 16, 16), np.float32)})
    onnx.save_model(tiny_cnn, path, save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    loaded = onnx.load(str(path))
    split = split_model(infer_shapes(loaded), "act")
    x = np.ones((1, 3, 16, 16), np.float32)
    (out,) = _run(split.head, dict(zip(split.cut_tensors, _run(split.features, {"input": x}))))
    np.testing.assert_array_equal(out, expected)
