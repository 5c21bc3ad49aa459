"""Detectors exported as users export them, explained through the ONNX files and checked against
torch autograd on the same model objects: Ultralytics YOLOv8n and YOLO11n (their own exporter,
any input size) and a YOLOv5-layout model (objectness, three anchors per cell).

The automatic target is where the features enter the detection head, one tensor per stride (a
layer sweep); each layer's map must equal the map computed from torch autograd's gradient of the
same detection's score at that layer (total derivative, as a hook in torch gives it).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

import yolo_models as ym  # noqa: E402

from explainer import Explainer  # noqa: E402
from explainer.bridge import export_onnx  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

#: float32 rounding of the two implementations: YOLO11n reaches ~8e-5 against float64 autograd
TOLERANCE = 2e-4


def _layercam(gradient: np.ndarray, activation: np.ndarray) -> np.ndarray:
    return np.maximum((np.maximum(gradient, 0) * activation).sum(axis=0), 0)


def _gradcam(gradient: np.ndarray, activation: np.ndarray) -> np.ndarray:
    return np.maximum((gradient.mean(axis=(1, 2))[:, None, None] * activation).sum(axis=0), 0)


def _relative(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-12))


@pytest.fixture(scope="module")
def yolov8n(tmp_path_factory: pytest.TempPathFactory):
    model = ym.build_yolo("yolov8n.yaml", seed=0)
    path = ym.export_yolo(model, tmp_path_factory.mktemp("yolo") / "yolov8n.onnx", 640)
    return model, path, export_onnx(path)


def _images(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, *shape), dtype=np.float32)


def _check_layers(explanation, reference, names, method) -> None:
    formula = {"layercam": _layercam, "gradcam": _gradcam}[method]
    layers = explanation.layers
    assert layers is not None and len(layers) == 3
    for (layer, maps), index in zip(layers.items(), names, strict=True):
        expected = formula(reference.gradients[index][0].astype(np.float64),
                           reference.features[index][0].astype(np.float64))
        error = _relative(maps.cams[0, 0], expected)
        assert error < TOLERANCE, f"{layer}: relative L2 {error:.2e}"


def test_yolov8n_bundle_is_a_detector_cut_where_the_head_starts(yolov8n) -> None:
    model, path, bundle = yolov8n
    manifest = bundle.manifest
    names = ym.yolo_onnx_names(onnx.load(path))
    assert manifest["task"] == "detect"
    assert manifest["format"]["name"] == "yolov8" and manifest["format"]["classes"] == 80
    assert manifest["format"]["explained"] == "logits"
    assert manifest["head"]["logits"] == names.logits  # the class logits before the sigmoid
    assert [layer["tensor"] for layer in manifest["layers"]] == [
        names.features[i] for i in sorted(names.features)]
    assert manifest["preprocessing"]["letterbox"] == 640


def test_a_dynamically_quantized_yolov8n_is_cut_where_the_float_one_is(yolov8n, tmp_path) -> None:
    """onnxruntime's ``quantize_dynamic`` of the YOLOv8n file: the quantizers that read the
    head's inputs lie outside the head's module scope (named after the tensors they read), and
    the image is read by one. The layout and the cut are the float model's, and each detection
    gets a map (the integer ops' gradient rules are checked against finite differences in the
    rule table)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _, path, bundle = yolov8n
    target = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(path), str(target), weight_type=QuantType.QUInt8)
    quantized = export_onnx(target)
    assert [layer["tensor"] for layer in quantized.manifest["layers"]] == [
        layer["tensor"] for layer in bundle.manifest["layers"]]
    explanation = Explainer(quantized).explain(_images((640, 640)), targets="top2", conf=0.0)
    assert len(explanation.detections[0]) == 2
    for k in range(2):
        assert np.isfinite(explanation.heatmaps[0, k]).all()
        assert explanation.heatmaps[0, k].std() > 0.01


@pytest.mark.parametrize("size", [(640, 640), (480, 640)])
@pytest.mark.parametrize("method", ["layercam", "gradcam"])
def test_yolov8n_detection_maps_equal_torch_autograd(yolov8n, size, method) -> None:
    model, _, bundle = yolov8n
    x = _images(size)
    explanation = Explainer(bundle).explain(x, targets="top2", method=method, conf=0.0)
    assert explanation.task == "detect" and explanation.heatmaps.shape == (1, 2, *size)
    for k, detection in enumerate(explanation.detections[0]):
        reference = ym.yolo_reference(model, torch.from_numpy(x), detection.candidate,
                                      detection.class_id)
        assert explanation.scores[0, k] == pytest.approx(
            reference.logits[0, detection.class_id, detection.candidate], abs=1e-4)
        single = Explainer(bundle).explain(x, targets={"box": detection.box,
                                                       "class": detection.class_id},
                                           method=method, conf=0.0)
        assert single.detections[0][0].candidate == detection.candidate
        _check_layers(single, reference, sorted(reference.gradients), method)


def test_yolov8n_probability_score_is_the_sigmoid_chain_rule(tmp_path) -> None:
    model = ym.build_yolo("yolov8n.yaml", seed=1, class_bias=-2.0)  # Sigmoid exact near -2
    bundle = export_onnx(ym.export_yolo(model, tmp_path / "y.onnx", 320))
    x = _images((320, 320), seed=1)
    e = Explainer(bundle).explain(x, targets="top1", method="layercam", score="probability",
                                  conf=0.0)
    d = e.detections[0][0]
    reference = ym.yolo_reference(model, torch.from_numpy(x), d.candidate, d.class_id)
    z = reference.logits[0, d.class_id, d.candidate].astype(np.float64)
    s = 1 / (1 + np.exp(-z))
    assert e.scores[0, 0] == pytest.approx(s, rel=1e-4)
    for (layer, maps), index in zip(e.layers.items(), sorted(reference.gradients)):
        expected = _layercam(reference.gradients[index][0] * s * (1 - s),
                             reference.features[index][0])
        assert _relative(maps.cams[0, 0], expected) < TOLERANCE, layer


def test_yolo11n_detection_maps_equal_torch_autograd(tmp_path) -> None:
    model = ym.build_yolo("yolo11n.yaml", seed=0)
    bundle = export_onnx(ym.export_yolo(model, tmp_path / "yolo11n.onnx", 640))
    assert bundle.manifest["format"]["name"] == "yolov8"
    x = _images((640, 640), seed=2)
    e = Explainer(bundle).explain(x, targets="top1", method="layercam", conf=0.0)
    d = e.detections[0][0]
    reference = ym.yolo_reference(model, torch.from_numpy(x), d.candidate, d.class_id)
    _check_layers(e, reference, sorted(reference.gradients), "layercam")


def test_yolov5_layout_confidence_maps_equal_torch_autograd(tmp_path) -> None:
    model = ym.build_yolov5_like(seed=0, nc=6, bias_prior=False)
    bundle = export_onnx(ym.export_yolov5_like(model, tmp_path / "v5.onnx", 320))
    assert bundle.manifest["format"]["name"] == "yolov5"
    assert bundle.manifest["format"]["classes"] == 6
    x = _images((320, 320), seed=3)
    explainer = Explainer(bundle)
    for score in ("probability", "logit"):
        e = explainer.explain(x, targets="top1", method="layercam", score=score, conf=0.0)
        d = e.detections[0][0]
        reference = ym.yolov5_reference(model, torch.from_numpy(x), d.candidate, d.class_id)
        row = reference.output[0, d.candidate].astype(np.float64)
        s = row[4] * row[5 + d.class_id]
        assert d.score == pytest.approx(s, rel=1e-4)
        scale = 1.0 if score == "probability" else 1.0 / (s * (1 - s))
        assert len(e.layers) == 3
        for (layer, maps), level in zip(e.layers.items(), range(3)):
            expected = _layercam(reference.conf_gradients[level][0] * scale,
                                 reference.features[level][0])
            assert _relative(maps.cams[0, 0], expected) < TOLERANCE, (score, layer)
