"""The one node builder (exporters.builder): names, constants, opset-aware reductions, op checks;
and that the autodiff's emitter and the explanation graph both write through it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from exporters.autodiff.emitter import Emitter, GradContext
from exporters.builder import Builder, UnknownOpError, reduce_axes_as_input
from exporters.errors import ExportError
from exporters.graph import Graph


def _run(builder: Builder, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    """Run the builder's nodes as a model (float inputs) and return ``output``."""
    import onnxruntime as ort

    graph = helper.make_graph(
        builder.nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape))
         for n, v in inputs.items()],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        initializer=builder.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", builder.opset)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([output], inputs)[0]


def test_names_are_unique_under_the_prefix_and_avoid_taken_ones() -> None:
    b = Builder("cam", 18, taken={"cam/Relu"})
    first, second = b.op("Relu", "x"), b.op("Relu", "x")
    names = [first, second, *(n.name for n in b.nodes)]
    assert len(set(names)) == len(names)
    assert all(n.startswith("cam/") for n in names)
    assert "cam/Relu" not in (first, second)  # taken by the model
    assert b.op("Relu", "x", out="chosen") == "chosen" and "chosen" in b.taken
    split = b.op("Split", "x", outputs=3, axis=0, num_outputs=3)
    assert len(split) == 3 and len(set(split)) == 3


def test_constants_are_deduplicated_across_scoped_builders() -> None:
    b = Builder("grad", 13)
    child = b.scoped("grad/node")
    one, again = b.const([1, 2]), child.const([1, 2])
    assert one == again and len(b.initializers) == 1
    assert b.const([1.0, 2.0], np.float32) != one  # another dtype, another constant
    child.op("Relu", "x")
    assert len(b.nodes) == 1 and b.nodes[0].output[0].startswith("grad/node/")


def test_trailing_omitted_inputs_are_left_out_and_none_attributes_dropped() -> None:
    b = Builder("p", 18)
    b.op("Resize", "x", "", None, "sizes", mode="linear", antialias=None)
    node = b.nodes[0]
    assert list(node.input) == ["x", "", "", "sizes"]
    b.op("Clip", "x", None, None)
    assert list(b.nodes[1].input) == ["x"]
    assert [a.name for a in node.attribute] == ["mode"]


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMean", "ReduceMax"])
def test_reduce_writes_the_form_of_the_opset(op_type: str, opset: int) -> None:
    b = Builder("r", opset)
    out = b.reduce(op_type, "x", [1, 2], keepdims=0)
    node = b.nodes[-1]
    as_input = reduce_axes_as_input(op_type, opset)
    assert as_input == (opset >= 18 or op_type == "ReduceSum")
    assert (len(node.input) == 2) == as_input
    assert any(a.name == "axes" for a in node.attribute) != as_input
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    expected = {"ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max}[op_type]
    np.testing.assert_allclose(_run(b, {"x": x}, out), expected(x, axis=(1, 2)), rtol=1e-5)


def test_dims_slices_a_shape() -> None:
    b = Builder("d", 18)
    shape = b.op("Shape", "x")
    b.op("Cast", b.dims(shape, 1, 3), to=TensorProto.FLOAT, out="dims")
    x = np.zeros((2, 5, 7), np.float32)
    np.testing.assert_array_equal(_run(b, {"x": x}, "dims"), [5.0, 7.0])


def test_an_unknown_op_fails_when_emitted() -> None:
    b = Builder("cam", 18)
    with pytest.raises(UnknownOpError, match="'Relux'.*'cam/'"):
        b.op("Relux", "x")
    assert issubclass(UnknownOpError, ExportError) and not b.nodes


def _forward_graph() -> Graph:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "f", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return Graph(model, infer=True)


def test_the_autodiff_emitter_is_the_builder() -> None:
    """GradContext writes through the one builder: ``grad/<node>/`` names that avoid the
    model's, shared deduplicated constants, tracked element types, the opset's reduce form."""
    graph = _forward_graph()
    emitter = Emitter(graph)
    assert isinstance(emitter, Builder) and emitter.opset == 13
    ctx = GradContext(emitter, graph.nodes[0], "relu", ["dy"], {"x", "y"})
    other = GradContext(emitter, graph.nodes[0], "relu", ["dy"], {"x", "y"})
    mask = ctx.op("Greater", "x", ctx.scalar(0.0, "x"))
    assert mask.startswith("grad/relu/") and ctx.dtype(mask) == TensorProto.BOOL
    assert ctx.dtype(ctx.cast_like(mask, "x")) == TensorProto.FLOAT
    assert ctx.const([3, 4]) == other.const([3, 4])  # one initializer per value
    assert ctx.dtype(ctx.const([3, 4])) == TensorProto.INT64
    ctx.reduce("ReduceMax", "x", [1])  # opset 13: axes as an attribute
    assert any(a.name == "axes" for a in emitter.nodes[-1].attribute)
    names = [o for n in emitter.nodes for o in n.output] + [n.name for n in emitter.nodes]
    assert len(set(names)) == len(names) and not set(names) & set(graph.names)
