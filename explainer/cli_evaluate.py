"""``onnxcam evaluate``: the evaluation metrics of one or more CAM methods on images, written to
``OUT/metrics.json`` and ``OUT/report.html`` with a per-method table on stdout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

__all__ = ["EVALUATE_EXAMPLES", "evaluate_options", "run_evaluate"]

EVALUATE_EXAMPLES = """examples:
  onnxcam evaluate model.onnx cat.jpg dog.jpg --methods gradcam,gradcam++ \\
      --metrics deletion,insertion,avg-drop,road --out eval
  onnxcam evaluate bundle/ images/ --metrics pointing,energy --boxes boxes.json --out eval
  onnxcam evaluate yolov8n.onnx street.jpg --methods gradcam,layercam \\
      --metrics avg-drop,deletion,insertion,pointing --conf 0.4 --out eval

Detectors, segmenters and text recognizers are scored by each explained detection's,
region's or character's own score; pointing and energy use each item's own region when no
--boxes are given (a detection's box, a region's mask, a character's input columns).
boxes.json maps an image's file name (or path as given) to its boxes [[x0, y0, x1, y1], ...]
in the original image's pixels. OUT/report.html shows a leaderboard of the methods and their
deletion/insertion curves.
"""


def evaluate_options(parser: argparse.ArgumentParser) -> None:
    """The ``evaluate`` command's own options (the model's come from the ``explain`` ones)."""
    from .evaluation import DEFAULT_METRICS

    add = parser.add_argument
    add("images", nargs="+", metavar="PATH",
        help="image files, folders and glob patterns ('photos/*.jpg')")
    add("--methods", default=None,
        help="comma-separated CAM methods (default: the bundle's: gradcam; layercam for "
             "detectors, segmenters and text recognizers)")
    add("--metrics", default=",".join(DEFAULT_METRICS),
        help="comma-separated metrics: avg-drop, increase, deletion, insertion, road, "
             "road-morf, road-lerf, pointing, energy, sanity (default: %(default)s)")
    add("--boxes", default=None, help="JSON file of boxes per image (pointing, energy)")
    add("--targets", default=None,
        help="what to explain, as for explain (default: top1; every detection, class or "
             "character)")
    add("--conf", type=float, default=None,
        help="detectors: confidence threshold of the detections (default: 0.25)")
    add("--iou", type=float, default=None, help="detectors: IoU threshold of the NMS "
                                                "(default: 0.45)")
    add("--threshold", type=float, default=None,
        help="segmenters with one sigmoid map: the probability a region's pixels exceed "
             "(default: 0.5)")
    add("--score", default="probability", choices=["probability", "logit"],
        help="the score the metrics read (default: probability)")
    add("--steps", type=int, default=50, help="deletion/insertion steps (default: 50)")
    add("--batch-size", type=int, default=64, help="model inputs per graph run (default: 64)")
    add("--seed", type=int, default=0, help="seed of ROAD's noise and the sanity check")
    add("--out", default="onnxcam_eval", help="output directory (metrics.json, report.html)")
    add("--quiet", action="store_true", help="no progress bar")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _boxes(path: str | None, images: list[Path], geometry: list[Any]) -> list[Any] | None:
    """Each image's boxes from the JSON file, in model-input pixels."""
    if path is None:
        return None
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"--boxes {path}: cannot read it as JSON ({err})") from None
    out = []
    for image, geo in zip(images, geometry, strict=True):
        boxes = table.get(str(image), table.get(image.name))
        if boxes is None:
            raise UsageError(f"--boxes {path}: no entry for {image} (keys are file names or "
                             "paths as given)")
        (sx, sy), (ox, oy) = geo.scale, geo.offset
        out.append([[b[0] * sx + ox, b[1] * sy + oy, b[2] * sx + ox, b[3] * sy + oy]
                    for b in boxes])
    return out


def _table(results: dict[str, Any]) -> str:
    """A small text table: one row per method, one column per metric's mean."""
    metrics = list(dict.fromkeys(m for r in results.values() for m in r.means()))
    width = max(len(m) for m in [*results, "method"])
    lines = ["  ".join(["method".ljust(width), *(m.rjust(10) for m in metrics)])]
    for method, result in results.items():
        means = result.means()
        lines.append("  ".join([method.ljust(width),
                                *(f"{means.get(m, float('nan')):10.4g}" for m in metrics)]))
    return "\n".join(lines)


def _task_options(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """The explain options of the bundle's task (--conf, --iou; --threshold), where given."""
    names = {"detect": ("conf", "iou"), "segment": ("threshold",)}.get(task, ())
    for name in ("conf", "iou", "threshold"):
        if getattr(args, name) is not None and name not in names:
            raise UsageError(f"--{name} does not apply to a {task} bundle")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_evaluate(args: argparse.Namespace) -> int:
    """``onnxcam evaluate``: explain the images with each method, evaluate, write
    ``metrics.json`` and ``report.html``; the exit code (1 when a sanity check fails)."""
    from .cli_commands import _explainer, _targets
    from .evaluation import evaluate, get_metric
    from .evaluation.report import write_report
    from .image import preprocess_with_geometry
    from .inputs import collect_images

    metrics = _split(args.metrics)
    for name in metrics:
        get_metric(name)
    images = collect_images(args.images, recursive=False, exclude=args.out)
    explainer = _explainer(args)
    with explainer:
        methods = _split(args.methods) if args.methods else [explainer.default_method]
        if explainer.preprocessing is None:
            raise UsageError(f"{args.model} records no preprocessing; pass --preprocessing")
        x, geometry = preprocess_with_geometry(images, explainer.preprocessing)
        boxes = _boxes(args.boxes, images, geometry)
        options = _task_options(args, explainer.task)
        targets = _targets(args.targets)
        extra = {**options, "geometry": geometry} if explainer.task != "classify" else {}
        results, seconds = {}, {}
        for method in methods:
            started = time.perf_counter()
            explanation = explainer.explain(x, targets=targets, method=method, **extra)
            explained = time.perf_counter() - started
            results[method] = result = evaluate(
                explainer, x, explanation, metrics, score=args.score, steps=args.steps,
                batch_size=args.batch_size, seed=args.seed, boxes=boxes,
                progress=not args.quiet and sys.stderr.isatty(),
                task_options={**options, "targets": targets}
                if explainer.task != "classify" else None)
            seconds[method] = {"explain": explained / len(images),
                               "evaluate": result.seconds / len(images)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "model": str(args.model), "images": [str(i) for i in images],
        "metrics": {m: {"direction": get_metric(m).direction,
                        "definition": get_metric(m).definition} for m in metrics},
        "methods": {m: {**r.to_dict(), "seconds_per_image": seconds[m]}
                    for m, r in results.items()},
    }
    (out / "metrics.json").write_text(json.dumps(document, indent=2, default=_json))
    report = write_report(out / "report.html", json.loads(json.dumps(document, default=_json)))
    print(_table(results))
    failed = [m for m, r in results.items() if r.sanity is not None and not r.sanity["passed"]]
    for method in failed:
        print(f"sanity check failed for {method}: {results[method].sanity['message']}")
    print(f"metrics: {out / 'metrics.json'}")
    print(f"report: {report}")
    return 1 if failed else 0


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
