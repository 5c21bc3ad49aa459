"""Grad-CAM speed on CPU: onnxcam vs plain ONNX Runtime inference vs PyTorch peers.

For each model and batch size, in one run on one machine (milliseconds; each figure is the
median of ``--rounds`` block medians, a block being up to ``--block`` calls of one callable
after one warm-up call):

* ``ort_infer``        plain ONNX Runtime inference of the whole model exported at the fixed
                       size 224x224, ORT's default settings (thread spinning on): the
                       baseline;
* ``ort_infer_nospin`` the same with spinning off (``session.intra_op.allow_spinning=0``);
* ``onnxcam_1``        onnxcam Grad-CAM, top-1 target: one run of the bundle's explanation
                       graph (features, the head's forward, its backward per target, CAM,
                       upsampling, min-max). The bundle accepts any input size (the export's
                       default) unless ``--static-size``; the first call at a size builds the
                       session specialized to it (the warm-up call, not timed);
* ``onnxcam_top5``     onnxcam Grad-CAM, top-5 targets in one call;
* ``torch_autograd``   PyTorch forward + ``torch.autograd.grad`` to the layer + CAM
                       (``exporters.torch.reference_gradcam``, top-1 class);
* ``pytorch_grad_cam`` pytorch-grad-cam's ``GradCAM`` (PyPI ``grad-cam``), top-1 target;
* ``export_s``         seconds to export the bundle (``export_torch``: torch.onnx, split,
                       gradient head, explanation graph).

Why blocks: a session with spinning threads slows whatever runs right after it on the same
cores, so single calls of several sessions interleaved would charge each one for its
neighbour's spinning. Blocks of one callable at a time, several rounds, keep drift fair.

Why a child process: each model is built and exported by a child process, and every ONNX
Runtime row is timed before torch computes anything in this one (the PyTorch rows come last,
on the model built again from the same seed), as a user serving the files runs them: after
torch has run and freed its buffers, glibc's dynamic mmap threshold has grown, and ONNX
Runtime sessions created then ran YOLOv8n 1.4x slower (``bench_detect.py``). Earlier runs of
this script built and exported the models in-process.

Usage: ``python benchmarks/bench_gradcam.py [--threads 2] [--rounds 5] [--block 10]
[--models ...] [--batches 1 16] [--static-size] [--json out.json]``. Models use seeded random
weights with recalibrated BatchNorm (speed does not depend on the weights' values once
activations are not denormal).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

from explainer import Explainer
from exporters.torch import export_tapped, export_torch, recalibrate_batchnorm, reference_gradcam

MODELS = {
    "resnet50": "layer4",
    "densenet121": "features",
    "mobilenet_v3_large": "features.16",
    "shufflenet_v2_x1_0": "conv5",
    "resnet18": "layer4",
}


def block_median_ms(runs: dict[str, Callable[[], object]], rounds: int, block: int,
                    budget_s: float = 0.6) -> dict[str, float]:
    """Median over rounds of each callable's block median (ms). A block is ``block`` calls, or
    fewer for slow callables (about ``budget_s`` per block, at least 3 calls)."""
    sizes = {}
    for key, fn in runs.items():
        start = time.perf_counter()
        fn()  # warm-up, and a guess of the call time
        sizes[key] = max(3, min(block, round(budget_s / (time.perf_counter() - start))))
    medians: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            fn()  # the first call after another session's block pays for the switch
            times = []
            for _ in range(sizes[key]):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1000)
            medians[key].append(statistics.median(times))
    return {key: statistics.median(values) for key, values in medians.items()}


def _sessions(plain: Path, threads: int) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """Plain inference at ORT's defaults (threads aside), and with spinning off."""
    made = []
    for spinning in (True, False):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        made.append(ort.InferenceSession(str(plain), options,
                                         providers=["CPUExecutionProvider"]))
    return made[0], made[1]


def _build(name: str) -> torch.nn.Module:
    """The seeded model (the same weights on every build)."""
    torch.manual_seed(0)
    return recalibrate_batchnorm(getattr(torchvision.models, name)(weights=None), batches=2)


def export_model(name: str, folder: Path, static_size: bool) -> None:
    """The child's job: the bundle (``folder/bundle``, timed in ``folder/export_s``) and the
    plain model at 224x224 (``folder/plain.onnx``)."""
    model = _build(name)
    start = time.perf_counter()
    bundle = export_torch(model, MODELS[name], dynamic_size=not static_size)
    (folder / "export_s").write_text(str(time.perf_counter() - start))
    bundle.save(folder / "bundle")
    plain, _, _ = export_tapped(model, [], dynamic_size=False)
    onnx.save(plain, folder / "plain.onnx")


def onnx_rows(name: str, args: argparse.Namespace) -> list[dict]:
    """One model's ONNX Runtime rows, one per batch size (exported by a child process)."""
    folder = Path(tempfile.mkdtemp(prefix="onnxcam-bench-"))
    command = [sys.executable, __file__, "--export-to", str(folder), "--models", name]
    subprocess.run(command + (["--static-size"] if args.static_size else []), check=True,
                   stdout=subprocess.DEVNULL)
    explainer = Explainer(folder / "bundle", threads=args.threads)
    assert explainer.graph is not None, "the benchmark measures the explanation graph"
    infer, infer_nospin = _sessions(folder / "plain.onnx", args.threads)
    rows = []
    for batch in args.batches:
        x = _batch(batch)
        times = block_median_ms({
            "ort_infer": partial(infer.run, None, {"input": x}),
            "ort_infer_nospin": partial(infer_nospin.run, None, {"input": x}),
            "onnxcam_1": partial(explainer.explain, x),
            "onnxcam_top5": partial(explainer.explain, x, top_k=5),
        }, args.rounds, args.block)
        rows.append({"model": name, "layer": MODELS[name], "batch": batch,
                     "threads": args.threads, "any_size": not args.static_size,
                     "export_s": round(float((folder / "export_s").read_text()), 1),
                     **{k: round(v, 2) for k, v in times.items()}})
    explainer.close()
    return rows


def torch_rows(rows: list[dict], args: argparse.Namespace, grad_cam_cls) -> None:
    """The PyTorch rows of ``rows`` (one model's), after every ONNX Runtime row: torch's
    OpenMP threads keep spinning after a call, and its freed buffers change how later
    sessions' memory is mapped."""
    model = _build(rows[0]["model"])
    layer = model.get_submodule(rows[0]["layer"])
    grad_cam = grad_cam_cls(model=model, target_layers=[layer])
    for row in rows:
        xt = torch.from_numpy(_batch(row["batch"]))
        with torch.no_grad():
            top1 = model(xt).argmax(1, keepdim=True).numpy()
        times = block_median_ms({
            "torch_autograd": partial(reference_gradcam, model, layer, xt, top1),
            "pytorch_grad_cam": partial(grad_cam, input_tensor=xt, targets=None),
        }, args.rounds, args.block)
        row.update({k: round(v, 2) for k, v in times.items()})
        row["cam_vs_infer"] = round(row["onnxcam_1"] / row["ort_infer"], 2)
        row["top5_vs_1"] = round(row["onnxcam_top5"] / row["onnxcam_1"], 2)
        row["speedup_vs_grad_cam"] = round(row["pytorch_grad_cam"] / row["onnxcam_1"], 1)
        row["speedup_vs_autograd"] = round(row["torch_autograd"] / row["onnxcam_1"], 1)
        print(json.dumps(row), flush=True)


def _batch(batch: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--static-size", action="store_true",
                        help="export the bundles at 224x224 instead of for any input size")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--export-to", default=None, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.export_to:
        export_model(args.models[0], Path(args.export_to), args.static_size)
        return

    from pytorch_grad_cam import GradCAM

    by_model = [onnx_rows(name, args) for name in args.models]  # before torch computes
    for model_rows in by_model:
        torch_rows(model_rows, args, GradCAM)
    rows = [row for model_rows in by_model for row in model_rows]
    print()
    print(to_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def to_markdown(rows: list[dict]) -> str:
    """The README table."""
    head = ("| model (layer) | batch | ORT inference (default, spinning) | ORT inference, no "
            "spinning | onnxcam 1 target | onnxcam top-5 | torch autograd | pytorch-grad-cam | "
            "1 target / inference | top-5 / 1 target | vs pytorch-grad-cam | export (s) |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['layer']}) | {r['batch']} | {r['ort_infer']} "
            f"| {r['ort_infer_nospin']} | {r['onnxcam_1']} | {r['onnxcam_top5']} "
            f"| {r['torch_autograd']} | {r['pytorch_grad_cam']} | {r['cam_vs_infer']}x "
            f"| {r['top5_vs_1']}x | {r['speedup_vs_grad_cam']}x faster | {r['export_s']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
