"""Segmenters, text recognizers and an image encoder exported by torch.onnx, explained from the
``.onnx`` files and checked against torch autograd on the same model objects.

* torchvision's DeepLabV3 / LR-ASPP (MobileNetV3) and FCN (ResNet-50) and a tiny Hugging Face
  Segformer: a class over its predicted mask (argmax, held constant) explains
  ``sum(M * z_c)`` of the logits z (``score="logit"``) or ``sum(M * softmax(z)_c)``
  (``"probability"``);
* a DBNet-style text detector (one sigmoid map): each connected region above the threshold,
  or a box, explains ``sum(R * z)`` of the scores before the Sigmoid;
* a CRNN (bidirectional LSTM or GRU, CTC output ``[T, N, V]``): each greedily decoded
  character explains the sum of its class's scores (before the log-softmax) at its timesteps,
  ``"string"`` all of them;
* a CLIP-like encoder (``[N, D]`` embedding): the dot product or cosine similarity with a
  reference vector.

The cut tensors are the bundle's own (``manifest["layers"]``, or ``manifest["target"]``); each
is found in the torch model by value (:func:`segmentation_models.reference`), and every
layer's map must equal the map of torch's float64 autograd gradient of the same score at
that tensor.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import segmentation_models as sm  # noqa: E402

from explainer import Explainer  # noqa: E402
from explainer.bridge import export_onnx  # noqa: E402

pytestmark = pytest.mark.torch

#: float32 (ONNX Runtime) against float64 autograd, as the detector tests
TOLERANCE = 2e-4
FORMULAS = {"layercam": sm.layercam, "gradcam": sm.gradcam}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """torch on one thread: these models are small, and with a core busy elsewhere two OpenMP
    threads wait on each other (a float64 forward took seconds instead of 0.1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _layers(bundle) -> list[dict]:
    manifest = bundle.manifest
    return manifest.get("layers") or [manifest["target"]]


def _check_maps(explanation, k: int, layers: list[dict], truth: sm.Reference, method: str,
                what: object) -> None:
    """Every layer's map of target ``k`` equals the map of torch's activation and gradient."""
    formula = FORMULAS[method]
    if len(layers) > 1:
        assert explanation.layers is not None and list(explanation.layers) == [
            layer["layer"] for layer in layers]
        np.testing.assert_array_equal(explanation.cams,
                                      explanation.layers[layers[0]["layer"]].cams)
    for layer, feature, gradient in zip(layers, truth.features, truth.gradients, strict=True):
        ours = (explanation.layers[layer["layer"]].cams if len(layers) > 1
                else explanation.cams)[0, k]
        expected = formula(gradient[0], feature[0])
        assert ours.shape == expected.shape, (what, layer["tensor"])
        assert np.any(gradient), (what, layer["tensor"], "no gradient reaches the layer")
        error = sm.relative_error(ours, expected)
        assert error < TOLERANCE, (what, layer["tensor"], f"relative L2 {error:.2e}")


def _bundle(case: sm.Case, tmp_path_factory: pytest.TempPathFactory, name: str, **export):
    path = sm.export(case, tmp_path_factory.mktemp(name) / f"{name}.onnx")
    return path, export_onnx(path, **export)


def _values(path, x: np.ndarray, layers: list[dict]) -> list[np.ndarray]:
    return sm.onnx_values(path, x, [layer["tensor"] for layer in layers])


# --- segmenters: a class over its predicted mask ---------------------------------------------
def _masks(case: sm.Case, x: torch.Tensor) -> tuple[np.ndarray, list[int]]:
    """(torch's predicted class map [h, w], the predicted classes by area, largest first)."""
    with torch.no_grad():
        logits = case.logits(case.model, x)[0].numpy()
    pred = logits.argmax(axis=0)
    ids, counts = np.unique(pred, return_counts=True)
    return pred, [int(ids[i]) for i in np.argsort(-counts, kind="stable")]


def _class_score(c: int, mask: np.ndarray, score: str):
    m = torch.from_numpy(mask)

    def f(z: torch.Tensor) -> torch.Tensor:
        values = z[0, c] if score == "logit" else torch.softmax(z, dim=1)[0, c]
        return (values * m.to(z.dtype)).sum()

    return f


def _check_classes(case, path, bundle, method: str, score: str, targets) -> None:
    x = case.image
    e = Explainer(bundle).explain(x.numpy(), targets=targets, method=method, score=score)
    pred, order = _masks(case, x)
    h, w = pred.shape
    scale = x.shape[2] * x.shape[3] / (h * w)
    regions = e.regions[0]
    expected = order if targets == "classes" else [targets]
    assert len(expected) >= 2 or targets != "classes", "one class predicted everywhere"
    assert [r.class_id for r in regions] == expected
    assert e.cams.shape[:2] == (1, len(expected))
    layers = _layers(bundle)
    values = _values(path, x.numpy(), layers)
    masks = [pred == region.class_id for region in regions]
    truths = sm.references(case, x, [_class_score(r.class_id, m, score)
                                     for r, m in zip(regions, masks, strict=True)], values)
    for k, (region, mask, truth) in enumerate(zip(regions, masks, truths, strict=True)):
        assert region.area == pytest.approx(mask.sum() * scale)
        assert e.scores[0, k] == pytest.approx(truth.score, rel=1e-4, abs=1e-4)
        _check_maps(e, k, layers, truth, method, (region.class_id, score))


@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=[pytest.mark.slow] if name == "fcn_resnet50" else [])
    for name in sm.SEGMENTERS])
def torchvision_segmenter(request, tmp_path_factory):
    name = request.param
    case = sm.build_torchvision(name)
    path, bundle = _bundle(case, tmp_path_factory, name)
    return name, case, path, bundle


def test_torchvision_segmenter_bundle_explains_the_logits_where_the_decoder_starts(
        torchvision_segmenter) -> None:
    name, case, path, bundle = torchvision_segmenter
    manifest = bundle.manifest
    fmt = manifest["format"]
    assert manifest["task"] == "segment" and fmt["name"] == "masks" and fmt["classes"] == 4
    assert fmt["explained"] == "logits" and fmt["tensor"] == fmt["outputs"]["masks"]
    # the classifier's inputs: the backbone's last map (LR-ASPP: also its stride-8 map)
    values = _values(path, case.image.numpy(), _layers(bundle))
    inputs = sm.module_inputs(case, "classifier", case.image)
    assert len(values) == len(inputs) == (2 if name.startswith("lraspp") else 1)
    for value, expected in zip(values, inputs, strict=True):
        np.testing.assert_allclose(value, expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("method", ["layercam", "gradcam"])
def test_torchvision_segmenter_class_maps_equal_torch_autograd(torchvision_segmenter,
                                                               method) -> None:
    _, case, path, bundle = torchvision_segmenter
    _check_classes(case, path, bundle, method, "logit", "classes")


def test_torchvision_segmenter_probability_score_equals_torch_autograd(
        torchvision_segmenter) -> None:
    """``sum(M * softmax(z)_c)``: the softmax's chain rule over every class at every pixel."""
    _, case, path, bundle = torchvision_segmenter
    _, order = _masks(case, case.image)
    _check_classes(case, path, bundle, "layercam", "probability", order[0])


@pytest.fixture(scope="module")
def segformer(tmp_path_factory):
    pytest.importorskip("transformers")
    case = sm.build_segformer()
    path, bundle = _bundle(case, tmp_path_factory, "segformer")
    return case, path, bundle


def test_segformer_bundle_is_a_layer_sweep_over_the_encoder_stages(segformer) -> None:
    case, path, bundle = segformer
    manifest = bundle.manifest
    assert manifest["task"] == "segment" and manifest["format"]["name"] == "masks"
    assert manifest["format"]["explained"] == "logits"
    layers = _layers(bundle)
    assert [layer["shape"][1:] for layer in layers] == [[8, 16, 16], [16, 8, 8]]
    where = sm.locate(case, case.image, _values(path, case.image.numpy(), layers))
    assert [name for _, name in where] == ["segformer.stages.0:out", "segformer.stages.1:out"]


@pytest.mark.parametrize(("method", "score"), [("layercam", "logit"), ("gradcam", "logit"),
                                               ("layercam", "probability")])
def test_segformer_class_maps_equal_torch_autograd(segformer, method, score) -> None:
    """Logits at a quarter of the input's size: the masks are on that grid."""
    case, path, bundle = segformer
    _check_classes(case, path, bundle, method, score, "classes")


# --- a DBNet-style binary map: regions and boxes ------------------------------------------------
@pytest.fixture(scope="module")
def dbnet(tmp_path_factory):
    case = sm.build_dbnet()
    path, bundle = _bundle(case, tmp_path_factory, "dbnet")
    with torch.no_grad():
        z = case.logits(case.model, case.image)[0, 0].numpy().astype(np.float64)
    threshold = sm.choose_threshold(1 / (1 + np.exp(-z)))
    return case, path, bundle, threshold


def _sum_score(mask: np.ndarray, score: str):
    m = torch.from_numpy(mask)

    def f(z: torch.Tensor) -> torch.Tensor:
        values = z[0, 0] if score == "logit" else torch.sigmoid(z[0, 0])
        return (values * m.to(z.dtype)).sum()

    return f


def test_dbnet_bundle_explains_the_scores_before_the_sigmoid_at_the_neck(dbnet) -> None:
    case, path, bundle, _ = dbnet
    manifest = bundle.manifest
    fmt = manifest["format"]
    assert manifest["task"] == "segment" and fmt["name"] == "binary"
    assert fmt["explained"] == "logits" and fmt["activation"] == "sigmoid"
    assert fmt["tensor"] != fmt["outputs"]["masks"]  # the Sigmoid's input
    layers = _layers(bundle)
    where = sm.locate(case, case.image, _values(path, case.image.numpy(), layers))
    assert [name for _, name in where] == ["head.0:in"]  # what the module `head` reads


@pytest.mark.parametrize("method", ["layercam", "gradcam"])
def test_dbnet_region_maps_equal_torch_autograd(dbnet, method) -> None:
    case, path, bundle, threshold = dbnet
    x = case.image
    e = Explainer(bundle).explain(x.numpy(), targets="regions", method=method,
                                  threshold=threshold)
    with torch.no_grad():
        z = case.logits(case.model, x)[0, 0].numpy()
    found = [r for r in sm.components(1 / (1 + np.exp(-z.astype(np.float64))) > threshold)
             if r.sum() >= 4]
    regions = e.regions[0]
    assert len(regions) == len(found) >= 2
    assert [r.area for r in regions] == sorted((float(r.sum()) for r in found), reverse=True)
    layers = _layers(bundle)
    values = _values(path, x.numpy(), layers)
    masks = []
    for region in regions:  # the connected region with the same box and area
        assert region.kind == "region" and region.class_id == 0
        for mask in found:
            ys, xs = np.nonzero(mask)
            if (float(mask.sum()) == region.area and region.box == (
                    xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)):
                masks.append(mask)
                break
        else:
            raise AssertionError(f"no connected region has the box {region.box}")
    truths = sm.references(case, x, [_sum_score(m, "logit") for m in masks], values)
    for k, (region, truth) in enumerate(zip(regions, truths, strict=True)):
        assert e.scores[0, k] == pytest.approx(truth.score, rel=1e-4, abs=1e-4)
        _check_maps(e, k, layers, truth, method, region.box)


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_dbnet_box_map_equals_torch_autograd(dbnet, score) -> None:
    case, path, bundle, _ = dbnet
    x = case.image
    box = (8, 4, 40, 20)
    e = Explainer(bundle).explain(x.numpy(), targets={"box": box}, method="layercam",
                                  score=score)
    (region,) = e.regions[0]
    assert region.kind == "box" and region.box == box and region.area == 32 * 16
    mask = np.zeros(x.shape[2:], bool)
    mask[4:20, 8:40] = True
    layers = _layers(bundle)
    truth = sm.reference(case, x, _sum_score(mask, score), _values(path, x.numpy(), layers))
    assert e.scores[0, 0] == pytest.approx(truth.score, rel=1e-4)
    _check_maps(e, 0, layers, truth, "layercam", box)


def test_dbnet_given_seed_over_the_output_explains_the_scores_before_the_sigmoid(dbnet
                                                                                 ) -> None:
    """``seeds={model output: W}`` on a segmenter: ``sum(W * z)`` of the explained tensor the
    output stands for (the Sigmoid's input)."""
    case, path, bundle, _ = dbnet
    x = case.image
    weights = np.zeros(x.shape[1:], np.float32)[:1]  # [1, H, W]
    weights[0, 30:40, 10:50] = np.linspace(-1.0, 2.0, 40, dtype=np.float32)
    e = Explainer(bundle).explain(x.numpy(), seeds={"probabilities": weights},
                                  method="layercam")
    layers = _layers(bundle)
    w = torch.from_numpy(weights)
    truth = sm.reference(case, x, lambda z: (z[0] * w.to(z.dtype)).sum(),
                         _values(path, x.numpy(), layers))
    assert e.scores[0, 0] == pytest.approx(truth.score, rel=1e-4)
    _check_maps(e, 0, layers, truth, "layercam", "seeds")


# --- CRNN text recognizers: characters and the string ----------------------------------------
@pytest.fixture(scope="module", params=["LSTM", "GRU"])
def crnn(request, tmp_path_factory):
    case = sm.build_crnn(request.param)
    path, bundle = _bundle(case, tmp_path_factory, f"crnn_{request.param}", task="sequence")
    return request.param, case, path, bundle


def test_crnn_output_tnv_is_told_a_text_recognizer(crnn) -> None:
    """``[T, N, V]`` with N = 1 on the probe (T > 1): ``sequence``, format ``ctc``, layout
    ``TNV`` (module docstring of :mod:`exporters.onnx_frontend.tasks`), without ``task=``."""
    _, _, path, _ = crnn
    manifest = export_onnx(path).manifest
    assert manifest["task"] == "sequence"
    assert manifest["format"]["name"] == "ctc" and manifest["format"]["layout"] == "TNV"


def test_crnn_bundle_is_cut_at_the_last_feature_map_before_the_recurrence(crnn) -> None:
    rnn, case, path, bundle = crnn
    manifest = bundle.manifest
    fmt = manifest["format"]
    assert manifest["task"] == "sequence" and fmt["name"] == "ctc" and fmt["layout"] == "TNV"
    assert fmt["explained"] == "logits" and fmt["activation"] == "softmax"
    assert fmt["classes"] == 7
    layers = _layers(bundle)
    assert len(layers) == 1 and layers[0]["shape"] == [1, 8, 1, 16]
    where = sm.locate(case, case.image, _values(path, case.image.numpy(), layers))
    assert [name for _, name in where] == ["cnn.5:out"]  # the last pooling, height 1
    ops = {n.op_type for n in bundle.head.graph.node}
    assert rnn in ops or "Scan" in ops or "Loop" in ops


def _ctc_score(chars, score: str):
    def f(z: torch.Tensor) -> torch.Tensor:  # z [T, N, V]
        values = z[:, 0] if score == "logit" else torch.softmax(z[:, 0], dim=-1)
        return sum(values[steps, v].sum() for v, steps in chars)

    return f


@pytest.mark.parametrize(("method", "score"), [("layercam", "logit"), ("gradcam", "logit"),
                                               ("layercam", "probability")])
def test_crnn_character_maps_equal_torch_autograd(crnn, method, score) -> None:
    _, case, path, bundle = crnn
    x = case.image
    with torch.no_grad():
        chars = sm.ctc_greedy(case.logits(case.model, x)[:, 0].numpy())
    assert len(chars) >= 2
    e = Explainer(bundle).explain(x.numpy(), targets="characters", method=method, score=score)
    (transcript,) = e.sequence
    assert [(c.index, list(c.timesteps)) for c in transcript.characters] == chars
    assert [item.index for item in e.items[0]] == [v for v, _ in chars]
    layers = _layers(bundle)
    values = _values(path, x.numpy(), layers)
    truths = sm.references(case, x, [_ctc_score([c], score) for c in chars], values)
    for k, (char, truth) in enumerate(zip(chars, truths, strict=True)):
        assert e.scores[0, k] == pytest.approx(truth.score, rel=1e-4, abs=1e-5)
        _check_maps(e, k, layers, truth, method, char)


def test_crnn_string_map_equals_torch_autograd(crnn) -> None:
    _, case, path, bundle = crnn
    x = case.image
    with torch.no_grad():
        chars = sm.ctc_greedy(case.logits(case.model, x)[:, 0].numpy())
    e = Explainer(bundle).explain(x.numpy(), targets="string", method="layercam")
    (item,) = e.items[0]
    assert item.index == -1 and list(item.timesteps) == [t for _, steps in chars for t in steps]
    layers = _layers(bundle)
    truth = sm.reference(case, x, _ctc_score(chars, "logit"), _values(path, x.numpy(), layers))
    assert e.scores[0, 0] == pytest.approx(truth.score, rel=1e-4)
    _check_maps(e, 0, layers, truth, "layercam", "string")


# --- a CLIP-like encoder: similarity with a reference embedding --------------------------------
@pytest.fixture(scope="module")
def clip_like(tmp_path_factory):
    case = sm.build_clip_like()
    path, bundle = _bundle(case, tmp_path_factory, "clip_like")
    return case, path, bundle


def _embedding_score(v: np.ndarray, score: str):
    def f(z: torch.Tensor) -> torch.Tensor:  # z [1, D]
        ref = torch.from_numpy(v).to(z.dtype)
        dot = (z[0] * ref).sum()
        return dot if score == "dot" else dot / (z[0].norm() * ref.norm())

    return f


@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_clip_like_embedding_similarity_maps_equal_torch_autograd(clip_like, score) -> None:
    case, path, bundle = clip_like
    x = case.image
    v = np.random.default_rng(3).standard_normal(8)
    e = Explainer(bundle).explain(x.numpy(), targets={"embedding": v}, method="gradcam",
                                  score=score)
    assert bundle.manifest.get("task", "classify") == "classify"
    layers = _layers(bundle)
    values = _values(path, x.numpy(), layers)
    assert [name for _, name in sm.locate(case, x, values)] == ["trunk.2.2:out"]  # last ReLU
    truth = sm.reference(case, x, _embedding_score(v, score), values)
    assert e.scores[0, 0] == pytest.approx(truth.score, rel=1e-4, abs=1e-6)
    _check_maps(e, 0, layers, truth, "gradcam", score)


def test_clip_like_given_seed_is_the_dot_product(clip_like) -> None:
    """``seeds={output: v}``: the gradient of ``sum(v * output)``, the dot product's."""
    case, path, bundle = clip_like
    x = case.image
    v = np.random.default_rng(4).standard_normal(8)
    output = bundle.manifest["head"]["logits"]
    e = Explainer(bundle).explain(x.numpy(), seeds={output: v[None].astype(np.float32)},
                                  method="layercam")
    layers = _layers(bundle)
    truth = sm.reference(case, x, _embedding_score(v, "dot"), _values(path, x.numpy(), layers))
    assert e.scores[0, 0] == pytest.approx(truth.score, rel=1e-4, abs=1e-6)
    _check_maps(e, 0, layers, truth, "layercam", "seeds")
