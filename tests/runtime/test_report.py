"""The HTML report of a folder run: static, offline, paged; rendered in headless Chromium
(where Playwright and a Chromium are installed), with a screenshot kept under build/artifacts/."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_corpus import make_cnn
from PIL import Image

from explainer.cli import main
from explainer.report import page_name, write_report

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "artifacts"
CHROMIUM = os.environ.get("ONNXCAM_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
LABELS = ["tabby cat", "espresso", "golden retriever", "sports car", "lighthouse", "volcano",
          "daisy", "pizza", "mountain bike", "red fox"]


def _photo(path: Path, seed: int, size=(72, 96)) -> None:
    """A smooth, photo-like test picture (blobs on a gradient), so overlays look like CAMs."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([yy * 0.6 + 0.2, xx * 0.5 + 0.3, 0.5 + 0.3 * np.sin(6 * xx + seed)], -1)
    for _ in range(3):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - blob) + blob * rng.uniform(0, 1, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run of 7 images (one broken) into a report, top-3 classes with labels."""
    root = tmp_path_factory.mktemp("report")
    model = root / "model.onnx"
    onnx.save(make_cnn("NCHW", softmax=True), model)
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    for i in range(6):
        _photo(root / "photos" / ("indoor" if i % 2 else "outdoor") / f"photo{i}.png", i)
    (root / "photos" / "outdoor" / "damaged.png").write_bytes(b"GIF89a broken")
    out = root / "out"
    code = main(["explain", str(model), str(root / "photos"), "--recursive", "--top-k", "3",
                 "--labels", str(labels), "--report", "--out", str(out), "--quiet"])
    assert code == 1
    return out


def test_report_is_static_and_offline(run):
    html = (run / "index.html").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert html.count("<article class='entry") == len(summary["images"]) == 7
    assert "1 image(s) failed" in html and "damaged.png" in html and "ImageError" in html
    for row in summary["images"]:  # class names and probabilities of every target
        for label, probability in zip(row.get("labels") or [], row.get("probabilities") or []):
            assert label in LABELS and f"<td>{label}</td>" in html
            assert f"<td>{probability:.4f}</td>" in html
    assert "model.onnx" in html and "features_node" in html and "gradcam" in html
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", html)  # nothing fetched
    assert "<script" not in html and "@import" not in html and "url(" not in html
    assert html.count("loading='lazy'") == 6


def test_report_pages(run, tmp_path):
    summary = json.loads((run / "summary.json").read_text())
    for row in summary["images"]:
        if row["overlay"]:
            (tmp_path / row["overlay"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(run / row["overlay"], tmp_path / row["overlay"])
    (tmp_path / "page-4.html").write_text("a stale page of a longer report")
    pages = write_report(tmp_path, summary, page_size=3)
    assert [p.name for p in pages] == [page_name(i) for i in (1, 2, 3)]
    assert not (tmp_path / "page-4.html").exists()
    texts = [p.read_text() for p in pages]
    assert [t.count("<article class='entry") for t in texts] == [3, 3, 1]
    assert all("href='page-2.html'" in t or "class='current'>2<" in t for t in texts)


def test_report_renders_in_headless_chromium(run):
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no chromium (apt-get install chromium)")
    summary = json.loads((run / "summary.json").read_text())
    requests = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("request", lambda request: requests.append(request.url))
        page.goto((run / "index.html").as_uri())
        entries = page.locator("article.entry")
        assert entries.count() == len(summary["images"])
        images = page.locator("article.entry img")
        for i in range(images.count()):  # lazy images load once scrolled to
            images.nth(i).scroll_into_view_if_needed()
        page.wait_for_function(
            "[...document.images].every(img => img.complete && img.naturalWidth > 0)",
            timeout=20_000,
        )
        widths = page.eval_on_selector_all("article.entry img", "els => els.map(e => "
                                           "e.naturalWidth)")
        assert len(widths) == summary["counts"]["ok"] == 6 and min(widths) > 0
        assert page.locator("section.errors li").count() == 1
        page.evaluate("window.scrollTo(0, 0)")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert all(url.startswith("file://") for url in requests), requests
    with Image.open(ARTIFACTS / "report.png") as shot:
        assert shot.width >= 1100 and shot.height > 900


def _task_row(image: str, key: str, items: list[dict], **extra) -> dict:
    return {"image": image, "status": "ok", "overlay": f"{Path(image).stem}_cam.png",
            "class_ids": [], "labels": None, "scores": [], "probabilities": [], key: items,
            "note": None if items else "nothing here", **extra}


def test_report_lists_each_tasks_items_with_their_boxes(tmp_path):
    """Detections, regions and characters share one table: numbered, labelled (the class id
    where there is no label), the score, the task's own column and the box in the image."""
    detection = {"label": None, "class_id": 7, "score": 0.75, "box": [1, 2, 3, 4],
                 "image_box": [10, 20, 30, 40]}
    region = {"label": "road", "class_id": 0, "score": 0.5, "area": 1234.4, "box": [5, 6, 7, 8],
              "image_box": None}
    character = {"text": "Q", "class_id": 3, "score": 0.25, "timesteps": [4, 5, 9],
                 "box": [0, 0, 9, 16], "image_box": [0, 0, 18, 32]}
    rows = [_task_row("/in/street.jpg", "detections", [detection]),
            _task_row("/in/empty.jpg", "detections", []),
            _task_row("/in/scene.jpg", "regions", [region]),
            _task_row("/in/line.jpg", "characters", [character], text="Q!")]
    summary = {"model": "m.onnx", "counts": {"ok": 4, "error": 0}, "images": rows}
    page = write_report(tmp_path, summary)[0].read_text()
    tables = re.findall(r"<article.*?</article>", page)
    assert len(tables) == 4
    assert "<th>class</th>" in tables[0] and "<th>area</th>" not in tables[0]
    assert "<td>1</td><td>7</td><td>0.7500</td>" in tables[0]  # no label: the class id
    assert "<td>10, 20, 30, 40</td>" in tables[0]  # the box in the original image
    assert "nothing here" in tables[1] and "<table" not in tables[1]
    assert "<th>area</th>" in tables[2] and "<td>road</td>" in tables[2]
    assert "<td>1234</td><td>5, 6, 7, 8</td>" in tables[2]  # no image box: the model's
    assert "read: <b>Q!</b>" in tables[3] and "<th>character</th>" in tables[3]
    assert "<td>Q</td><td>0.2500</td>" in tables[3] and "<td>4-9</td>" in tables[3]
