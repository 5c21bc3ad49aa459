"""A softmax over a short axis in its elementwise form (explainer.fast_softmax)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from explainer.fast_softmax import SHORT_AXIS, elementwise_softmax


def _softmax_model(shape: list[int], axis: int, opset: int):
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=axis, name="softmax")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("axis", [1, -1])
def test_a_short_axis_softmax_becomes_elementwise_with_the_same_values(opset, axis):
    """YOLOv8's distribution softmax, [N, 16, 4, A] over axis 1 (ReduceMax takes its axes as
    an attribute before opset 18, as an input from 18 on)."""
    shape = [2, 16, 4, 50] if axis == 1 else [2, 4, 50, 16]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 4
    model = _softmax_model(shape, axis, opset)
    expected = _run(model, x)
    assert elementwise_softmax(model) == 1
    assert "Softmax" not in {n.op_type for n in model.graph.node}
    assert model.graph.node[-1].output[0] == "y"
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, axis", [
    ([2, 1000], -1),  # a classifier's: one row per image
    ([2, 3, SHORT_AXIS + 1], -1),  # a long axis: the kernel is as fast
    ([2, "n", 16], 1),  # an axis of unknown length
])
def test_other_softmaxes_are_kept(shape, axis):
    model = _softmax_model(shape, axis, 18)
    assert elementwise_softmax(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Softmax"]
