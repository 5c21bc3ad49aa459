"""Session creation (explainer/session_build.py): a model with large weights is given to ONNX
Runtime with its weights handed over as arrays, not serialized; the session is the same."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_tiny_cnn
from onnx import TensorProto, helper, numpy_helper

import explainer.session_build as session_build
from explainer import Explainer
from explainer.session_build import new_session
from explainer.sessions import session_options
from exporters import build_bundle


def _mlp() -> onnx.ModelProto:
    """x [N, 256] -> MatMul 256x256 (256 KB) -> Add (1 KB) -> Relu -> MatMul 256x64 (64 KB)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
             for name, shape in (("w1", (256, 256)), ("b1", (256,)), ("w2", (256, 64)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["n", 256])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["n", 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_large_weights_are_handed_over_and_the_session_is_the_same(monkeypatch) -> None:
    model = _mlp()
    before = model.SerializeToString()
    options = session_options(1, "all", spinning=False)
    x = np.random.default_rng(1).normal(size=(3, 256)).astype(np.float32)
    plain = ort.InferenceSession(before, options, providers=["CPUExecutionProvider"])
    handed = []
    add = ort.SessionOptions.add_external_initializers
    monkeypatch.setattr(ort.SessionOptions, "add_external_initializers",
                        lambda self, names, values: handed.extend(names) or add(
                            self, names, values))
    monkeypatch.setattr(session_build, "HANDED_BYTES", 1)
    session = new_session(model, options, ["CPUExecutionProvider"])
    assert sorted(handed) == ["w1", "w2"]  # b1 (1 KB) stays in the model
    np.testing.assert_array_equal(session.run(None, {"x": x})[0],
                                  plain.run(None, {"x": x})[0])
    assert model.SerializeToString() == before  # the model given is left as it was
    own = session.get_session_options()
    assert own.intra_op_num_threads == 1
    assert own.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # a spinning session that stops spinning when its run returns keeps that too
    stopping = new_session(model, session_options(1, "all", spinning=True, spin_after=False),
                           ["CPUExecutionProvider"]).get_session_options()
    assert stopping.get_session_config_entry("session.force_spinning_stop") == "1"
    # the options given hold no handed weights: another model's session still builds
    other = make_tiny_cnn()
    ort.InferenceSession(other.SerializeToString(), options, providers=["CPUExecutionProvider"])
    # a small model's weights stay in it
    handed.clear()
    monkeypatch.setattr(session_build, "HANDED_BYTES", 1 << 30)
    new_session(model, options, ["CPUExecutionProvider"])
    assert not handed


def test_an_explainer_with_handed_weights_explains_the_same(monkeypatch) -> None:
    """Every session of an Explainer (the prediction, the backward, the explanation graph, the
    size-specialized ones) built with every weight handed over gives the same maps."""
    bundle = build_bundle(make_tiny_cnn(), "act", target_layer="relu2", labels=list("abcde"))
    x = np.random.default_rng(2).normal(size=(2, 3, 16, 16)).astype(np.float32)
    expected = [Explainer(bundle, explanation_graph=graph).explain(x, top_k=2)
                for graph in (True, False)]
    monkeypatch.setattr(session_build, "HANDED_BYTES", 0)
    monkeypatch.setattr(session_build, "_HANDED_WEIGHT", 256)  # the convolutions' weights
    handed = []
    add = ort.SessionOptions.add_external_initializers
    monkeypatch.setattr(ort.SessionOptions, "add_external_initializers",
                        lambda self, names, values: handed.append(names) or add(
                            self, names, values))
    for graph, want in zip((True, False), expected, strict=True):
        handed.clear()
        got = Explainer(bundle, explanation_graph=graph).explain(x, top_k=2)
        assert handed and all(handed), graph  # the weights handed over, session by session
        np.testing.assert_array_equal(got.class_ids, want.class_ids)
        np.testing.assert_array_equal(got.heatmaps, want.heatmaps)


def test_the_prediction_pass_spins_only_while_it_runs() -> None:
    """The two-graph path's one big run (a split head's composed prediction) spins as plain
    inference does, and its threads stop when it returns, leaving the cores to the backward
    runs after it; the explanation graph, one run per call, keeps ONNX Runtime's default."""
    bundle = build_bundle(make_tiny_cnn(), "act", target_layer="relu2", labels=list("abcde"))
    explainer = Explainer(bundle, threads=1)
    stop, spin = "session.force_spinning_stop", "session.intra_op.allow_spinning"
    prediction = explainer.runner._pool.spinning
    assert prediction.get_session_config_entry(stop) == "1"
    assert explainer.runner._pool.options.get_session_config_entry(spin) == "0"
    assert explainer.graph is not None
    with pytest.raises(Exception, match=stop):  # not set: spinning goes on after a run
        explainer.graph.sessions.options.get_session_config_entry(stop)
