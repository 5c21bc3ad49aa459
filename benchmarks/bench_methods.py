"""Cost of every CAM method relative to one inference, and beside pytorch-grad-cam's version.

One run on one machine, 2 threads, resnet18 at ``layer4`` (seeded random weights, recalibrated
BatchNorm), 224x224 inputs, top-1 target, batch 1 and 16. Each figure is the median over
``--rounds`` of block medians (a block: up to ``--block`` calls of one callable), in
milliseconds; the baseline is plain ONNX Runtime inference of the exported model at its default
settings, timed in blocks beside each method. Score-CAM and Ablation-CAM (batch 1 only) run
extra graph runs in batches (onnxcam: 32 masked inputs, 128 ablated head rows per run;
pytorch-grad-cam: ``batch_size = 64``).

Usage: ``python benchmarks/bench_methods.py [--batches 1 16] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from functools import partial

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from bench_gradcam import block_median_ms

from explainer import Explainer
from explainer.methods import METHODS
from exporters.torch import export_tapped, export_torch, recalibrate_batchnorm

#: methods timed at batch 1 only (pytorch-grad-cam takes minutes per call at batch 16)
SLOW = ("scorecam", "ablationcam")
PEERS = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise", "layercam": "LayerCAM",
    "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import pytorch_grad_cam

    torch.manual_seed(0)
    model = recalibrate_batchnorm(torchvision.models.resnet18(weights=None), batches=2)
    explainer = Explainer(export_torch(model, "layer4"), threads=args.threads)
    plain, _, _ = export_tapped(model, [])
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    infer = ort.InferenceSession(plain.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
    rows = []
    for batch in args.batches:
        x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
        for method in METHODS:
            if batch > 1 and method in SLOW:
                continue
            # each method in blocks beside plain inference: no method's threads slow another's
            times = block_median_ms({"inference": partial(infer.run, None, {"input": x}),
                                     method: partial(explainer.explain, x, method=method)},
                                    args.rounds, args.block)
            row = {"method": method, "batch": batch, "onnxcam_ms": round(times[method], 1),
                   "vs_inference": round(times[method] / times["inference"], 2),
                   "inference_ms": round(times["inference"], 1)}
            if method in PEERS:
                peer = getattr(pytorch_grad_cam, PEERS[method])(model=model,
                                                                 target_layers=[model.layer4])
                peer.batch_size = 64
                call = partial(peer, input_tensor=torch.from_numpy(x), targets=None)
                peer_ms = block_median_ms({"peer": call}, args.rounds, args.block)["peer"]
                row["pytorch_grad_cam_ms"] = round(peer_ms, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
