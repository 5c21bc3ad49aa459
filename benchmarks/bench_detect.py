"""Cost of detection maps relative to one inference, beside pytorch-grad-cam's recipes.

One run on one machine: an Ultralytics YOLOv8n built from its YAML with seeded random weights
(BatchNorm recalibrated, ``tests/yolo_models.py``), exported by Ultralytics' own exporter
(``dynamic=True``), 640x640 (``--size``), batch 1, 2 threads (``--threads``). onnxcam explains
the ``.onnx`` file at its automatic target (the three tensors entering the Detect head, fused);
pytorch-grad-cam 1.5.7 runs on the torch model the file was exported from (built again from
the same seed: the same weights) with the same three layers as ``target_layers``.

Rows, in milliseconds (median over ``--rounds`` of block medians, as ``bench_gradcam``; the
ONNX Runtime rows in one set of rounds, then pytorch-grad-cam's, so that torch's spinning
OpenMP threads never run beside an ONNX Runtime block). The ``.onnx`` file is exported in a
child process and the ONNX Runtime rows are timed before torch computes anything in this one,
as a user serving the file runs it: after torch has run and freed its buffers, glibc's
dynamic mmap threshold has grown and ONNX Runtime sessions created then ran YOLOv8n about 1.4x
slower here (71 ms against 51 ms; ``MALLOC_MMAP_THRESHOLD_`` fixed removes it), which slows
the baseline and onnxcam's runs alike and flatters the ratios:

* ``inference``: plain ONNX Runtime on the same ``.onnx`` file at its default settings (threads
  aside: spinning on), the baseline a user would run;
* ``onnxcam prediction pass``: the run every explanation starts with (the features graph and
  the head's forward as one graph, returning what the backward reads); its DFL softmax is in
  elementwise form (``explainer/fast_softmax.py``), which plain inference of the file is not;
* ``onnxcam <method> xK``: ``Explainer.explain(x, targets="topK", method=..., conf=0)``: the
  features graph, the head's forward once (the prediction pass), the NMS in numpy, the head's
  backward once per detection (pruned to the detection's level) and the maps (upsampled,
  fused over the three layers);
* ``onnxcam layercam x1, stride S``: one detection of each level (its best candidate, as a box
  target), the backward on the window of the maps it reaches (``explainer/backward_window.py``);
  the top detections of this random-weight model lie at stride 32, where the window is widest;
* ``pytorch-grad-cam EigenCAM``: its YOLO recipe (no target, one map);
* ``pytorch-grad-cam <method> xK``: the method with a detection target (the class probability
  of the detection's anchor, as its ``FasterRCNNBoxScoreTarget`` scores a box): K maps as one
  call on the image repeated K times, one target per row (its fastest way to K maps).

Usage: ``python benchmarks/bench_detect.py [--size 640] [--detections 1 10] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from bench_gradcam import block_median_ms

from explainer import Explainer
from explainer.bridge import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import yolo_models as ym  # noqa: E402


def _plain(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _Score:
    """pytorch-grad-cam target: the class probability of one anchor of one image's output."""

    def __init__(self, anchor: int, cls: int) -> None:
        self.anchor, self.cls = anchor, cls

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[4 + self.cls, self.anchor]


def _peer(method: str, model: torch.nn.Module, xt: torch.Tensor, picks: list[tuple[int, int]]):
    import pytorch_grad_cam as pgc

    layers = [model.model[i] for i in model.model[-1].f]
    cam = getattr(pgc, method)(model=model, target_layers=layers)
    if method == "EigenCAM":
        return cam, lambda: cam(xt, targets=None)
    batch = xt.repeat(len(picks), 1, 1, 1)
    targets = [_Score(a, c) for a, c in picks]
    return cam, lambda: cam(batch, targets=targets)


def _level_targets(explainer: Explainer, x: np.ndarray, size: int
                   ) -> list[tuple[int, dict[str, Any], float]]:
    """Per stride (8, 16, 32), the best candidate of that level as a box target: its own box
    and class (the candidate overlapping it most is itself), and the conf to explain it at."""
    found = explainer.explain(x, targets="top300", conf=0.0, method="eigencam").detections[0]
    bounds = np.cumsum([0, *((size // s) ** 2 for s in (8, 16, 32))])
    targets = []
    for level, stride in enumerate((8, 16, 32)):
        best = next((d for d in found if bounds[level] <= d.candidate < bounds[level + 1]
                     and d.box[0] < min(d.box[2], size) and d.box[1] < min(d.box[3], size)
                     and d.box[2] > 0 and d.box[3] > 0), None)
        if best is None:
            continue
        # conf just under its score: the box is matched among few detections (NMS over all
        # 8400 candidates at conf 0 would be most of the row)
        target = {"box": best.box, "class": best.class_id}
        conf = float(np.nextafter(np.float32(best.score), np.float32(0)))
        (got,) = explainer.explain(x, targets=target, conf=conf,
                                   method="eigencam").detections[0]
        assert got.candidate == best.candidate, (got, best)
        targets.append((stride, target, conf))
    return targets


def _build(size: int) -> torch.nn.Module:
    """The seeded YOLOv8n, as the ``.onnx`` file holds it (the same weights on every build)."""
    model = ym.build_yolo("yolov8n.yaml", seed=0)
    model.model[-1].export = True  # the torch model returns [N, 4+C, A], as its ONNX file
    model.requires_grad_(True)  # as a trained model is loaded (the fused model freezes them)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--detections", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--methods", nargs="+", default=["layercam", "gradcam"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--export-to", default=None, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.export_to:
        ym.export_yolo(_build(args.size), Path(args.export_to), args.size)
        return

    path = Path(tempfile.mkdtemp(prefix="onnxcam-bench-")) / "yolov8n.onnx"
    subprocess.run([sys.executable, __file__, "--export-to", str(path), "--size", str(args.size)],
                   check=True, stdout=subprocess.DEVNULL)
    explainer = Explainer(export_onnx(path), threads=args.threads)
    x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    plain = _plain(path, args.threads)
    name = plain.get_inputs()[0].name

    runs: dict[str, Any] = {"inference": lambda: plain.run(None, {name: x}),
                            "onnxcam prediction pass": lambda: explainer.runner.prediction(x)}
    picks = {}
    for k in args.detections:
        found = explainer.explain(x, targets=f"top{k}", conf=0.0).detections[0]
        picks[k] = [(d.candidate, d.class_id) for d in found]
        for method in args.methods:
            runs[f"onnxcam {method} x{k}"] = (
                lambda k=k, m=method: explainer.explain(x, targets=f"top{k}", method=m, conf=0.0))
    # one detection per level: the best candidate of each stride, as a box target (its own box)
    for stride, target, conf in _level_targets(explainer, x, args.size):
        runs[f"onnxcam layercam x1, stride {stride}"] = (
            lambda t=target, c=conf: explainer.explain(x, targets=t, method="layercam", conf=c))
    runs["onnxcam eigencam x1"] = lambda: explainer.explain(x, targets="top1", method="eigencam",
                                                            conf=0.0)
    times = block_median_ms(runs, args.rounds, args.block)

    # PyTorch's rows after every ONNX Runtime row: torch's OpenMP threads keep spinning after a
    # call, and its freed buffers change how later sessions' memory is mapped (see above)
    model = _build(args.size)
    xt = torch.from_numpy(x)
    peers: dict[str, Any] = {}
    keep = []
    for k in args.detections:
        for method in args.methods:
            peer_name = {"layercam": "LayerCAM", "gradcam": "GradCAM"}[method]
            cam, call = _peer(peer_name, model, xt, picks[k])
            keep.append(cam)
            peers[f"pytorch-grad-cam {peer_name} x{k}"] = call
    cam, call = _peer("EigenCAM", model, xt, [])
    keep.append(cam)
    peers["pytorch-grad-cam EigenCAM"] = call
    times.update(block_median_ms(peers, args.rounds, args.block))
    base = times["inference"]
    rows = [{"row": key, "ms": round(ms, 2), "vs_inference": round(ms / base, 3),
             "size": args.size, "threads": args.threads} for key, ms in times.items()]
    print(f"| YOLOv8n {args.size}x{args.size}, batch 1, {args.threads} threads | ms | "
          "x inference |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['row']} | {row['ms']:.1f} | {row['vs_inference']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
