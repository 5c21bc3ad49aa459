"""export_onnx / candidate_layers / Explainer.from_onnx on the ONNX corpus (no torch)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from onnx_corpus import CORPUS, NUM_CLASSES, SIZE, make_cnn, to_layout
from PIL import Image

from explainer import Explainer, InputError, check_gradients
from explainer.gradcheck import random_inputs
from exporters import OnnxExportError, candidate_layers, export_onnx
from exporters.autodiff import MissingGradientRule
from exporters.graph import infer_shapes
from exporters.split import split_model


def _ort_outputs(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))


def _inputs(facts: dict, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if facts.get("uint8"):
        x = rng.integers(0, 256, (batch, 3, SIZE, SIZE), dtype=np.uint8)
    else:
        x = rng.standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    return to_layout(x, facts["layout"])


def _candidate(model: onnx.ModelProto, op_type: str) -> str:
    return next(c.tensor for c in candidate_layers(model) if c.op_type == op_type and c.clean_cut)


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_model_explained_end_to_end(name, tmp_path):
    build, facts = CORPUS[name]
    model = build()
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)

    explainer = Explainer.from_onnx(path)  # target="auto"
    manifest = explainer.bundle.manifest
    assert manifest["target"]["tensor"] == "features"
    assert manifest["target"]["layer"] == "features_node"
    assert manifest["target"]["layout"] == facts["layout"]
    assert manifest["input"]["layout"] == facts["layout"]
    assert manifest["input"]["dtype"] == ("uint8" if facts.get("uint8") else "float32")
    assert manifest["head"]["logits"] == "logits"  # pre-softmax logits when there is a softmax
    assert bool(manifest["export"].get("softmax")) == bool(facts.get("softmax"))

    x = _inputs(facts, batch=3)
    explanation = explainer.explain(x, top_k=2)
    assert explanation.heatmaps.shape == (3, 2, SIZE, SIZE)
    assert np.isfinite(explanation.heatmaps).all()
    assert explanation.heatmaps.min() >= 0 and explanation.heatmaps.max() <= 1
    assert (explanation.heatmaps.reshape(6, -1).max(axis=1) > 0).all()

    # the explained logits are the model's (probabilities = the model's softmax output)
    static = facts.get("batch")
    reference = {k: [] for k in ("logits", "probabilities")}
    for start in range(0, 3, static or 3):
        chunk = x[start : start + (static or 3)]
        if static and chunk.shape[0] < static:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], static - chunk.shape[0], 0)])
        outputs = _ort_outputs(model, chunk)
        for key in reference:
            if key in outputs:
                reference[key].append(outputs[key])
    if reference["logits"]:
        np.testing.assert_allclose(explanation.logits, np.concatenate(reference["logits"])[:3],
                                   rtol=1e-5, atol=1e-5)
    if reference["probabilities"]:
        probabilities = np.concatenate(reference["probabilities"])[:3]
        np.testing.assert_allclose(
            explanation.probabilities, np.take_along_axis(probabilities, explanation.class_ids, 1),
            rtol=1e-4, atol=1e-6,
        )

    report = check_gradients(explainer.bundle, x, explainer=explainer)
    assert report.passed, str(report)

    # the explanation graph (one run) gives what the two graphs and numpy give
    assert (explainer.graph is None) == bool(static)
    if explainer.graph is not None:
        two = Explainer(explainer.bundle, explanation_graph=False).explain(x, top_k=2)
        np.testing.assert_array_equal(explanation.class_ids, two.class_ids)
        error = np.linalg.norm((explanation.cams - two.cams).reshape(6, -1), axis=1)
        assert (error <= 1e-5 * np.linalg.norm(two.cams.reshape(6, -1), axis=1)).all()
        np.testing.assert_allclose(explanation.heatmaps, two.heatmaps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["nhwc_tf2onnx", "batchnorm", "uint8_nhwc", "opset_newest"])
@pytest.mark.parametrize("op_type", ["Add", "Relu"])
def test_gradient_matches_finite_differences_deep_in_the_network(name, op_type):
    build, facts = CORPUS[name]
    model = build()
    target = _candidate(model, op_type)  # first clean-cut Add (the residual) / Relu
    bundle = export_onnx(model, target=target)
    assert bundle.target_tensor == target
    report = check_gradients(bundle, _inputs(facts, batch=2, seed=1), directions=4)
    assert report.passed, str(report)
    assert report.errors.shape == (2, 5)


@pytest.mark.parametrize("name", ["static_batch", "static_batch_nchw"])
@pytest.mark.parametrize("where", ["first_relu", "features"])
def test_gradient_matches_onnx_ad(name, where):
    onnx_ad = pytest.importorskip("onnx_ad")
    build, facts = CORPUS[name]
    model = build()
    target = _candidate(model, "Relu") if where == "first_relu" else "features"
    bundle = export_onnx(model, target=target)
    explainer = Explainer(bundle)
    batch = facts["batch"]
    x = _inputs(facts, batch=batch, seed=2)
    features = explainer.runner.features(x)
    activation = features[target]
    class_ids = np.arange(batch) % NUM_CLASSES + 3
    seeds = np.eye(NUM_CLASSES, dtype=np.float32)[class_ids]
    _, ours = explainer.runner.head_session.run(
        [bundle.manifest["head"]["logits"], bundle.manifest["head"]["gradient"]],
        {**features, bundle.manifest["head"]["seed"]: seeds},
    )

    head = split_model(infer_shapes(model), target, ["logits"]).head
    adjoint = onnx_ad.reverse(head, inputs=[target], outputs=["logits"], layout="onnx")
    session = ort.InferenceSession(adjoint.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (theirs,) = session.run([f"adj_{target}"], {target: activation, "adj_logits": seeds[..., None]})
    theirs = theirs[..., 0]
    scale = np.abs(theirs).max()
    assert scale > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("method", ["gradcam++", "xgradcam", "layercam"])
def test_nhwc_explanation_graph_methods_equal_the_two_graphs(method):
    """Channel-last activations are transposed before every in-graph method."""
    bundle = export_onnx(make_cnn("NHWC"))
    x = to_layout(np.random.default_rng(5).standard_normal((2, 3, SIZE, SIZE))
                  .astype(np.float32), "NHWC")
    one = Explainer(bundle).explain(x, targets="top2", method=method)
    two = Explainer(bundle, explanation_graph=False).explain(x, targets="top2", method=method)
    assert Explainer(bundle).graph is not None and two.cams.max() > 0
    np.testing.assert_allclose(one.cams, two.cams, rtol=1e-4, atol=1e-5 * two.cams.max())
    np.testing.assert_allclose(one.heatmaps, two.heatmaps, atol=1e-4)


def test_nhwc_and_nchw_versions_give_the_same_cams():
    nchw, nhwc = Explainer(export_onnx(make_cnn("NCHW"))), Explainer(export_onnx(make_cnn("NHWC")))
    x = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    a = nchw.explain(x, targets="top2+least")
    b = nhwc.explain(to_layout(x, "NHWC"), targets="top2+least")
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.cams, b.cams, rtol=1e-4, atol=1e-5 * a.cams.max())
    np.testing.assert_allclose(a.heatmaps, b.heatmaps, atol=1e-4)


def test_static_batch_model_explains_any_batch_like_the_dynamic_one():
    static = Explainer(export_onnx(make_cnn("NHWC", batch=1)))
    dynamic = Explainer(export_onnx(make_cnn("NHWC")))
    assert static.spec.input.static_batch == 1 and dynamic.spec.input.static_batch is None
    x = _inputs({"layout": "NHWC"}, batch=3)
    a, b = static.explain(x, top_k=3), dynamic.explain(x, top_k=3)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.cams, b.cams, rtol=1e-4, atol=1e-5 * b.cams.max())


def test_static_batch_of_two_pads_an_odd_batch():
    explainer = Explainer(export_onnx(make_cnn("NCHW", batch=2)))
    dynamic = Explainer(export_onnx(make_cnn("NCHW")))
    x = _inputs({"layout": "NCHW"}, batch=3)
    np.testing.assert_allclose(explainer.explain(x, targets=[1, 2, 3]).cams,
                               dynamic.explain(x, targets=[1, 2, 3]).cams, rtol=1e-4, atol=1e-6)


def test_uint8_model_takes_uint8_pixels_and_images():
    explainer = Explainer(export_onnx(make_cnn("NHWC", uint8=True)))
    pre = explainer.preprocessing
    assert pre.dtype == "uint8" and pre.layout == "NHWC" and pre.size == (SIZE, SIZE)
    with pytest.raises(InputError, match="uint8"):
        explainer.explain(np.zeros((1, SIZE, SIZE, 3), np.float32))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    batch = explainer.preprocess([image, image])
    assert batch.dtype == np.uint8 and batch.shape == (2, SIZE, SIZE, 3)
    explanation = explainer.explain_images([image], top_k=2)
    assert explanation.heatmaps.shape == (1, 2, SIZE, SIZE)


def test_default_preprocessing_is_recorded_and_logged(caplog):
    with caplog.at_level("INFO", logger="exporters.onnx_frontend"):
        bundle = export_onnx(make_cnn("NCHW"))
    assert "assuming" in caplog.text and "auto target: features" in caplog.text
    pre = bundle.manifest["preprocessing"]
    assert pre["layout"] == "NCHW" and tuple(pre["crop"]) == (SIZE, SIZE)
    assert bundle.manifest["export"]["preprocessing_guessed"] is True


def test_softmax_output_is_explained_by_its_logits_and_said(caplog):
    model = make_cnn("NHWC", softmax=True)
    with caplog.at_level("INFO", logger="exporters.onnx_frontend"):
        bundle = export_onnx(model)
    assert "pre-softmax logits" in caplog.text
    assert bundle.manifest["head"]["logits"] == "logits"
    assert bundle.manifest["export"] == {**bundle.manifest["export"], "output": "probabilities",
                                         "explained": "logits", "softmax": "Softmax"}
    kept = export_onnx(model, pre_softmax=False)
    assert kept.manifest["head"]["logits"] == "probabilities"


def test_several_outputs_output_picks_one():
    model = make_cnn("NCHW", outputs=("embedding", "probabilities", "logits"))
    assert export_onnx(model).manifest["head"]["logits"] == "logits"  # softmax says which
    embedding = export_onnx(model, output="embedding")
    assert embedding.manifest["head"]["logits"] == "embedding"
    assert embedding.manifest["num_classes"] == 24
    assert export_onnx(model, output="logits").manifest["num_classes"] == NUM_CLASSES
    with pytest.raises(OnnxExportError, match="not an output"):
        export_onnx(model, output="scores")


def test_batch_size_read_upstream_is_read_from_the_target(caplog):
    model = make_cnn("NCHW", shape_batch=True)
    with caplog.at_level("INFO", logger="exporters.onnx_frontend"):
        bundle = export_onnx(model)
    assert "batch size read from 'features'" in caplog.text
    assert bundle.manifest["head"]["inputs"] == ["features"]  # no index tensor crosses the cut
    x = _inputs({"layout": "NCHW"}, batch=3)
    plain = Explainer(export_onnx(make_cnn("NCHW")))
    np.testing.assert_allclose(Explainer(bundle).explain(x, top_k=3).cams,
                               plain.explain(x, top_k=3).cams, rtol=1e-5, atol=1e-6)


def test_external_data_weights(tmp_path):
    model = make_cnn("NHWC")
    path = tmp_path / "model.onnx"
    onnx.save(onnx.ModelProto.FromString(model.SerializeToString()), path,
              save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.weights", size_threshold=0)
    assert (tmp_path / "model.weights").stat().st_size > 10_000
    from_file = Explainer.from_onnx(path)
    reference = Explainer(export_onnx(model))
    x = _inputs({"layout": "NHWC"}, batch=2)
    np.testing.assert_allclose(from_file.explain(x).cams, reference.explain(x).cams, rtol=1e-6)
    header = onnx.load(str(path), load_external_data=False)
    with pytest.raises(OnnxExportError, match="external file"):
        export_onnx(header)


def test_from_onnx_caches_bundles(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    onnx.save(make_cnn("NCHW"), path)
    cache = tmp_path / "cache"
    first = Explainer.from_onnx(path, cache_dir=cache)
    (entry,) = list(cache.iterdir())
    assert (entry / "manifest.json").is_file() and entry.name.startswith("m-")
    import explainer.bridge

    def fail(*args, **kwargs):
        raise AssertionError("the cached bundle should be used")

    monkeypatch.setattr(explainer.bridge, "export_onnx", fail)
    second = Explainer.from_onnx(path, cache_dir=cache)
    assert second.bundle.path == entry
    assert second.bundle.manifest["target"] == first.bundle.manifest["target"]
    monkeypatch.undo()
    Explainer.from_onnx(path, cache_dir=cache, target="add_16")  # another key
    assert len(list(cache.iterdir())) == 2


def test_target_by_tensor_or_node_name_and_errors():
    model = make_cnn("NCHW")
    assert export_onnx(model, target="features_node").target_tensor == "features"
    assert export_onnx(model, target="maxpool_18").target_tensor == "maxpool_18"
    with pytest.raises(OnnxExportError, match="neither a tensor nor a node"):
        export_onnx(model, target="layer9")
    with pytest.raises(OnnxExportError, match="rank-4"):
        export_onnx(model, target="logits")
    with pytest.raises(OnnxExportError, match="layout"):
        export_onnx(model, layout="NWHC")


def test_layout_can_be_given():
    bundle = export_onnx(make_cnn("NHWC"), target="features", layout="NHWC",
                         input_layout="NHWC")
    assert bundle.manifest["target"]["layout"] == "NHWC"


def test_old_opset_is_converted():
    model = make_cnn("NCHW", opset=13)
    model.opset_import[0].version = 12  # every op of this net means the same at opset 12
    bundle = export_onnx(model)
    assert bundle.target_tensor == "features"
    assert bundle.features.opset_import[0].version == 13


def _with_op_without_rule(model: onnx.ModelProto) -> onnx.ModelProto:
    """Insert Sin (no gradient rule) after the MaxPool (before the last conv)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = list(model.graph.node)
    index = next(i for i, n in enumerate(nodes) if n.op_type == "MaxPool")
    pooled = nodes[index].output[0]
    for node in nodes[index + 1 :]:
        for k, name in enumerate(node.input):
            if name == pooled:
                node.input[k] = "sin_out"
    nodes.insert(index + 1, helper.make_node("Sin", [pooled], ["sin_out"], name="odd_sin"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def test_candidates_report_clean_cuts_and_missing_rules():
    model = _with_op_without_rule(make_cnn("NCHW"))
    candidates = {c.tensor: c for c in candidate_layers(model)}
    assert list(candidates)[-1] == "features"
    assert candidates["features"].explainable and candidates["features"].op_type == "Relu"
    assert candidates["features"].shape == ("batch", 24, 8, 8)
    assert not candidates["maxpool_18"].differentiable
    assert candidates["maxpool_18"].unsupported_ops == ("Sin (odd_sin)",)
    assert candidates["sin_out"].differentiable
    # inside the residual block: the skip connection bypasses the branch
    assert not candidates["conv_11"].clean_cut and candidates["relu_8"].clean_cut
    assert candidates["add_16"].clean_cut
    assert export_onnx(model).target_tensor == "features"
    with pytest.raises(MissingGradientRule, match="Sin"):
        export_onnx(model, target="maxpool_18")


def test_candidates_of_nhwc_model_have_nhwc_layouts():
    candidates = candidate_layers(make_cnn("NHWC"))
    relus = [c for c in candidates if c.op_type == "Relu"]
    convs = [c for c in candidates if c.op_type == "Conv"]
    assert relus and all(c.layout == "NHWC" for c in relus)
    assert convs and all(c.layout == "NCHW" for c in convs)


def test_random_inputs_follow_the_manifest():
    bundle = export_onnx(make_cnn("NHWC", uint8=True, batch=1))
    x = random_inputs(bundle)
    assert x.dtype == np.uint8 and x.shape == (1, SIZE, SIZE, 3)


def test_rank4_class_scores_are_flattened():
    model = make_cnn("NHWC")  # Keras conv classifiers output [batch, 1, 1, classes]
    logits = model.graph.output[0]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 2]), "axes12"))
    model.graph.node.append(helper.make_node("Unsqueeze", ["logits", "axes12"], ["scores"]))
    del model.graph.output[:]
    model.graph.output.append(
        helper.make_tensor_value_info("scores", logits.type.tensor_type.elem_type,
                                      ["batch", 1, 1, NUM_CLASSES]))
    bundle = export_onnx(model)
    assert bundle.manifest["head"]["logits"] == "scores_flat"
    assert bundle.manifest["num_classes"] == NUM_CLASSES
    x = _inputs({"layout": "NHWC"}, batch=2)
    reference = Explainer(export_onnx(make_cnn("NHWC"))).explain(x, top_k=2)
    np.testing.assert_allclose(Explainer(bundle).explain(x, top_k=2).cams, reference.cams,
                               rtol=1e-5, atol=1e-6)


def test_layer_sweep_of_a_deployed_model_equals_single_layer_bundles():
    model = make_cnn("NCHW")
    candidates = [c.tensor for c in candidate_layers(model) if c.explainable]
    layers = candidates[-2:]
    sweep = export_onnx(model, target=layers[::-1])  # any order: cut at the first in the graph
    assert [entry["tensor"] for entry in sweep.manifest["layers"]] == layers
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    e = Explainer(sweep).explain(x, targets="top2")
    for entry in sweep.manifest["layers"]:
        single = Explainer(export_onnx(model, target=entry["tensor"])).explain(x, targets="top2")
        np.testing.assert_allclose(e.layers[entry["layer"]].cams, single.cams, rtol=1e-4,
                                   atol=1e-6)


def test_dynamically_quantized_model_is_explained_through_its_integer_ops(tmp_path):
    """onnxruntime's ``quantize_dynamic`` (each Conv and MatMul becomes DynamicQuantizeLinear ->
    ConvInteger / MatMulInteger -> Cast -> scaled; the image input is read by a quantizer): the
    layout is told and the target found as in the float model, and the head's gradient is the
    straight-through one: through the pooling and the MatMulInteger, the class's column of the
    dequantized weights over H*W, to float rounding."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(make_cnn(), source)
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8)
    quantized = onnx.load(target)
    ops = {n.op_type for n in quantized.graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops and "Conv" not in ops

    explainer = Explainer.from_onnx(target)
    manifest = explainer.bundle.manifest
    assert manifest["input"]["layout"] == "NCHW" and manifest["target"]["tensor"] == "features"
    x = _inputs({"layout": "NCHW"}, batch=2)
    features = explainer.runner.run_features(x)
    seeds = np.zeros((2, NUM_CLASSES), np.float32)
    seeds[0, 3], seeds[1, 7] = 1.0, 1.0
    _, gradient = explainer.runner.run_head(features, seeds)

    weights = {t.name: onnx.numpy_helper.to_array(t) for t in quantized.graph.initializer}
    node = next(n for n in quantized.graph.node if n.op_type == "MatMulInteger")
    zero_point = weights[node.input[3]].astype(np.float32)
    scale = next(weights[i] for n in quantized.graph.node if n.op_type == "Mul"
                 for i in n.input if i in weights and i.startswith("fc_w"))
    dequantized = (weights[node.input[1]].astype(np.float32) - zero_point) * scale
    h, w = features["features"].shape[2:]
    expected = np.stack([dequantized[:, 3], dequantized[:, 7]])[:, :, None, None] / (h * w)
    np.testing.assert_allclose(gradient, np.broadcast_to(expected, gradient.shape),
                               rtol=1e-5, atol=1e-7)
    cams = explainer.explain(x, targets=[3, 7]).cams
    assert np.isfinite(cams).all() and cams.max() > 0
