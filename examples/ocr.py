"""Explain trained OCR models as they ship in a PyPI wheel, with no PyTorch installed.

rapidocr-onnxruntime 1.4.4 (Apache-2.0) ships PaddleOCR's PP-OCRv4 text detector (DBNet: a
sigmoid map of text) and text recognizer (SVTR with a CTC head). The script downloads the wheel
once (``pip download``), exports both bundles (the task, the format and the vocabulary are told
from the files), explains every text region of scikit-image's photographed page and every
character of its title line, writes the figures and prints the time of each explanation against
plain inference (ONNX Runtime's defaults, median of repeated blocks)::

    python examples/ocr.py --out ocr_out
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import wheel_models as wm  # noqa: E402
from test_ocr_wheel import DET_PREPROCESSING, REC_PREPROCESSING  # noqa: E402

from explainer import Explainer  # noqa: E402
from explainer.bridge import export_onnx  # noqa: E402
from explainer.visualize import figure, overlay  # noqa: E402


def _median_ms(run, repeats: int = 5, block: int = 3) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(block):
            run()
        times.append((time.perf_counter() - start) / block)
    return 1000 * statistics.median(times)


def _stack(rows: list[Image.Image], titles: list[str]) -> Image.Image:
    """Images one below the other, each with its title on the left."""
    pad, label = 4, 60
    width = max(r.width for r in rows) + label + 2 * pad
    out = Image.new("RGB", (width, sum(r.height + pad for r in rows) + pad), "white")
    draw, y = ImageDraw.Draw(out), pad
    for row, title in zip(rows, titles):
        out.paste(row, (label + pad, y))
        draw.text((pad, y + row.height // 2 - 6), title, fill="black")
        y += row.height + pad
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="ocr_out")
    parser.add_argument("--cache", default=str(ROOT / "build" / "wheel_models"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    page = wm.page_image()

    det_path = wm.fetch_wheel_model("rapidocr_det", Path(args.cache))
    with Explainer(export_onnx(det_path, preprocessing=DET_PREPROCESSING,
                               labels=["text"])) as explainer:
        x = explainer.preprocess(page)
        e = explainer.explain(x, threshold=0.3)
        shown = Image.fromarray(((x[0].transpose(1, 2, 0)[..., ::-1] * 0.5 + 0.5) * 255)
                                .clip(0, 255).astype(np.uint8))
        regions = e.regions[0][:4]
        figure(shown, e.heatmaps[0, : len(regions)], [f"{k + 1}: {r.title()}" for k, r in
                                                      enumerate(regions)],
               boxes=[r.box for r in regions], tile=368).save(out / "ocr_regions.png")
        session = ort.InferenceSession(str(det_path), providers=["CPUExecutionProvider"])
        plain = _median_ms(lambda: session.run(None, {"x": x}))
        explained = _median_ms(lambda: explainer.explain(x, threshold=0.3))
        one = _median_ms(lambda: explainer.explain(x, targets="top1", threshold=0.3))
        print(f"detector {x.shape[2]}x{x.shape[3]}: {len(e.regions[0])} regions; inference "
              f"{plain:.1f} ms, one region {one:.1f} ms ({one / plain:.2f}x), every region "
              f"{explained:.1f} ms ({explained / plain:.2f}x)")

    rec_path = wm.fetch_wheel_model("rapidocr_rec", Path(args.cache))
    line = page.crop((0, 0, 240, 34))
    with Explainer(export_onnx(rec_path, preprocessing=REC_PREPROCESSING)) as explainer:
        x = explainer.preprocess(line)
        e = explainer.explain(x)
        shown = line.resize((x.shape[3], x.shape[2]))
        rows = [shown] + [overlay(shown, e.heatmaps[0, k], alpha=0.55)
                          for k in range(min(len(e.items[0]), 8))]
        titles = ["input"] + [repr(c.text) for c in e.items[0][:8]]
        _stack(rows, titles).save(out / "ocr_characters.png")
        session = ort.InferenceSession(str(rec_path), providers=["CPUExecutionProvider"])
        plain = _median_ms(lambda: session.run(None, {"x": x}))
        every = _median_ms(lambda: explainer.explain(x))
        string = _median_ms(lambda: explainer.explain(x, targets="string"))
        print(f"recognizer {x.shape[2]}x{x.shape[3]}: read {e.sequence[0].text!r}; inference "
              f"{plain:.1f} ms, the string {string:.1f} ms ({string / plain:.2f}x), each of "
              f"{len(e.items[0])} characters {every:.1f} ms ({every / plain:.2f}x)")
    print(f"figures written to {out.resolve()}")


if __name__ == "__main__":
    main()
