"""Explain a trained object detector as it ships in a PyPI wheel, with no PyTorch installed.

The detector is ddddocr's ``common_det.onnx`` (MIT; a YOLOX-Tiny character detector, output
``[1, 3549, 6]`` with undecoded boxes). The script downloads the wheel once (``pip download``),
exports the bundle (the format and the head's inputs are told from the file), explains every
detection on a rendered image and on scikit-image's photographed page, and writes the figures::

    python examples/detector.py --out detector_out

Each figure shows the input with the explained boxes (numbered) and one LayerCAM map per
detection with its box.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import wheel_models as wm  # noqa: E402

from explainer import Explainer  # noqa: E402
from explainer.bridge import export_onnx  # noqa: E402
from explainer.image import prepare_with_geometry  # noqa: E402
from explainer.visualize import figure  # noqa: E402

#: ddddocr's preprocessing: letterbox at the top left (grey 114), BGR, raw 0..255 pixels
PREPROCESSING = {"resize": None, "crop": None, "letterbox": [416, 416],
                 "letterbox_align": "topleft", "channels": "BGR", "scale": 1.0,
                 "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="detector_out")
    parser.add_argument("--cache", default=str(ROOT / "build" / "wheel_models"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = wm.fetch_wheel_model("ddddocr_det", Path(args.cache))
    explainer = Explainer(export_onnx(model, preprocessing=PREPROCESSING, labels=["character"]))
    images = {"glyphs": wm.sample_image()}
    try:
        images["page"] = wm.page_image()
    except ImportError:  # scikit-image is the demo extra
        pass
    for name, image in images.items():
        explanation = explainer.explain_images([image], targets="top4", conf=0.1)
        shown, _ = prepare_with_geometry(image, explainer.preprocessing)
        k = explanation.count(0)
        path = out / f"detector_{name}.png"
        figure(shown, list(explanation.heatmaps[0, :k]), explanation.titles(0), tile=200,
               boxes=[d.box for d in explanation.detections[0]]).save(path)
        print(f"{path}: {k} detection(s): {', '.join(explanation.titles(0))}")


if __name__ == "__main__":
    main()
