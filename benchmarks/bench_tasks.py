"""Cost of segmentation and text-recognition maps relative to one inference.

One run on one machine, batch 1, 2 threads (``--threads``):

* PP-OCRv4's text detector (DBNet) and recognizer (SVTR, CTC), trained, as the
  ``rapidocr-onnxruntime`` 1.4.4 wheel ships them (fetched once with ``pip download``), on
  scikit-image's photographed page (the longer side to 736) and its title line (height 48);
* torchvision's ``deeplabv3_mobilenet_v3_large`` (seeded random weights, 21 classes, exported by
  torch.onnx at any size), 512x512.

Rows, in milliseconds (median over ``--rounds`` of block medians, as ``bench_gradcam``):
``inference`` is plain ONNX Runtime on the same ``.onnx`` file at its default settings (threads
aside: spinning on), the baseline a user would run; the others are ``Explainer.explain`` with
the default method (LayerCAM): one region, every region, one class over its mask (through the
two graphs, and through the explanation graph where the bundle has one), the whole string,
every character.

Usage: ``python benchmarks/bench_tasks.py [--json benchmarks/tasks_results.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from bench_gradcam import block_median_ms

from explainer import Explainer
from explainer.bridge import export_onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import wheel_models as wm  # noqa: E402
from test_ocr_wheel import DET_PREPROCESSING, REC_PREPROCESSING  # noqa: E402


def _plain(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _deeplab(folder: Path, size: int) -> Path:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=False).eval()

    class Out(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)["out"]

    path = folder / "deeplabv3.onnx"
    x = torch.rand(1, 3, size, size)
    torch.onnx.export(Out().eval(), (x,), str(path), input_names=["x"], output_names=["out"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cache = ROOT / "build" / "wheel_models"
    rows: list[dict[str, Any]] = []

    def measure(model: str, runs: dict[str, Any], shape: tuple[int, ...]) -> None:
        times = block_median_ms(runs, args.rounds, args.block)
        base = times["inference"]
        for key, ms in times.items():
            rows.append({"model": model, "row": key, "ms": round(ms, 2),
                         "vs_inference": round(ms / base, 3), "input": list(shape),
                         "threads": args.threads})

    page = wm.page_image()
    det = wm.fetch_wheel_model("rapidocr_det", cache)
    explainer = Explainer(export_onnx(det, preprocessing=DET_PREPROCESSING), threads=args.threads)
    x = explainer.preprocess(page)
    plain = _plain(det, args.threads)
    n = len(explainer.explain(x, threshold=0.3).regions[0])
    measure("PP-OCRv4 det", {
        "inference": lambda: plain.run(None, {"x": x}),
        "one region": lambda: explainer.explain(x, targets="top1", threshold=0.3),
        f"every region (x{n})": lambda: explainer.explain(x, threshold=0.3),
    }, x.shape)

    rec = wm.fetch_wheel_model("rapidocr_rec", cache)
    explainer = Explainer(export_onnx(rec, preprocessing=REC_PREPROCESSING), threads=args.threads)
    x = explainer.preprocess(page.crop((0, 0, 240, 34)))
    plain = _plain(rec, args.threads)
    n = len(explainer.explain(x).items[0])
    measure("PP-OCRv4 rec", {
        "inference": lambda: plain.run(None, {"x": x}),
        "the string": lambda: explainer.explain(x, targets="string"),
        f"every character (x{n})": lambda: explainer.explain(x),
    }, x.shape)

    folder = Path(tempfile.mkdtemp(prefix="onnxcam-bench-"))
    path = _deeplab(folder, args.size)
    explainer = Explainer(export_onnx(path), threads=args.threads)
    x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    plain = _plain(path, args.threads)
    top = explainer.explain(x, targets="top1").regions[0][0].class_id
    graph = explainer.graph
    runs = {"inference": lambda: plain.run(None, {"x": x}),
            "one class (explanation graph)": lambda: explainer.explain(x, targets=[top])}

    def two_graphs() -> None:
        explainer.graph = None
        try:
            explainer.explain(x, targets=[top])
        finally:
            explainer.graph = graph

    runs["one class (two graphs)"] = two_graphs
    if graph is None:
        del runs["one class (explanation graph)"]
    measure("deeplabv3_mobilenet_v3_large", runs, x.shape)

    print("| model | input | row | ms | x inference |")
    print("|---|---|---|---:|---:|")
    for row in rows:
        shape = "x".join(map(str, row["input"][2:]))
        print(f"| {row['model']} | {shape} | {row['row']} | {row['ms']:.1f} | "
              f"{row['vs_inference']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
