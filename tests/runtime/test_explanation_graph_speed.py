"""The explanation graph's fast paths, torch-free: the head's forward runs once per image (its
backward reads K copies of each row), and any-size inputs run on size-specialized sessions.
Both must give what the two graphs give."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_tiny_cnn
from onnx import TensorProto, helper, numpy_helper
from test_segmentation import segmenter

import exporters.compose as composition
import exporters.compose_head as head_copies
from explainer import Explainer
from explainer.graph_runner import ExplanationGraph
from explainer.sessions import SizedSessions, session_options, specialize, symbolic_axes
from explainer.targets import GraphTargets
from exporters import build_bundle
from exporters.onnx_frontend import export_onnx


def _inputs(batch: int, height: int = 16, width: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, 3, height, width)).astype(np.float32)


def _head_forward_ops(model: onnx.ModelProto) -> list[str]:
    """Forward nodes of the gradient head copy (``head/`` names not under ``head/grad/``): the
    nodes that would recompute the head's forward on B*K rows."""
    return [n.op_type for n in model.graph.node
            if n.name.startswith("head/") and not n.name.startswith("head/grad/")]


def _assert_like_two_graphs(bundle, x: np.ndarray, targets, method: str = "gradcam") -> None:
    one = Explainer(bundle).explain(x, targets=targets, method=method)
    two = Explainer(bundle, explanation_graph=False).explain(x, targets=targets, method=method)
    np.testing.assert_array_equal(one.class_ids, two.class_ids)
    assert np.abs(two.cams).max() > 0
    np.testing.assert_allclose(one.cams, two.cams, rtol=1e-5, atol=1e-6 * np.abs(two.cams).max())
    np.testing.assert_allclose(one.heatmaps, two.heatmaps, atol=1e-5, rtol=0)
    np.testing.assert_allclose(one.scores, two.scores, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(one.probabilities, two.probabilities, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(one.logits, two.logits, atol=1e-6, rtol=1e-6)


def _sigmoid_head_cnn() -> onnx.ModelProto:
    """The tiny CNN with a head whose rows are not the images': act [B, 8, 8, 8] -> Reshape
    [B*64, 8] -> Gemm -> Sigmoid (its backward reads those rows) -> mean per image."""
    model = make_tiny_cnn()
    graph = model.graph
    keep = [n for n in graph.node if n.name in ("conv1", "relu1", "conv2", "relu2")]
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 5)).astype(np.float32), "wh"),
               numpy_helper.from_array(np.array([-1, 8], np.int64), "rows_shape"),
               numpy_helper.from_array(np.array([-1, 64, 5], np.int64), "image_shape")]
    head = [helper.make_node("Reshape", ["act", "rows_shape"], ["rows"], name="rows"),
            helper.make_node("Gemm", ["rows", "wh"], ["z"], name="gemm"),
            helper.make_node("Sigmoid", ["z"], ["s"], name="sigmoid"),
            helper.make_node("Reshape", ["s", "image_shape"], ["per_image"], name="back"),
            helper.make_node("ReduceMean", ["per_image"], ["logits"], name="mean", axes=[1],
                             keepdims=0)]
    keep_inits = [t for t in graph.initializer if t.name in ("w1", "b1", "w2", "b2")]
    new = helper.make_graph(keep + head, "rows_head", list(graph.input), list(graph.output),
                            keep_inits + weights)
    out = helper.make_model(new, opset_imports=[helper.make_opsetid("", 17)])
    out.ir_version = 8
    onnx.checker.check_model(out)
    return out


def _any_size_cnn() -> onnx.ModelProto:
    """The tiny CNN with a symbolic height and width."""
    model = make_tiny_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return model


@pytest.fixture
def tiny_bundle():
    return build_bundle(make_tiny_cnn(), "act", target_layer="relu2", labels=list("abcde"))


def test_the_head_forward_runs_once_per_image(tiny_bundle):
    """The gradient copy of the head holds no forward node: its backward reads the tiled
    rows of the one forward pass, which also gives the logits."""
    model = tiny_bundle.explanation
    assert _head_forward_ops(model) == []
    forward = [n.op_type for n in model.graph.node if n.name.startswith("logits/")]
    assert forward.count("Gemm") == 1 and forward.count("GlobalAveragePool") == 1
    # the composition that reruns the head's forward (what its backward needs) on B*K rows
    assert _head_forward_ops(_old_graph(tiny_bundle)) == ["Conv", "Relu"]
    # one-hot seeds: the last layer's gradient is a Gather of its weight rows, no OneHot left
    ops = [n.op_type for n in model.graph.node]
    assert "OneHot" not in ops
    assert any(n.op_type == "Gather" and n.input[0] == "head/w4" for n in model.graph.node)


def test_copies_read_for_their_shape_only_are_not_made():
    """An any-size head that pools the cut tensor reads the K copies of the activation (and
    of the pooled tensor) only through Shape and Size: those read the shape [B*K, ...] from
    the originals, and no copy is made; the maps are the two graphs'."""
    bundle = build_bundle(_any_size_cnn(), "r3", target_layer="relu3")
    model = bundle.explanation
    copied = [n.input[0] for n in model.graph.node if n.op_type == "Unsqueeze"]
    assert "features/r3" not in copied and "logits/gap" not in copied
    assert any(n.op_type == "ReduceProd" for n in model.graph.node)  # a Size of a copy
    _assert_like_two_graphs(bundle, _inputs(3, 16, 20, seed=5), "top2+least")
    _assert_like_two_graphs(bundle, _inputs(2, 12, 12, seed=6), "top3", method="layercam")


@pytest.mark.parametrize("size", [(16, 16), (17, 23), (9, 31)])
def test_heatmaps_scaled_before_the_upsampling_span_zero_to_one(size):
    """The graph scales each small map by the range of its upsampled map, read at the ends of
    the interpolation's runs, then upsamples: every heatmap spans [0, 1] (within rounding,
    clipped to it) and equals the two graphs' (which scale the upsampled map itself)."""
    bundle = build_bundle(_any_size_cnn(), "act", target_layer="relu2")
    x = _inputs(2, *size, seed=sum(size))
    _assert_like_two_graphs(bundle, x, "top3", method="layercam")
    with Explainer(bundle) as explainer:
        for _ in range(2):  # the second run: the session specialized to the size
            maps = explainer.explain(x, targets="top3", method="layercam").heatmaps
    flat = maps.reshape(6, -1)
    assert flat.min() >= 0 and flat.max() <= 1
    np.testing.assert_allclose(flat.min(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(flat.max(axis=1), 1, atol=1e-6)


def _untransposed_fc_cnn() -> onnx.ModelProto:
    """The tiny CNN with its last layer's weight stored [in, out] (Gemm transB=0), whose
    gradient is a Gemm with transB=1."""
    model = make_tiny_cnn()
    w4 = next(t for t in model.graph.initializer if t.name == "w4")
    w4.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w4).T.copy(), "w4"))
    fc = next(n for n in model.graph.node if n.name == "fc")
    del fc.attribute[:]
    return model


def test_the_gather_of_weight_columns_equals_two_graphs():
    bundle = build_bundle(_untransposed_fc_cnn(), "act", target_layer="relu2")
    model = bundle.explanation
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == "head/w4"]
    assert [a.i for n in gathers for a in n.attribute if a.name == "axis"] == [1]
    _assert_like_two_graphs(bundle, _inputs(3, seed=5), "top3+least")


def _old_graph(bundle) -> onnx.ModelProto:
    original = head_copies._batch_major
    head_copies._batch_major = lambda *args: False
    try:
        return composition.build_explanation_graph(bundle.features, bundle.head,
                                                   bundle.manifest)[0]
    finally:
        head_copies._batch_major = original


@pytest.mark.parametrize("targets", [None, "top5", "least+top2", [[0, 3], [4, 1], [2, 2]]])
def test_batched_backward_equals_two_graphs(tiny_bundle, targets):
    _assert_like_two_graphs(tiny_bundle, _inputs(3, seed=1), targets)


def _tied_classes_cnn() -> onnx.ModelProto:
    """The tiny CNN whose classes 0, 2 and 4 share one weight row and bias, as do 1 and 3:
    every image's logits hold two groups of equal values."""
    model = make_tiny_cnn()
    for name in ("w4", "b4"):
        tensor = next(t for t in model.graph.initializer if t.name == name)
        values = numpy_helper.to_array(tensor)[[0, 1, 0, 1, 0]].copy()
        tensor.CopyFrom(numpy_helper.from_array(values, name))
    return model


@pytest.mark.parametrize("targets", ["top5", "least5", "top2+least3", "least+top", "top3"])
def test_tied_logits_pick_the_classes_numpy_picks(targets):
    """The graph's two TopKs order equal logits as numpy's stable ranking does: the best in
    ascending class order, the worst in descending class order."""
    bundle = build_bundle(_tied_classes_cnn(), "act", target_layer="relu2")
    x = _inputs(2, seed=4)
    one = Explainer(bundle).explain(x, targets=targets)
    two = Explainer(bundle, explanation_graph=False).explain(x, targets=targets)
    np.testing.assert_array_equal(one.class_ids, two.class_ids)
    for b in range(2):
        assert one.logits[b, 0] == one.logits[b, 2] == one.logits[b, 4] != one.logits[b, 1]
        ranking = [0, 2, 4, 1, 3] if one.logits[b, 0] > one.logits[b, 1] else [1, 3, 0, 2, 4]
        want = {"top5": ranking, "least5": ranking[::-1], "top2+least3": ranking[:2] +
                ranking[::-1][:3], "least+top": ranking[-1:] + ranking[:1], "top3": ranking[:3]}
        assert one.class_ids[b].tolist() == want[targets]


@pytest.mark.parametrize("top_k", [1, 5])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_batched_backward_equals_the_whole_head_on_every_row(tiny_bundle, top_k, method):
    """Same outputs as the composition that reruns the head's forward on the B*K rows."""
    entry = tiny_bundle.manifest["explanation"]
    options, cpu = session_options(1, "all", spinning=False), ["CPUExecutionProvider"]
    new = ExplanationGraph(tiny_bundle.explanation, entry, options, cpu, False)
    old = ExplanationGraph(_old_graph(tiny_bundle), entry, options, cpu, False)
    targets = GraphTargets(top_k, 0, np.zeros((1, 0), np.int64))
    x = _inputs(3, seed=2)
    a, b = new.run(x, targets, method), old.run(x, targets, method)
    assert a["cams"].shape == (3, top_k, 8, 8) and np.abs(b["cams"]).max() > 0
    for key, value in b.items():
        np.testing.assert_allclose(a[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_rows_that_are_not_the_images_rerun_the_head():
    """A head whose backward reads tensors of B*64 rows cannot tile them per image: it keeps
    the whole head on B*K rows, and gives the two graphs' maps."""
    bundle = build_bundle(_sigmoid_head_cnn(), "act", target_layer="relu2")
    assert bundle.explanation is not None
    assert "Sigmoid" in _head_forward_ops(bundle.explanation)
    _assert_like_two_graphs(bundle, _inputs(3, seed=3), "top2+least")


def test_a_segmenters_graph_runs_its_head_forward_once(tmp_path):
    segmenter(tmp_path / "seg.onnx", classes=3)
    bundle = export_onnx(tmp_path / "seg.onnx", labels=["sky", "road", "car"])
    assert bundle.explanation is not None
    assert _head_forward_ops(bundle.explanation) == []
    x = np.random.default_rng(4).normal(size=(3, 3, 10, 12)).astype(np.float32)
    with Explainer(bundle) as explainer:
        one = explainer.explain(x, targets="car+sky", method="layercam")
        graph, explainer.graph = explainer.graph, None  # the two graphs and numpy
        two = explainer.explain(x, targets="car+sky", method="layercam")
        explainer.graph = graph
    assert np.abs(two.cams).max() > 0
    np.testing.assert_allclose(one.cams, two.cams, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one.heatmaps, two.heatmaps, rtol=1e-4, atol=1e-4)


def test_any_size_inputs_run_on_sessions_specialized_to_their_size():
    bundle = build_bundle(_any_size_cnn(), "act", target_layer="relu2")
    entry = bundle.manifest["explanation"]
    options, cpu = session_options(1, "all", spinning=True), ["CPUExecutionProvider"]
    graph = ExplanationGraph(bundle.explanation, entry, options, cpu, False, sizes=2)
    generic = ExplanationGraph(bundle.explanation, entry, options, cpu, False, sizes=0)
    assert graph.sessions.axes == [2, 3] and generic.sessions.axes == []
    assert graph.sessions.sizes == []  # nothing built before the first run
    targets = GraphTargets(2, 0, np.zeros((1, 0), np.int64))
    two_graphs = Explainer(bundle, explanation_graph=False)
    met: set[tuple[int, int]] = set()
    for height, width in ((16, 16), (24, 20), (16, 16), (24, 20), (16, 16)):
        x = _inputs(2, height, width, seed=height + width)
        first = (height, width) not in met
        met.add((height, width))
        out = graph.run(x, targets)
        assert out["heatmaps"].shape == (2, 2, height, width)
        # a size's first run: the session for every size; its second: its own
        expected = ["height", "width"] if first else [height, width]
        assert graph.session.get_inputs()[0].shape[2:] == expected
        reference = generic.run(x, targets)
        for key, value in reference.items():
            np.testing.assert_allclose(out[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        two = two_graphs.explain(x, targets="top2")
        np.testing.assert_allclose(out["heatmaps"], two.heatmaps, atol=1e-5, rtol=0)
    assert graph.sessions.sizes == [(24, 20), (16, 16)]  # least recently used first
    for _ in range(2):  # a third size, twice: the oldest session goes
        graph.run(_inputs(1, 12, 8), targets)
    assert graph.sessions.sizes == [(16, 16), (12, 8)]
    assert generic.session.get_inputs()[0].shape[2:] == ["height", "width"]


def test_sized_sessions_are_bounded_and_validated():
    model = _any_size_cnn()
    assert symbolic_axes(model, "input") == [2, 3]
    assert symbolic_axes(model, "input", skip_batch=False) == [0, 2, 3]
    fixed = specialize(model, "input", {2: 9, 3: 7})
    assert [d.dim_value or d.dim_param for d in
            fixed.graph.input[0].type.tensor_type.shape.dim] == ["batch", 3, 9, 7]
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "height"
    options = ort.SessionOptions()
    sessions = SizedSessions(model, "input", options, ["CPUExecutionProvider"], limit=1,
                             after=1)
    first = sessions.get((1, 3, 9, 9))
    assert sessions.get((4, 3, 9, 9)) is first  # any batch: one session per size
    second = sessions.get((1, 3, 10, 9))
    assert second is not first and sessions.sizes == [(10, 9)] and sessions.last is second
    sessions.close()
    assert sessions.sizes == []
    # ever new sizes (met once) share the session with the model's own symbolic sizes
    stream = SizedSessions(model, "input", options, ["CPUExecutionProvider"])
    once = {id(stream.get((1, 3, size, size))) for size in range(8, 16)}
    assert len(once) == 1 and stream.sizes == []
    assert stream.last.get_inputs()[0].shape[2:] == ["height", "width"]
    assert stream.get((1, 3, 8, 8)).get_inputs()[0].shape[2:] == [8, 8]  # met twice
    with pytest.raises(Exception, match="limit must be >= 0"):
        SizedSessions(model, "input", options, ["CPUExecutionProvider"], limit=-1)
    bad = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                    [1])], [])
    with pytest.raises(Exception, match="no input 'input'"):
        symbolic_axes(helper.make_model(bad), "input")


def test_session_pool_specializes_any_size_graphs():
    """The two graphs' pool: one session per (graph, size), bounded, released on close."""
    from explainer.sessions import SessionPool

    bundle = build_bundle(_any_size_cnn(), "act", target_layer="relu2")
    pool = SessionPool(["CPUExecutionProvider"], session_options(1, "all", spinning=False),
                       sizes=1)
    generic = ort.InferenceSession(bundle.features.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for height, width in ((16, 16), (16, 16), (20, 12), (20, 12)):
        x = _inputs(2, height, width)
        session = pool.get_sized("features", lambda: bundle.features, "input", x.shape)
        np.testing.assert_allclose(session.run(None, {"input": x})[0],
                                   generic.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    assert pool._sized["features"].sizes == [(20, 12)]
    pool.close()
    with pytest.raises(Exception, match="closed"):
        pool.get_sized("features", lambda: bundle.features, "input", (1, 3, 16, 16))
