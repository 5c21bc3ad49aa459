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

ROOT = Path(__file__).resolve().parents[1]
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
             "node_modules": web / "node_modules", "bundle": bundle, "photo.png": photo,
             "labels.txt": Path(explainer.__file__).parent / "data" / "imagenet_classes.txt"}
    for name, target in links.items():
        (site / name).symlink_to(Path(target).resolve())  # absolute: the dir may be relative
    return site


@pytest.mark.slow
def test_web_example_gives_pythons_heatmaps(lite0_dir, lite0_bundle, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    site = _site(tmp_path, lite0_bundle, lite0_dir / "chelsea.png")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1000, "height": 420})
            page.goto(f"http://127.0.0.1:{server.server_port}/index.html?topk=3")
            page.wait_for_function("window.onnxcam || window.onnxcamError", timeout=180_000)
            error = page.evaluate("window.onnxcamError || null")
            assert error is None, error
            result = page.evaluate("window.onnxcam")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web_example.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()
    x = np.asarray(result["input"], np.float32).reshape(result["inputShape"])
    heatmaps = np.asarray(result["heatmaps"], np.float32).reshape(result["heatmapShape"])
    expected = Explainer(lite0_bundle).explain(x, top_k=3)
    assert result["classIds"] == expected.class_ids[0].tolist()
    assert np.abs(heatmaps - expected.heatmaps).max() <= 1e-4
