"""``onnxcam evaluate``'s report.html: a leaderboard row per method (means, 95% intervals, time
per image, sanity verdict) and the deletion/insertion curves as inline SVG; static and
offline, and rendered in headless Chromium (where Playwright and a Chromium are installed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_tiny_cnn
from PIL import Image
from test_report import CHROMIUM, CHROMIUM_FLAGS

from explainer.cli import main
from explainer.evaluation.api import Z95
from explainer.evaluation.report import mean_curves

PRE = '{"resize": [16, 16], "crop": null}'
METHODS = ("gradcam", "gradcam++", "layercam")
STEPS = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate_report")
    onnx.save(make_tiny_cnn(), root / "tiny.onnx")
    rng = np.random.default_rng(0)
    images = []
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name)
        images.append(str(root / name))
    out = root / "eval"
    code = main(["evaluate", str(root / "tiny.onnx"), *images, "--layer", "act",
                 "--preprocessing", PRE, "--methods", ",".join(METHODS), "--targets", "top2",
                 "--metrics", "deletion,insertion,avg-drop,sanity", "--steps", str(STEPS),
                 "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_metrics_json_has_intervals_and_times(run):
    document = json.loads((run / "metrics.json").read_text())
    for method in METHODS:
        result = document["methods"][method]
        values = np.array([v["value"] for v in result["values"] if v["metric"] == "deletion"])
        assert result["count"]["deletion"] == len(values) == 6  # 3 images x top2
        half = Z95 * values.std(ddof=1) / np.sqrt(len(values))
        assert result["ci95"]["deletion"] == pytest.approx(
            [values.mean() - half, values.mean() + half])
        assert result["seconds_per_image"]["explain"] > 0
        assert result["seconds_per_image"]["evaluate"] > 0
        assert len(mean_curves(result, "insertion")) == STEPS + 1


def test_report_is_one_static_offline_page(run):
    page = (run / "report.html").read_text()
    assert "<script" not in page and not re.search(r"(src|href)=['\"]?(https?:|//)", page)
    assert "@import" not in page and "url(" not in page
    body = re.search(r"<table class='leaderboard'>.*?<tbody>(.*?)</tbody>", page).group(1)
    assert body.count("<tr>") == len(METHODS)
    document = json.loads((run / "metrics.json").read_text())
    for method in METHODS:  # each mean and its interval, as written in metrics.json
        result = document["methods"][method]
        assert f"<td>{method}</td>" in body
        low, high = result["ci95"]["avg-drop"]
        assert f"{result['means']['avg-drop']:.4g}<span class='ci'>[{low:.4g}, {high:.4g}]" in body
    assert body.count("passed (&rho;") == len(METHODS)
    for metric in ("deletion", "insertion"):
        figure = re.search(rf"<figure class='curve' data-metric='{metric}'>.*?</figure>",
                           page).group(0)
        lines = re.findall(r"<polyline[^>]*points='([^']*)'", figure)
        assert len(lines) == len(METHODS)
        assert all(len(points.split()) == STEPS + 1 for points in lines)


def test_report_renders_in_headless_chromium(run):
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no chromium (apt-get install chromium)")
    errors, requests = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto((run / "report.html").as_uri())
        assert page.locator("table.leaderboard tbody tr").count() == len(METHODS)
        names = page.eval_on_selector_all("table.leaderboard tbody tr td:first-child",
                                          "els => els.map(e => e.textContent)")
        assert names == list(METHODS)
        for metric in ("deletion", "insertion"):
            counts = page.eval_on_selector_all(
                f"figure[data-metric='{metric}'] polyline",
                "els => els.map(e => e.points.numberOfItems)")
            assert counts == [STEPS + 1] * len(METHODS)
            box = page.locator(f"figure[data-metric='{metric}'] svg").bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 150
        browser.close()
    assert not errors, errors
    assert all(url.startswith("file://") for url in requests), requests
