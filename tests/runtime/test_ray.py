"""Explaining a Ray Dataset with one Explainer per actor, on a local Ray started here
(2 CPUs, no dashboard, no usage reporting: nothing leaves the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_cnn
from PIL import Image

from explainer import Explainer, Preprocessing
from exporters import build_bundle

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from explainer.ray_data import ExplainBatch, explain_dataset, output_stem  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_import_explainer_does_not_import_ray():
    code = "import sys, explainer, explainer.batch; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    bundle = build_bundle(make_tiny_cnn(), "act", labels=list("abcde"),
                          preprocessing=Preprocessing(resize=16, crop=16))
    bundle_dir = bundle.save(root / "bundle")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = root / "images" / f"{'ab'[i % 2]}" / f"img{i // 2}.png"  # same stems, 2 folders
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    broken = root / "images" / "broken.png"
    broken.write_bytes(b"not an image")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield root, bundle_dir, paths, str(broken)
    ray.shutdown()


def test_explain_a_table_of_paths(setup):
    root, bundle_dir, paths, broken = setup
    table = ray.data.from_items([{"path": p} for p in [*paths, broken]])
    rows = explain_dataset(table, bundle_dir, root / "out", top_k=2, concurrency=2,
                           batch_size=3).take_all()
    rows = {row["path"]: row for row in rows}
    assert set(rows) == {*paths, broken}
    assert rows[broken]["status"] == "error" and "broken.png" in rows[broken]["error"]
    assert list(rows[broken]["class_ids"]) == [-1, -1]
    explainer = Explainer(bundle_dir)
    overlays = set()
    for path in paths:
        row = rows[path]
        assert row["status"] == "ok" and row["error"] == ""
        expected = explainer.explain_images([path], top_k=2)
        np.testing.assert_array_equal(row["class_ids"], expected.class_ids[0])
        np.testing.assert_allclose(row["probabilities"], expected.probabilities[0], rtol=1e-5)
        assert list(row["labels"]) == expected.labels[0]
        np.testing.assert_allclose(np.load(row["heatmaps"]), expected.heatmaps[0], atol=1e-5)
        with Image.open(row["overlay"]) as img:
            img.load()
        overlays.add(row["overlay"])
    assert len(overlays) == len(paths)  # same stems in two folders: distinct files
    assert Path(rows[paths[0]]["overlay"]).name == output_stem(paths[0]) + "_cam.png"


def test_explain_read_images(setup):
    root, bundle_dir, paths, _ = setup
    images = ray.data.read_images([str(Path(p).parent) for p in paths[:2]], include_paths=True,
                                  mode="RGB")
    rows = explain_dataset(images, bundle_dir, root / "out2", save_npy=False).take_all()
    assert len(rows) == 6 and all(row["status"] == "ok" for row in rows)
    assert all(row["heatmaps"] == "" and Path(row["overlay"]).is_file() for row in rows)


def test_the_udf_without_ray(setup):
    """ExplainBatch is a plain class: one batch of numpy columns in, a table out."""
    root, bundle_dir, paths, broken = setup
    udf = ExplainBatch(bundle_dir, root / "out3", targets="top1+least")
    table = udf({"path": np.array([paths[0], broken], dtype=object)})
    assert list(table["status"]) == ["ok", "error"]
    assert table["class_ids"].shape == (2, 2) and table["probabilities"].dtype == np.float32
    with pytest.raises(Exception, match="'path' column"):
        udf({"image": np.zeros((1, 8, 8, 3), np.uint8)})


def test_a_detector_gets_its_detections_per_row(setup, tmp_path):
    """A detector finds its own number of detections in each image: a count and the items as
    JSON, the same as the Explainer gives."""
    from conftest import make_onnx_detector

    from explainer.bridge import export_onnx

    root, _, paths, broken = setup
    bundle = export_onnx(make_onnx_detector(tmp_path / "det.onnx"), ["stem.y", "f1", "down2.y"],
                         task="detect", format="yolov8").save(tmp_path / "det")
    rows = explain_dataset(ray.data.from_items([{"path": p} for p in [*paths[:3], broken]]),
                           bundle, root / "out4", targets="top3", conf=0.0).take_all()
    rows = {row["path"]: row for row in rows}
    assert rows[broken]["status"] == "error" and rows[broken]["count"] == 0
    explainer = Explainer(bundle)
    for path in paths[:3]:
        row = rows[path]
        assert row["status"] == "ok" and row["count"] == 3 and row["text"] == ""
        expected = explainer.explain_images([path], targets="top3", conf=0.0)
        items = json.loads(row["items"])
        assert [d["candidate"] for d in items] == [d.candidate for d in expected.detections[0]]
        np.testing.assert_allclose([d["score"] for d in items],
                                   [d.score for d in expected.detections[0]], rtol=1e-5)
        np.testing.assert_allclose(np.load(row["heatmaps"]), expected.heatmaps[0], atol=1e-5)
    with pytest.raises(Exception, match="unknown option"):
        ExplainBatch(bundle, root / "out5", threshold_typo=0.5)
