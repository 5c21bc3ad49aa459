"""Every method's ONNX emitter, run in ONNX Runtime, against its numpy weights.

A minimal builder implementing :class:`explainer.methods.GraphBuilder` wraps one emitter in a
graph (activation [B, C, h, w] and gradient [B, K, C, h, w] in, weights out). Torch-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from explainer.methods import METHODS, CamContext, GraphBuilder, in_graph_methods
from explainer.methods.core import weighted_sum


class MiniBuilder:
    """Just what :class:`GraphBuilder` asks for: numbered node names, initializers as
    constants, reductions with the axes as the opset wants them."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, out: str | None = None, outputs: int = 1,
           **attrs: Any) -> Any:
        names = [out or self._name(op_type)] + [self._name(op_type) for _ in range(1, outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 1) -> str:
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            return self.op(op_type, x, self.const(axes), keepdims=keepdims)
        return self.op(op_type, x, axes=axes, keepdims=keepdims)


def run_emitter(method: str, activation: np.ndarray, gradient: np.ndarray,
                opset: int) -> np.ndarray:
    """The weights ``METHODS[method].emit`` computes in ONNX Runtime."""
    emit = METHODS[method].emit
    assert emit is not None
    builder = MiniBuilder(opset)
    checked: GraphBuilder = builder  # the protocol is all an emitter may use
    weights = emit(checked, "activation", "gradient")
    builder.op("Identity", weights, out="weights")
    graph = helper.make_graph(
        builder.nodes, method,
        [helper.make_tensor_value_info("activation", TensorProto.FLOAT, ["B", "C", "h", "w"]),
         helper.make_tensor_value_info("gradient", TensorProto.FLOAT,
                                       ["B", "K", "C", "h", "w"])],
        [helper.make_tensor_value_info("weights", TensorProto.FLOAT, None)],
        initializer=builder.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"activation": activation, "gradient": gradient})
    return out


def _arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Activation [2, 4, 3, 5] (channel 1 of image 0 all zero: XGrad-CAM's 0 / 0) and gradient
    [2, 3, 4, 3, 5] (K = 3 targets, a few exact zeros)."""
    rng = np.random.default_rng(seed)
    activation = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    activation[0, 1] = 0
    gradient = (rng.normal(size=(2, 3, 4, 3, 5)) * 0.05).astype(np.float32)
    gradient[rng.random(gradient.shape) < 0.1] = 0
    return activation, gradient


def test_in_graph_methods_are_the_specs_with_an_emitter():
    names = in_graph_methods()
    assert names and names[0] == "gradcam"
    assert names == [m for m, spec in METHODS.items() if spec.emit is not None]


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("method", in_graph_methods())
def test_emitter_matches_numpy_weights(method, opset):
    spec = METHODS[method]
    assert spec.weights is not None
    activation, gradient = _arrays(seed=opset)
    out = run_emitter(method, activation, gradient, opset)
    batch, k = gradient.shape[:2]
    if spec.per_position:
        assert out.ndim == 5, "per-position weights broadcast against [B, K, C, h, w]"
        out = np.broadcast_to(out, gradient.shape)
    else:
        assert out.shape == (batch, k, activation.shape[1]), "channel weights are [B, K, C]"
    for j in range(k):
        ctx = CamContext(activation, gradient[:, j])
        expected = np.asarray(spec.weights(ctx))
        assert expected.shape == out[:, j].shape
        np.testing.assert_allclose(out[:, j], expected, rtol=1e-4,
                                   atol=1e-6 * max(1.0, np.abs(expected).max()))
        # and the same maps through the shared pipeline
        np.testing.assert_allclose(weighted_sum(activation, out[:, j]),
                                   weighted_sum(activation, expected), rtol=1e-4, atol=1e-6)
    assert np.abs(out).max() > 0, "all-zero weights compare nothing"
