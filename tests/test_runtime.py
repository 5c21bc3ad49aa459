from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import explainer.bundle as bundle_module
from explainer import Bundle, BundleError, Explainer, InputError, ProviderError, TargetError
from explainer.methods import compute_cams
from exporters import build_bundle
from exporters.graph import infer_shapes
from exporters.split import split_model


@pytest.fixture
def bundle(tiny_cnn) -> Bundle:
    return build_bundle(tiny_cnn, "act", target_layer="relu2", labels=list("abcde"))


def _inputs(batch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 3, 16, 16)).astype(np.float32)


def _finite_difference_cams(model, x, class_ids, target="act", eps=1e-2):
    """Grad-CAM from a central-difference gradient of the head (independent of our autodiff;
    the formula is ``explainer.methods``'); other tensors crossing the cut are held fixed."""
    split = split_model(infer_shapes(model), target, ["logits"])
    features = ort.InferenceSession(split.features.SerializeToString())
    cut = dict(zip(split.cut_tensors, features.run(None, {"input": x})))
    act = cut[target]
    head = ort.InferenceSession(split.head.SerializeToString())

    def logit(b, c, a):
        feeds = {n: v[b : b + 1] for n, v in cut.items()}
        return head.run(None, {**feeds, target: a})[0][0, c]

    cams = np.zeros((x.shape[0], class_ids.shape[1], *act.shape[2:]))
    for b in range(x.shape[0]):
        for k, c in enumerate(class_ids[b]):
            grad = np.zeros_like(act[b : b + 1], dtype=np.float64)
            for idx in np.ndindex(grad.shape):
                up, down = act[b : b + 1].copy(), act[b : b + 1].copy()
                up[idx] += eps
                down[idx] -= eps
                grad[idx] = (logit(b, c, up) - logit(b, c, down)) / (2 * eps)
            cams[b, k] = compute_cams(act[b : b + 1], grad, "gradcam")[0]
    return cams


def test_explain_matches_finite_difference_gradcam(bundle, tiny_cnn):
    x = _inputs(2)
    e = Explainer(bundle, optimization="none").explain(x, targets=[[0, 3], [4, 1]])
    ref = _finite_difference_cams(tiny_cnn, x, e.class_ids)
    np.testing.assert_allclose(e.cams, ref, rtol=2e-3, atol=2e-4 * np.abs(ref).max())


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
    explainer = Explainer(bundle)
    calls = []
    original = explainer.features_session.run
    monkeypatch.setattr(
        explainer.features_session, "run", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
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
    assert sorted(p.name for p in path.iterdir()) == ["features.onnx", "head.onnx", "manifest.json"]
    loaded = Bundle.load(path)
    assert loaded.manifest == bundle.manifest
    x = _inputs(2)
    np.testing.assert_array_equal(
        Explainer(loaded).explain(x).cams, Explainer(bundle).explain(x).cams
    )
    # the runtime accepts a path too
    assert Explainer(path).explain(x).cams.shape == (2, 1, 8, 8)


def test_large_bundles_use_external_data(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_module, "EXTERNAL_DATA_THRESHOLD", 0)
    path = bundle.save(tmp_path / "b")
    assert (path / "features.onnx.data").is_file()
    loaded = Bundle.load(path)
    x = _inputs(1)
    np.testing.assert_array_equal(
        Explainer(loaded).explain(x).cams, Explainer(bundle).explain(x).cams
    )


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


def test_head_with_a_skip_tensor_across_the_cut(tiny_cnn):
    """A residual edge crossing the cut makes the head read two tensors: the runtime then runs
    the head once per target column and must still give finite-difference Grad-CAM."""
    model = copy.deepcopy(tiny_cnn)
    graph = model.graph
    conv2 = next(n for n in graph.node if n.name == "conv2")
    del conv2.attribute[:]
    conv2.attribute.extend([helper.make_attribute("pads", [1, 1, 1, 1])])  # keep 16x16
    conv3 = next(n for n in graph.node if n.name == "conv3")
    conv3.input[0] = "skip"
    index = [n.name for n in graph.node].index("conv3")
    graph.node.insert(index, helper.make_node("Add", ["act", "r1"], ["skip"], name="skip_add"))
    bundle = build_bundle(model, "act")
    assert bundle.manifest["head"]["inputs"] == ["act", "r1"]
    x = _inputs(2)
    e = Explainer(bundle, optimization="none").explain(x, targets=[[0, 3, 1], [4, 1, 2]])
    ref = _finite_difference_cams(model, x, e.class_ids)
    error = np.linalg.norm((e.cams - ref).reshape(6, -1), axis=1) / np.linalg.norm(
        ref.reshape(6, -1), axis=1
    )
    assert error.max() < 2e-3, error
