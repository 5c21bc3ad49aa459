from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import explainer.bundle as bundle_module
from explainer import Bundle, BundleError, Explainer, InputError, ProviderError, TargetError
from explainer.methods import compute_cams, in_graph_methods
from exporters import build_bundle
from exporters.graph import infer_shapes
from exporters.split import split_model


@pytest.fixture
def bundle(tiny_cnn) -> Bundle:
    return build_bundle(tiny_cnn, "act", target_layer="relu2", labels=list("abcde"))


def _inputs(batch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 3, 16, 16)).astype(np.float32)


def _finite_difference_cams(model, x, class_ids, target="act", eps=1e-2, spacing=3):
    """Grad-CAM from central differences of the head (independent of our autodiff; the formula
    is ``explainer.methods``'); other tensors crossing the cut are held fixed.

    Grad-CAM needs only ``alpha_c = mean_hw dScore/dA[c, h, w]``, a sum of per-element
    derivatives. The test heads read the activation through one 3x3, stride-1 convolution and
    then only per-position ops, global average pooling and a linear layer, so elements of a
    channel that lie ``spacing`` (3) rows or columns apart change disjoint convolution outputs:
    their effects on the logits add up exactly. Shifting such a grid of elements by +-eps at
    once gives the sum of their per-element central differences, each element still moved by
    eps alone within its convolution window (the same ReLU kinks as one-at-a-time). The
    C * spacing**2 grids of an image, shifted up and down, go through ONNX Runtime as one batch,
    each row giving the logits of every class.
    """
    split = split_model(infer_shapes(model), target, ["logits"])
    features = ort.InferenceSession(split.features.SerializeToString())
    cut = dict(zip(split.cut_tensors, features.run(None, {"input": x})))
    act = cut[target]
    convs = [n for n in split.head.graph.node if n.op_type == "Conv"]
    kernels = {i.name: tuple(i.dims[2:]) for i in split.head.graph.initializer}
    assert len(convs) == 1 and kernels[convs[0].input[1]] == (spacing, spacing), (
        "the grid shifts assume one 3x3 stride-1 convolution in the head"
    )
    assert all(a.name != "strides" or list(a.ints) == [1, 1] for a in convs[0].attribute)
    head = ort.InferenceSession(split.head.SerializeToString())
    channels, height, width = act.shape[1:]
    grids = channels * spacing * spacing
    steps = np.zeros((channels, spacing, spacing, channels, height, width), np.float32)
    for c in range(channels):
        for i in range(spacing):
            for j in range(spacing):
                steps[c, i, j, c, i::spacing, j::spacing] = np.float32(eps)
    steps = steps.reshape(grids, channels, height, width)

    cams = np.zeros((x.shape[0], class_ids.shape[1], height, width))
    for b in range(x.shape[0]):
        shifted = np.concatenate([act[b] + steps, act[b] - steps])  # [2G, C, H, W]
        feeds = {n: np.repeat(v[b : b + 1], 2 * grids, axis=0) for n, v in cut.items()}
        logits = head.run(None, {**feeds, target: shifted})[0].astype(np.float64)  # [2G, K]
        sums = ((logits[:grids] - logits[grids:]) / (2 * eps)).reshape(channels, -1, len(logits[0]))
        alphas = sums.sum(axis=1) / (height * width)  # [C, K]
        for k, c in enumerate(class_ids[b]):
            # a gradient constant over each channel whose mean is the channel's alpha
            grad = np.broadcast_to(alphas[:, c][:, None, None], act[b].shape)[None]
            cams[b, k] = compute_cams(act[b : b + 1], grad, "gradcam")[0]
    return cams


def _assert_cams_match_finite_differences(cams, ref):
    np.testing.assert_allclose(cams, ref, rtol=2e-3, atol=2e-4 * np.abs(ref).max())


def test_explain_matches_finite_difference_gradcam(bundle, tiny_cnn):
    x = _inputs(2)
    e = Explainer(bundle, optimization="none").explain(x, targets=[[0, 3], [4, 1]])
    ref = _finite_difference_cams(tiny_cnn, x, e.class_ids)
    _assert_cams_match_finite_differences(e.cams, ref)


def _with_wrong_gradient(bundle: Bundle, factor: np.ndarray) -> Bundle:
    """The bundle with its head's gradient output multiplied by ``factor`` [1, C, 1, 1]."""
    wrong = copy.deepcopy(bundle)
    graph = wrong.head.graph
    name = wrong.manifest["head"]["gradient"]
    producer = next(n for n in graph.node if name in n.output)
    producer.output[list(producer.output).index(name)] = name + "_true"
    graph.initializer.append(numpy_helper.from_array(factor.astype(np.float32), "wrong_factor"))
    graph.node.append(helper.make_node("Mul", [name + "_true", "wrong_factor"], [name]))
    return wrong


def _fault_factor(fault: str, channels: int = 8) -> np.ndarray:
    factor = np.full(channels, 1.2) if fault == "scaled by 1.2" else np.arange(channels) % 2.0
    return factor.reshape(1, channels, 1, 1)


@pytest.mark.parametrize("fault", ["scaled by 1.2", "half the channels zeroed"])
def test_finite_difference_check_catches_a_wrong_gradient(bundle, tiny_cnn, fault):
    """The comparison above is sharp enough: a head whose gradient is off fails it."""
    wrong = _with_wrong_gradient(bundle, _fault_factor(fault))
    x = _inputs(2)
    # the two graphs: the wrong head is what runs (the explanation graph holds its own copy)
    wrong_explainer = Explainer(wrong, optimization="none", explanation_graph=False)
    e = wrong_explainer.explain(x, targets=[[0, 3], [4, 1]])
    ref = _finite_difference_cams(tiny_cnn, x, e.class_ids)
    with pytest.raises(AssertionError):
        _assert_cams_match_finite_differences(e.cams, ref)


def test_explanation_fields(bundle):
    x = _inputs(3)
    e = Explainer(bundle).explain(x, targets="top3+least")
    assert e.heatmaps.shape == (3, 4, 16, 16) and e.heatmaps.dtype == np.float32
    assert e.cams.shape == (3, 4, 8, 8)
    assert e.heatmaps.min() >= 0 and e.heatmaps.max() <= 1
    assert (e.cams >= 0).all()
    order = np.argsort(-e.logits, axis=1)
    np.testing.assert_array_equal(e.class_ids[:, :3], order[:, :3])
    np.testing.assert_array_equal(e.class_ids[:, 3], order[:, -1])
    np.testing.assert_allclose(e.scores, np.take_along_axis(e.logits, e.class_ids, 1))
    assert e.probabilities.shape == (3, 4) and (np.diff(e.probabilities[:, :3], axis=1) <= 0).all()
    assert e.labels[0][0] == "abcde"[e.class_ids[0, 0]]
    assert len(e.titles(0)) == 4


def test_many_targets_equal_single_target_runs(bundle):
    x = _inputs(2)
    explainer = Explainer(bundle)
    many = explainer.explain(x, targets=[[1, 2, 4], [0, 0, 3]])
    for k in range(3):
        one = explainer.explain(x, targets=many.class_ids[:, k])
        np.testing.assert_allclose(many.cams[:, k], one.cams[:, 0], rtol=1e-5, atol=1e-6)
    top = explainer.explain(x, top_k=2)
    np.testing.assert_array_equal(top.class_ids, np.argsort(-top.logits, 1)[:, :2])


def test_features_graph_runs_once_per_batch(bundle, monkeypatch):
    explainer = Explainer(bundle, explanation_graph=False)
    calls = []
    runner = explainer.runner
    original = runner.features
    monkeypatch.setattr(runner, "features", lambda *a, **k: calls.append(1) or original(*a, **k))
    explainer.explain(_inputs(2), targets="top3+least")
    assert len(calls) == 1


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch(bundle, batch):
    e = Explainer(bundle).explain(_inputs(batch), top_k=2)
    assert e.cams.shape == (batch, 2, 8, 8)


def test_input_errors(bundle):
    explainer = Explainer(bundle)
    with pytest.raises(InputError, match="rank 4"):
        explainer.explain(np.zeros((3, 16, 16), np.float32))
    with pytest.raises(InputError, match=r"axis 2"):
        explainer.explain(np.zeros((1, 3, 15, 16), np.float32))
    with pytest.raises(InputError, match="float32"):
        explainer.explain(np.zeros((1, 3, 16, 16), np.int64))
    with pytest.raises(InputError, match="NaN"):
        explainer.explain(np.full((1, 3, 16, 16), np.nan, np.float32))
    with pytest.raises(InputError, match="numpy array"):
        explainer.explain([[0.0]])
    with pytest.raises(InputError, match="no preprocessing"):
        explainer.preprocess("x.png")
    with pytest.raises(TargetError, match="out of range"):
        explainer.explain(_inputs(1), targets=5)


def test_cuda_unavailable_is_a_clear_error(bundle):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ProviderError, match="onnxcam\\[gpu\\]"):
        Explainer(bundle, providers="cuda")
    with pytest.raises(ProviderError, match="shorthand"):
        Explainer(bundle, providers="tpu")


def test_bundle_round_trip_and_checker(bundle, tmp_path):
    bundle.check()
    path = bundle.save(tmp_path / "b")
    assert sorted(p.name for p in path.iterdir()) == [
        "explanation.onnx", "features.onnx", "head.onnx", "manifest.json", "weights.onnx.data"
    ]
    loaded = Bundle.load(path)
    assert loaded.manifest == bundle.manifest
    x = _inputs(2)
    np.testing.assert_array_equal(
        Explainer(loaded).explain(x).cams, Explainer(bundle).explain(x).cams
    )
    # the runtime accepts a path too
    assert Explainer(path).explain(x).cams.shape == (2, 1, 8, 8)


def _external(model) -> set[tuple[str, str, str]]:
    """(location, offset, length) of every external tensor of a model file."""
    found = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            found.add((info["location"], info["offset"], info["length"]))
    return found


def test_graphs_share_one_weights_file(bundle, tmp_path, monkeypatch):
    """Schema 2 stores each weight once: the explanation graph points at the offsets the
    features and head graphs use, in the one weights.onnx.data."""
    monkeypatch.setattr(bundle_module, "EXTERNAL_DATA_THRESHOLD", 100)  # weights only
    path = bundle.save(tmp_path / "b")
    graphs = {n: onnx.load(str(path / f"{n}.onnx"), load_external_data=False)
              for n in ("features", "head", "explanation")}
    two_graphs = _external(graphs["features"]) | _external(graphs["head"])
    assert _external(graphs["explanation"]) <= two_graphs
    unique = sum(int(length) for _, _, length in two_graphs)
    weights = sum(t.ByteSize() for m in (bundle.features, bundle.head)
                  for t in m.graph.initializer)
    assert unique <= weights
    assert not list(path.glob("*.onnx.data"))[1:]  # one data file
    loaded = Bundle.load(path)
    x = _inputs(1)
    np.testing.assert_array_equal(
        Explainer(loaded).explain(x).cams, Explainer(bundle).explain(x).cams
    )


def test_explanation_graph_is_one_session_run(bundle, monkeypatch):
    explainer = Explainer(bundle)
    calls = []
    original = explainer.graph.session.run
    monkeypatch.setattr(
        explainer.graph.session, "run", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    explainer.explain(_inputs(2), targets="top3+least")
    assert len(calls) == 1
    assert not explainer.runner._pool._sessions  # the two-graph sessions were not built


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-2] * a.shape[-1]), b.reshape(-1, b.shape[-2] * b.shape[-1])
    return float((np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1),
                                                             1e-30)).max())


@pytest.mark.parametrize("targets", [
    None, "top3+least", "least+top2", "2+top1+least2", [[0, 3], [4, 1], [2, 2]], 4, [1, 0, 3],
])
def test_explanation_graph_equals_two_graphs(bundle, targets):
    x = _inputs(3)
    one = Explainer(bundle).explain(x, targets=targets)
    two = Explainer(bundle, explanation_graph=False).explain(x, targets=targets)
    np.testing.assert_array_equal(one.class_ids, two.class_ids)
    assert _rel_l2(one.cams, two.cams) <= 1e-5
    np.testing.assert_allclose(one.heatmaps, two.heatmaps, atol=1e-5, rtol=0)
    np.testing.assert_allclose(one.probabilities, two.probabilities, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(one.scores, two.scores, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(one.logits, two.logits, atol=1e-6, rtol=1e-6)
    assert one.labels == two.labels and one.heatmaps.dtype == np.float32


def test_explanation_graph_computes_every_closed_form_method(bundle):
    """Each method closed-form in (activation, gradient) is an If branch of the one graph."""
    from explainer.methods import METHODS, in_graph_methods
    from exporters.compose import CAM_METHODS

    explainer = Explainer(bundle)
    closed_form = [m for m, spec in METHODS.items() if spec.emit is not None]
    assert closed_form == in_graph_methods() == list(CAM_METHODS)
    assert all(METHODS[m].kind == "closed-form" for m in closed_form)
    assert explainer.graph.methods == closed_form and closed_form[0] == "gradcam"
    assert bundle.manifest["explanation"]["methods"] == closed_form


@pytest.mark.parametrize("method", [m for m in in_graph_methods() if m != "gradcam"])
def test_explanation_graph_methods_equal_two_graphs(bundle, monkeypatch, method):
    x = _inputs(3, seed=1)
    explainer = Explainer(bundle)
    calls = []
    original = explainer.graph.session.run
    monkeypatch.setattr(
        explainer.graph.session, "run", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    one = explainer.explain(x, targets="top2+least", method=method)
    assert len(calls) == 1 and one.method == method
    assert not explainer.runner._pool._sessions
    two = Explainer(bundle, explanation_graph=False).explain(x, targets="top2+least",
                                                             method=method)
    np.testing.assert_array_equal(one.class_ids, two.class_ids)
    assert np.abs(two.cams).max() > 0  # a map that is not all zero
    assert _rel_l2(one.cams, two.cams) <= 1e-5
    np.testing.assert_allclose(one.heatmaps, two.heatmaps, atol=1e-5, rtol=0)
    gradcam = explainer.explain(x, targets="top2+least")
    assert _rel_l2(one.cams, gradcam.cams) > 1e-3  # the method input picked another branch


def test_explanation_graph_methods_after_save_and_load(bundle, tmp_path):
    x = _inputs(2)
    loaded = Explainer(Bundle.load(bundle.save(tmp_path / "b")))
    for method in ("layercam", "gradcam"):
        np.testing.assert_array_equal(loaded.explain(x, method=method).cams,
                                      Explainer(bundle).explain(x, method=method).cams)


def test_schema_1_bundle_still_loads(tmp_path):
    """A bundle saved by onnxcam before schema 2 (tests/data) explains as it did."""
    path = Path(__file__).parents[1] / "data" / "schema1_tiny.onnxcam"
    expected = np.load(Path(__file__).parents[1] / "data" / "schema1_tiny_expected.npz")
    loaded = Bundle.load(path)
    assert loaded.manifest["schema_version"] == 1 and loaded.explanation is None
    explainer = Explainer(loaded, optimization="none")
    assert explainer.graph is None
    e = explainer.explain(expected["x"], targets="top2+least")
    np.testing.assert_array_equal(e.class_ids, expected["class_ids"])
    np.testing.assert_allclose(e.cams, expected["cams"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(e.heatmaps, expected["heatmaps"], atol=1e-5)
    resaved = Bundle.load(loaded.save(tmp_path / "again"))
    assert resaved.manifest == loaded.manifest and resaved.explanation is None


def test_bundle_load_errors(bundle, tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        Bundle.load(tmp_path / "missing")
    path = bundle.save(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["head"]["inputs"] = ["nope"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="nope"):
        Bundle.load(path)
    (path / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="JSON"):
        Bundle.load(path)
    (path / "head.onnx").unlink()
    with pytest.raises(BundleError, match="head.onnx is missing"):
        Bundle.load(path)


def _with_skip_across_the_cut(tiny_cnn):
    """tiny_cnn with conv2 kept at 16x16 and a residual Add(act, r1) feeding conv3."""
    model = copy.deepcopy(tiny_cnn)
    graph = model.graph
    conv2 = next(n for n in graph.node if n.name == "conv2")
    del conv2.attribute[:]
    conv2.attribute.extend([helper.make_attribute("pads", [1, 1, 1, 1])])  # keep 16x16
    conv3 = next(n for n in graph.node if n.name == "conv3")
    conv3.input[0] = "skip"
    index = [n.name for n in graph.node].index("conv3")
    graph.node.insert(index, helper.make_node("Add", ["act", "r1"], ["skip"], name="skip_add"))
    return model


def _assert_skip_cams_match_finite_differences(cams, ref):
    error = np.linalg.norm((cams - ref).reshape(6, -1), axis=1) / np.linalg.norm(
        ref.reshape(6, -1), axis=1
    )
    assert error.max() < 2e-3, error


def test_head_with_a_skip_tensor_across_the_cut(tiny_cnn):
    """A residual edge crossing the cut makes the head read two tensors: the runtime then runs
    the head once per target column and must still give finite-difference Grad-CAM."""
    model = _with_skip_across_the_cut(tiny_cnn)
    bundle = build_bundle(model, "act")
    assert bundle.manifest["head"]["inputs"] == ["act", "r1"]
    assert bundle.explanation is None and bundle.manifest["explanation"] is None
    x = _inputs(2)
    e = Explainer(bundle, optimization="none").explain(x, targets=[[0, 3, 1], [4, 1, 2]])
    ref = _finite_difference_cams(model, x, e.class_ids)
    _assert_skip_cams_match_finite_differences(e.cams, ref)


@pytest.mark.parametrize("fault", ["scaled by 1.2", "half the channels zeroed"])
def test_skip_finite_difference_check_catches_a_wrong_gradient(tiny_cnn, fault):
    model = _with_skip_across_the_cut(tiny_cnn)
    wrong = _with_wrong_gradient(build_bundle(model, "act"), _fault_factor(fault))
    x = _inputs(2)
    e = Explainer(wrong, optimization="none").explain(x, targets=[[0, 3, 1], [4, 1, 2]])
    ref = _finite_difference_cams(model, x, e.class_ids)
    with pytest.raises(AssertionError):
        _assert_skip_cams_match_finite_differences(e.cams, ref)


def test_the_manifest_is_typed_in_one_place(bundle):
    """Bundle.spec and Explainer.spec read the manifest dict; they are frozen snapshots."""
    import dataclasses

    from explainer.manifest import Manifest

    spec = bundle.spec
    raw = bundle.manifest
    assert isinstance(spec, Manifest) and spec.input.name == raw["input"]["name"]
    assert spec.input.shape == tuple(raw["input"]["shape"]) and spec.input.layout == "NCHW"
    assert spec.head.inputs == tuple(raw["head"]["inputs"]) and spec.head.score == "logit"
    assert spec.target.tensor == spec.head.inputs[0] == "act" and spec.target.layer == "relu2"
    assert [layer.tensor for layer in spec.layers] == ["act"]  # no sweep: the target alone
    assert spec.layers[0].gradient == spec.head.gradient == raw["head"]["gradient"]
    assert spec.labels == list("abcde") and spec.num_classes == raw["num_classes"]
    assert spec.explanation is not None and spec.explanation.methods[0] == "gradcam"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.task = "detect"  # type: ignore[misc]
    explainer = Explainer(bundle)
    assert explainer.spec == spec and explainer.labels == spec.labels
    raw["export"] = {"output": "probs"}  # notes added after the export: a later spec sees them
    assert bundle.spec.output_names == {raw["head"]["logits"], "probs"}
    assert spec.export is None


@pytest.mark.parametrize("edit, field", [
    (lambda m: m["input"].update(layout="CHW"), "input.layout"),
    (lambda m: m["head"].update(score="odds"), "head.score"),
    (lambda m: m.update(layers=[{"tensor": "act"}]), "layers"),
    (lambda m: m["explanation"].update(file="../x.onnx"), "explanation.file"),
    (lambda m: m.update(task="pose"), "task"),
])
def test_manifest_errors_name_the_field(bundle, edit, field):
    from explainer.manifest import Manifest

    manifest = copy.deepcopy(bundle.manifest)
    edit(manifest)
    with pytest.raises(BundleError, match=field.replace(".", r"\.")):
        Manifest.parse(manifest, "here")
    with pytest.raises(BundleError, match=field.replace(".", r"\.")):
        Bundle(bundle.features, bundle.head, manifest, explanation=bundle.explanation)


def test_runner_runs_the_graphs_one_at_a_time(bundle):
    """The runner's graph runs give what one explain call computes."""
    explainer = Explainer(bundle, explanation_graph=False)
    x = _inputs(2)
    runner = explainer.runner
    features = runner.run_features(x)
    assert list(features) == list(explainer.spec.head.inputs)
    logits = runner.run_logits(features)
    explanation = explainer.explain(x, targets=[1, 3])
    np.testing.assert_allclose(logits, explanation.logits, rtol=1e-6, atol=1e-6)
    seeds = np.eye(explainer.num_classes, dtype=np.float32)[[1, 3]]
    head_logits, gradient = runner.run_head(features, seeds)
    np.testing.assert_allclose(head_logits, logits, rtol=1e-6, atol=1e-6)
    assert gradient.shape == features["act"].shape
    cams = compute_cams(features["act"], gradient, "gradcam")
    np.testing.assert_allclose(cams, explanation.cams[:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError):
        runner.run_features(x[:, :2])
    explainer.close()
    assert runner.closed
