"""``onnxcam evaluate``: metrics.json, the per-method table, boxes in original image pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_tiny_cnn
from PIL import Image

from explainer.cli import main

PRE = '{"resize": [16, 16], "crop": null}'


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, list[str]]:
    model = tmp_path / "tiny.onnx"
    onnx.save(make_tiny_cnn(), model)
    rng = np.random.default_rng(0)
    images = []
    for name in ("a.png", "b.png"):
        path = tmp_path / name
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    return str(model), images


def test_evaluate_writes_metrics_json_and_a_table(files, tmp_path, capsys):
    model, images = files
    boxes = tmp_path / "boxes.json"
    # the whole image in original pixels (32 x 32): every map points inside, all its energy
    boxes.write_text(json.dumps({"a.png": [[0, 0, 32, 32]], "b.png": [[0, 0, 32, 32]]}))
    out = tmp_path / "eval"
    code = main(["evaluate", model, *images, "--layer", "act", "--preprocessing", PRE,
                 "--methods", "gradcam,gradcam++", "--metrics",
                 "deletion,avg-drop,pointing,energy,sanity", "--boxes", str(boxes),
                 "--steps", "4", "--out", str(out), "--quiet"])
    assert code == 0
    document = json.loads((out / "metrics.json").read_text())
    assert set(document["methods"]) == {"gradcam", "gradcam++"}
    assert document["metrics"]["deletion"]["direction"] == "lower"
    gradcam = document["methods"]["gradcam"]
    assert gradcam["means"]["pointing"] == 1.0
    assert gradcam["means"]["energy"] == pytest.approx(1.0)
    assert gradcam["sanity"]["passed"] is True
    assert len([v for v in gradcam["values"] if v["metric"] == "deletion"]) == 2
    table = capsys.readouterr().out
    assert "gradcam++" in table and "deletion" in table and "metrics.json" in table


def test_evaluate_rejects_an_unknown_metric(files, tmp_path, capsys):
    model, images = files
    code = main(["evaluate", model, *images, "--preprocessing", PRE, "--metrics", "nope",
                 "--out", str(tmp_path / "eval")])
    assert code == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err


def test_evaluate_needs_an_entry_per_image_in_boxes(files, tmp_path, capsys):
    model, images = files
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.png": [[0, 0, 8, 8]]}))
    code = main(["evaluate", model, *images, "--layer", "act", "--preprocessing", PRE,
                 "--metrics", "pointing", "--boxes", str(boxes), "--out", str(tmp_path / "e")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no entry for" in err and "b.png" in err
