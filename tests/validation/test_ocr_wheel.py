"""Trained OCR models as they ship in a PyPI wheel (rapidocr-onnxruntime 1.4.4's PP-OCRv4 text
detector and recognizer, Apache-2.0), explained from the files as shipped. Torch-free.

The detector (DBNet, a sigmoid map) is a ``segment`` / ``binary`` bundle: each text region above
the threshold gets a map, and the map lies in the region. The recognizer (SVTR, CTC) is a
``sequence`` / ``ctc`` bundle: its vocabulary comes from the file's metadata, the decoded string
equals a plain ONNX Runtime run decoded here independently, and each character's map peaks over
that character's columns. The images are rendered with Pillow's default font.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import wheel_models as wm
from PIL import Image, ImageDraw, ImageFont

from explainer import Bundle, Explainer
from explainer.bridge import export_onnx
from explainer.cli import main

ROOT = Path(__file__).resolve().parents[2]
#: rapidocr's own normalization: BGR, (x / 255 - 0.5) / 0.5; the detector takes sides that are
#: multiples of 32 (here: the longer side to 736, padded with white at the right and bottom)
DET_PREPROCESSING = {"resize": None, "crop": None, "letterbox": 736, "stride": 32,
                     "letterbox_align": "topleft", "pad_value": 255, "channels": "BGR",
                     "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
#: the recognizer: the line scaled to a height of 48
REC_PREPROCESSING = {"resize": 48, "crop": None, "channels": "BGR",
                     "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
LINE = "onnxcam 2026"


def _fetch(name: str) -> Path:
    try:
        return wm.fetch_wheel_model(name, ROOT / "build" / "wheel_models")
    except wm.WheelModelUnavailable as err:  # no package index reachable
        pytest.skip(f"rapidocr's wheel cannot be downloaded: {err}")


def line_image(text: str = LINE) -> Image.Image:
    """One line of black text on white, 40 px high."""
    font = ImageFont.load_default(size=28)
    width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) + 16
    image = Image.new("RGB", (width, 40), "white")
    ImageDraw.Draw(image).text((8, 4), text, fill="black", font=font)
    return image


@pytest.fixture(scope="module")
def det_bundle() -> Bundle:
    return export_onnx(_fetch("rapidocr_det"), preprocessing=DET_PREPROCESSING)


@pytest.fixture(scope="module")
def rec_path() -> Path:
    return _fetch("rapidocr_rec")


def test_the_text_detector_explains_each_text_region_inside_it(det_bundle: Bundle) -> None:
    manifest = det_bundle.manifest
    assert manifest["task"] == "segment" and manifest["format"]["name"] == "binary"
    assert manifest["format"]["explained"] == "logits"  # before the Sigmoid
    assert manifest["target"]["shape"][1] == 96  # the neck's fused map (a Concat), 1/4 size
    page = wm.document_image()
    with Explainer(det_bundle) as explainer:
        x, geometry = explainer.preprocess(page), None
        e = explainer.explain_images([page], threshold=0.3)
        session = ort.InferenceSession(str(_fetch("rapidocr_det")),
                                       providers=["CPUExecutionProvider"])
        probability = session.run(None, {"x": x})[0][0, 0]
    regions = e.regions[0]
    assert e.method == "layercam" and len(regions) >= 5 and geometry is None
    shares = []
    for k, region in enumerate(regions):
        x1, y1, x2, y2 = (int(round(v)) for v in region.box)
        assert probability[y1:y2, x1:x2].max() > 0.3  # the model's own map agrees
        assert region.image_box is not None and region.image_box[2] <= page.width + 1
        heat = e.heatmaps[0, k]
        inside = heat[max(y1 - 8, 0):y2 + 8, max(x1 - 8, 0):x2 + 8].sum()
        shares.append(inside / heat.sum())
    assert np.median(shares) > 0.9, shares  # measured: 0.99 and more


def test_the_text_recognizer_reads_the_line_and_maps_each_character(rec_path: Path) -> None:
    bundle = export_onnx(rec_path, preprocessing=REC_PREPROCESSING)
    manifest = bundle.manifest
    assert manifest["task"] == "sequence" and manifest["format"]["name"] == "ctc"
    assert manifest["format"]["explained"] == "logits"  # through the converter's softmax
    vocabulary = {p.key: p.value for p in onnx.load(rec_path).metadata_props}["character"]
    assert manifest["labels"] == ["<blank>", *vocabulary.split("\n"), " "]
    with Explainer(bundle) as explainer:
        x = explainer.preprocess(line_image())
        e = explainer.explain(x)
    # the package's decoding, done here on a plain ONNX Runtime run
    session = ort.InferenceSession(str(rec_path), providers=["CPUExecutionProvider"])
    best = session.run(None, {"x": x})[0][0].argmax(-1)
    kept = [v for t, v in enumerate(best) if v != 0 and (t == 0 or best[t - 1] != v)]
    text = "".join(manifest["labels"][v] for v in kept)
    assert e.sequence[0].text == text == LINE
    characters = e.items[0]
    assert [c.text for c in characters] == [c for c in LINE]
    width = x.shape[3] / e.cams.shape[3]  # input columns per timestep
    for k, character in enumerate(characters):
        if character.text == " ":
            continue
        peak = int(e.heatmaps[0, k].sum(axis=0).argmax())
        assert character.box[0] - width <= peak < character.box[2] + width, (character, peak)


def test_the_command_line_reads_and_maps_a_line_without_preprocessing(
        rec_path: Path, tmp_path: Path, capsys) -> None:
    line_image().save(tmp_path / "line.png")
    # a PaddleOCR dictionary file (one of its characters is a whitespace one: kept)
    vocabulary = {p.key: p.value for p in onnx.load(rec_path).metadata_props}["character"]
    (tmp_path / "keys.txt").write_text(vocabulary + "\n", "utf-8")
    code = main(["explain", str(rec_path), str(tmp_path / "line.png"), "--out",
                 str(tmp_path / "out"), "--targets", "string+characters", "--labels",
                 str(tmp_path / "keys.txt")])
    assert code == 0
    row = json.loads((tmp_path / "out" / "summary.json").read_text())["images"][0]
    assert row["text"] == LINE and len(row["characters"]) == 1 + len(LINE)
    assert row["characters"][0]["index"] == -1 and row["characters"][0]["text"] == LINE
    assert f"read {LINE!r}" in capsys.readouterr().out
