"""Time of the evaluation metrics beside torchcam's and pytorch-grad-cam's, on the same inputs.

One run on one machine: a seeded resnet18 (random weights, recalibrated BatchNorm; ``--model``
any torchvision classifier with ``--layer``) exported to a bundle, ``--batch`` random images of
``--size`` pixels, the top-1 Grad-CAM maps of the bundle given to every library. Rows, in
seconds (the median of ``--rounds`` calls after a warm-up call):

* ``avg-drop+increase``: ``explainer.evaluate(..., ["avg-drop", "increase"])`` against
  torchcam 0.5's ``ClassificationMetric.update`` (with the same maps, through an extractor that
  returns them) and pytorch-grad-cam 1.5.7's ``DropInConfidence`` + ``IncreaseInConfidence``;
* ``road``: ``evaluate(..., ["road"])`` (percentiles 10..90, MoRF and LeRF) against
  pytorch-grad-cam's ``ROADCombined``;
* ``deletion+insertion``: ours alone (``--steps``; neither peer has it).

Usage: ``python benchmarks/bench_evaluate.py [--size 224] [--batch 4] [--threads 2]``; prints a
table and writes ``benchmarks/evaluate_results.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torchcam.metrics import ClassificationMetric

from explainer import Explainer
from explainer.evaluation import evaluate
from exporters.torch import export_torch, recalibrate_batchnorm


class _GivenMaps:
    """A torchcam extractor returning fixed maps, so torchcam scores the bundle's maps."""

    def __init__(self, model: torch.nn.Module, maps: np.ndarray) -> None:
        self.model = model
        self.maps = torch.from_numpy(maps)

    def __call__(self, class_idx: Any, scores: Any = None, normalized: bool = True,
                 **kwargs: Any) -> list[torch.Tensor]:
        return [self.maps]

    def fuse_cams(self, cams: list[torch.Tensor]) -> torch.Tensor:
        return cams[0]

    def _hooks_off(self) -> Any:
        return nullcontext()


def _median_s(call: Callable[[], Any], rounds: int) -> float:
    call()  # warm-up: sessions, allocations
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Run the benchmark and print/write its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).with_name("evaluate_results.json")))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch, 3, args.size, args.size)
    net = getattr(torchvision.models, args.model)(weights=None)
    net = recalibrate_batchnorm(net, input_shape=(8, 3, args.size, args.size)).eval()
    explainer = Explainer(export_torch(net, args.layer, input_shape=shape),
                          threads=args.threads)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    explanation = explainer.explain(x)
    maps = explanation.heatmaps[:, 0].astype(np.float32)
    explanation = replace(explanation, heatmaps=maps[:, None])
    ids = explanation.class_ids[:, 0].tolist()
    targets = [ClassifierOutputSoftmaxTarget(c) for c in ids]
    tensor = torch.from_numpy(x)

    def torchcam_confidence() -> None:
        metric = ClassificationMetric(_GivenMaps(net, maps), lambda t: torch.softmax(t, -1))
        metric.update(tensor, class_idx=ids)
        metric.summary()

    def pgc_confidence() -> None:
        DropInConfidence()(tensor, maps, targets, net)
        IncreaseInConfidence()(tensor, maps, targets, net)

    def ours(metrics: list[str]) -> Callable[[], Any]:
        return lambda: evaluate(explainer, x, explanation, metrics, steps=args.steps,
                                progress=False)

    rows = [
        {"metric": "avg-drop+increase", "onnxcam_s": _median_s(ours(["avg-drop", "increase"]),
                                                                args.rounds),
         "torchcam_s": _median_s(torchcam_confidence, args.rounds),
         "pytorch_grad_cam_s": _median_s(pgc_confidence, args.rounds)},
        {"metric": "road", "onnxcam_s": _median_s(ours(["road"]), args.rounds),
         "torchcam_s": None,
         "pytorch_grad_cam_s": _median_s(lambda: ROADCombined()(tensor, maps, targets, net),
                                         args.rounds)},
        {"metric": "deletion+insertion",
         "onnxcam_s": _median_s(ours(["deletion", "insertion"]), args.rounds),
         "torchcam_s": None, "pytorch_grad_cam_s": None},
    ]
    config = {"model": args.model, "layer": args.layer, "size": args.size, "batch": args.batch,
              "steps": args.steps, "rounds": args.rounds, "threads": args.threads}
    print(f"{'metric':20} {'onnxcam s':>10} {'torchcam s':>11} {'pytorch-grad-cam s':>19}")
    for row in rows:
        cells = [row["onnxcam_s"], row["torchcam_s"], row["pytorch_grad_cam_s"]]
        text = [f"{c:.3f}" if c is not None else "-" for c in cells]
        print(f"{row['metric']:20} {text[0]:>10} {text[1]:>11} {text[2]:>19}")
    Path(args.out).write_text(json.dumps({"config": config, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
