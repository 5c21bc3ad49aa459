"""Grad-CAM speed on CPU: onnxcam vs plain ONNX Runtime inference vs PyTorch peers.

For each model and batch size, in one run on one machine (median of ``--repeats`` timed
runs after warm-up, milliseconds):

* ``ort_infer``      plain ONNX Runtime inference of the whole exported model;
* ``onnxcam_1``      onnxcam Grad-CAM, top-1 target (features graph + logits pass + gradient head);
* ``onnxcam_top5``   onnxcam Grad-CAM, top-5 targets in one call;
* ``torch_autograd`` PyTorch forward + ``torch.autograd.grad`` to the layer + CAM
  (``exporters.torch.reference_gradcam``, top-1 class);
* ``pytorch_grad_cam`` pytorch-grad-cam's ``GradCAM`` (PyPI ``grad-cam``), top-1 target.

The ONNX Runtime measurements run interleaved round by round, then the PyTorch ones, after two
warm-up calls each.

Usage: ``python benchmarks/bench_gradcam.py [--threads 2] [--repeats 15] [--json out.json]``.
Models use seeded random weights with recalibrated BatchNorm (speed does not depend on the
weights' values once activations are not denormal).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from explainer import Explainer
from exporters.torch import (
    bundle_from_tapped,
    export_tapped,
    recalibrate_batchnorm,
    reference_gradcam,
)

MODELS = {
    "resnet50": "layer4",
    "densenet121": "features",
    "mobilenet_v3_large": "features.16",
}


def median_ms(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 2):
    """Median milliseconds of each callable. Runs are interleaved round by round, so a slow
    drift of the machine affects every column alike and the ratios stay fair."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1000)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    from pytorch_grad_cam import GradCAM

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = recalibrate_batchnorm(getattr(torchvision.models, name)(weights=None), batches=2)
        layer_path = MODELS[name]
        layer = model.get_submodule(layer_path)
        proto, tensors, _ = export_tapped(model, [layer_path])
        explainer = Explainer(bundle_from_tapped(proto, tensors[0], layer_path),
                              threads=args.threads)
        plain, _, _ = export_tapped(model, [])
        infer = ort.InferenceSession(plain.SerializeToString(), options,
                                     providers=["CPUExecutionProvider"])
        grad_cam = GradCAM(model=model, target_layers=[layer])
        for batch in args.batches:
            x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.no_grad():
                top1 = model(xt).argmax(1, keepdim=True).numpy()
            # Two groups, each interleaved: PyTorch's OpenMP threads keep spinning after a call
            # and would slow whichever ONNX Runtime run came next.
            times = median_ms({
                "ort_infer": partial(infer.run, None, {"input": x}),
                "onnxcam_1": partial(explainer.explain, x),
                "onnxcam_top5": partial(explainer.explain, x, top_k=5),
            }, args.repeats)
            times.update(median_ms({
                "torch_autograd": partial(reference_gradcam, model, layer, xt, top1),
                "pytorch_grad_cam": partial(grad_cam, input_tensor=xt, targets=None),
            }, args.repeats))
            row = {"model": name, "layer": layer_path, "batch": batch, "threads": args.threads,
                   **{k: round(v, 1) for k, v in times.items()}}
            row["cam_vs_infer"] = round(times["onnxcam_1"] / times["ort_infer"], 2)
            row["top5_vs_1"] = round(times["onnxcam_top5"] / times["onnxcam_1"], 2)
            row["speedup_vs_grad_cam"] = round(times["pytorch_grad_cam"] / times["onnxcam_1"], 1)
            row["speedup_vs_autograd"] = round(times["torch_autograd"] / times["onnxcam_1"], 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(to_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def to_markdown(rows: list[dict]) -> str:
    """The README table."""
    head = ("| model (layer) | batch | ORT inference | onnxcam 1 target | onnxcam top-5 | "
            "torch autograd | pytorch-grad-cam | 1 target / inference | top-5 / 1 target | "
            "vs pytorch-grad-cam |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['layer']}) | {r['batch']} | {r['ort_infer']} | {r['onnxcam_1']} "
            f"| {r['onnxcam_top5']} | {r['torch_autograd']} | {r['pytorch_grad_cam']} "
            f"| {r['cam_vs_infer']}x | {r['top5_vs_1']}x | {r['speedup_vs_grad_cam']}x faster |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
