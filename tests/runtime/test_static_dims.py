"""Sizes a specialized session knows (explainer/static_dims.py): the explanation graph's own
shape reads become constants where the input size makes them static, the batch stays read at
run time, the model's own nodes are left alone, and the outputs do not change."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from conftest import make_tiny_cnn
from onnx import TensorProto, helper, numpy_helper

from explainer.bundle import COMPOSED_PREFIX
from explainer.sessions import SizedSessions, session_options, specialize
from explainer.static_dims import fold_static_dims
from exporters import build_bundle


def _any_size_cnn() -> onnx.ModelProto:
    model = make_tiny_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return model


def _reads(prefix: str) -> onnx.ModelProto:
    """x [batch, 3, h, w] -> y = Identity(x); ``prefix`` nodes read x's dims: Shape with
    start/end (height, width), Slice of a whole Shape (width; batch), and the model's own
    Shape (height)."""
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="own/identity"),
             helper.make_node("Shape", ["x"], ["hw"], name=f"{prefix}hw", start=2, end=4),
             helper.make_node("Shape", ["x"], ["whole"], name=f"{prefix}whole"),
             helper.make_node("Slice", ["whole", "three", "four", "zero"], ["width"],
                              name=f"{prefix}width"),
             helper.make_node("Slice", ["whole", "zero", "one"], ["batch"],
                              name=f"{prefix}batch"),
             helper.make_node("Shape", ["x"], ["height"], name="own/height", start=2, end=3)]
    constants = [numpy_helper.from_array(np.array([v], np.int64), name)
                 for v, name in ((0, "zero"), (1, "one"), (3, "three"), (4, "four"))]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT64, None)
               for n in ("hw", "width", "batch", "height")]
    graph = helper.make_graph(
        nodes, "reads", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), *outputs], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_static_dims_under_the_prefix_become_constants() -> None:
    model = specialize(_reads("cam/"), "x", {2: 6, 3: 7})
    assert fold_static_dims(model, "cam/") == 2  # the height and width, the width
    folded = {t.name: numpy_helper.to_array(t).tolist() for t in model.graph.initializer}
    assert folded["hw"] == [6, 7] and folded["width"] == [7]
    names = [n.name for n in model.graph.node]
    assert "cam/batch" in names and "own/height" in names  # symbolic; not under the prefix
    assert "cam/hw" not in names and "cam/width" not in names
    x = np.zeros((2, 3, 6, 7), np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hw, width, batch, height = session.run(["hw", "width", "batch", "height"], {"x": x})
    assert hw.tolist() == [6, 7] and width.tolist() == [7]
    assert batch.tolist() == [2] and height.tolist() == [6]
    # where the sizes are not static nothing is folded
    assert fold_static_dims(_reads("cam/"), "cam/") == 0


def _optimized_ops(model: onnx.ModelProto, path) -> list[str]:
    """The ops of ``model`` as ONNX Runtime optimizes it."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_a_specialized_explanation_graph_computes_no_interpolation_matrix(tmp_path) -> None:
    """The upsampling's matrices come from the activation's and the input's sizes: in a
    session specialized to a size ONNX Runtime folds them (no Range left; the graph for
    every size computes them on each run), and the outputs are the same."""
    bundle = build_bundle(_any_size_cnn(), "act", target_layer="relu2")
    generic = bundle.explanation
    fixed = specialize(generic, "input", {2: 16, 3: 20}, COMPOSED_PREFIX)
    assert "Range" in _optimized_ops(generic, tmp_path / "generic.onnx")
    assert "Range" not in _optimized_ops(fixed, tmp_path / "fixed.onnx")
    feeds = {"input": np.random.default_rng(1).normal(size=(2, 3, 16, 20)).astype(np.float32),
             "top_k": np.array([2]), "least": np.array([0]),
             "class_ids": np.zeros((1, 0), np.int64), "method": np.array([0])}
    got, want = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                 .run(None, feeds) for m in (fixed, generic))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_fixed_size_graph_reads_its_sizes_as_constants_too() -> None:
    """A bundle exported at a fixed size has one session: built from the folded copy."""
    bundle = build_bundle(make_tiny_cnn(), "act", target_layer="relu2")
    built: list[onnx.ModelProto] = []

    class Capture(SizedSessions):
        def _build(self, model: onnx.ModelProto) -> ort.InferenceSession:
            built.append(model)
            return super()._build(model)

    options, cpu = session_options(1, "all", spinning=False), ["CPUExecutionProvider"]
    sessions = Capture(bundle.explanation, "input", options, cpu, fold_prefix=COMPOSED_PREFIX)
    assert sessions.axes == []
    sessions.get((2, 3, 16, 16))
    (model,) = built
    shapes = [n for n in model.graph.node if n.op_type == "Shape"]
    assert len(shapes) < sum(n.op_type == "Shape" for n in bundle.explanation.graph.node)
    assert not [n for n in shapes if n.input[0] in ("input", "features/act")]
