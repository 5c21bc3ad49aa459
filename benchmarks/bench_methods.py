"""Cost of every CAM method relative to one inference, beside pytorch-grad-cam's and torchcam's.

One run on one machine, 2 threads (``--threads``), seeded random weights with recalibrated
BatchNorm, 224x224 inputs, top-1 target of each image, batch 1 and 16 (``--batches``). Models
(``--models``, default resnet18) are explained at the layers of ``bench_gradcam.MODELS``
(resnet18: ``layer4``, mobilenet_v3_large: ``features.16``). Methods (``--methods``, default all)
are every name of ``explainer.methods.METHODS``, in registry order; its pixel methods
(``guided-backprop``, ``guided-gradcam``) run on a second bundle exported with
``input_gradient=True``.

Each row (one method at one batch size) holds, in milliseconds:

* ``onnxcam_ms``: ``Explainer.explain(x, method=...)``; ``path`` says how it ran: ``"graph"``
  (one ONNX Runtime run of the explanation graph), ``"two-graphs"`` (features and head
  sessions plus numpy), and for the pixel methods the Grad-CAM part's path plus
  ``"+input-gradient"`` (one more run, of the input-gradient graph);
* ``inference_ms``: plain ONNX Runtime inference of the exported model at ORT's default settings
  (threads aside), timed in blocks beside the method; ``vs_inference`` is the ratio;
* ``pytorch_grad_cam_ms``: pytorch-grad-cam 1.5.7's class for the method
  (:data:`PYTORCH_GRAD_CAM`, ``targets=None``: top-1), hooks released after timing.
  ``guided-backprop`` is ``GuidedBackpropReLUModel`` (it explains one image per call, so a
  batch is one call per image, on a copy of the model because the call swaps the model's ReLU
  modules); ``guided-gradcam`` is ``GradCAM`` on the batch times ``GuidedBackpropReLUModel``
  per image, as pytorch-grad-cam's README combines them (``cam_mask * gb``, without its
  ``deprocess_image`` display scaling);
* ``torchcam_ms``: torchcam 0.5.0's class for the method (:data:`TORCHCAM`), its whole
  user-visible call: the forward pass (with its hooks) then the extractor called with
  ``class_idx`` = each image's top-1 class (and the scores, for gradient methods). torchcam
  returns the normalized maps at the layer's resolution; it does not upsample them.

Besides: ``model``, ``layer``, ``method``, ``batch``, ``threads``; ``peers`` (the
pytorch-grad-cam and torchcam classes, None where that library has no such method);
``perturbation_batch`` (below); ``single_call`` and ``note`` (below).

Each figure is the median over ``--rounds`` of block medians (``bench_gradcam.block_median_ms``:
a block is up to ``--block`` calls of one callable; blocks so one session's spinning threads are
not charged to the next). Every callable is called once first; one whose first call takes longer
than ``--single-above`` seconds (default 60) is timed by that one call instead (rounds=1,
block=1), and its row's ``note`` and ``single_call`` say so. ``--skip-above S`` skips a cell
whose estimate (its batch-1 time times the batch size, when batch 1 ran first) exceeds S
seconds, also with a note. A cell that fails is recorded in ``note``, never dropped silently.

Perturbation batches (how many masked or ablated rows go through the model per run), recorded
per row in ``perturbation_batch``:

* onnxcam: Score-CAM ``explainer.methods.perturbation.SCORE_BATCH`` (32) masked inputs per
  features + head run; Ablation-CAM ``ABLATION_BATCH`` (128) ablated activations per head run.
  Both run C = 512 (resnet18 ``layer4``) rows per image, so a batch of 16 is 16 x 512 rows;
* pytorch-grad-cam: the ``batch_size`` attribute of ``ScoreCAM`` and ``AblationCAM``, set to
  ``--peer-batch`` (64; its own defaults are 16 and 32);
* torchcam: ``ScoreCAM(batch_size=--torchcam-batch)`` (32, its default).

Usage: ``python benchmarks/bench_methods.py [--models resnet18 mobilenet_v3_large]
[--methods gradcam scorecam ...] [--batches 1 16] [--quick] [--json out.json]``;
``--quick`` (batch 1 only, rounds 1, block 1, and ``--single-above 5`` unless given) is a
smoke run of every code path, not a measurement. ``python benchmarks/methods_table.py
out.json`` prints the README table.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from bench_gradcam import MODELS, block_median_ms

from explainer import Explainer
from explainer.methods import METHODS
from explainer.methods.perturbation import ABLATION_BATCH, SCORE_BATCH
from explainer.pixels import PIXEL_METHODS
from exporters.torch import export_tapped, export_torch, recalibrate_batchnorm

#: onnxcam method -> pytorch-grad-cam class, from the specs' ``peers`` (the guided methods
#: are built in :func:`_pgc_call`)
PYTORCH_GRAD_CAM = {m: spec.peers["pytorch-grad-cam"] for m, spec in METHODS.items()
                    if "pytorch-grad-cam" in spec.peers}
#: onnxcam method -> torchcam.methods class, where torchcam has the same method (the specs'
#: ``peers``). Not mapped: SmoothGradCAMpp (Grad-CAM++ averaged over noisy inputs), SSCAM and
#: ISCAM (smoothed and integrated Score-CAM), LeGrad (ViT), RefineCAM and FinerCAM (wrappers);
#: torchcam has no HiResCAM, element-wise Grad-CAM, Eigen-CAM, counterfactual, Ablation-CAM or
#: guided methods.
TORCHCAM = {m: spec.peers["torchcam"] for m, spec in METHODS.items() if "torchcam" in spec.peers}
#: torchcam classes that need no gradient: forward under no_grad, no scores passed
TORCHCAM_NO_GRAD = ("ScoreCAM", "CAM")
#: methods that run extra model rows in batches
PERTURBATION = ("scorecam", "ablationcam")


def graph_methods(explainer: Explainer) -> frozenset[str]:
    """The methods ``explainer`` runs as one ONNX Runtime call of its explanation graph.

    Reads ``explainer.graph.methods`` (the list of methods the graph computes) where the
    installed onnxcam has it, else the graph's single ``method``; none without a graph.
    """
    graph = explainer.graph
    if graph is None:
        return frozenset()
    listed = getattr(graph, "methods", None)
    return frozenset(listed) if listed is not None else frozenset({graph.method})


def onnxcam_path(explainer: Explainer, method: str) -> str:
    """``"graph"`` (one explanation-graph run) or ``"two-graphs"``; a pixel method the graph
    does not compute is its Grad-CAM part's path plus ``"+input-gradient"``."""
    in_graph = graph_methods(explainer)
    if method in in_graph:
        return "graph"
    if method in PIXEL_METHODS:
        return ("graph" if "gradcam" in in_graph else "two-graphs") + "+input-gradient"
    return "two-graphs"


@contextmanager
def _pgc_call(method: str, model: torch.nn.Module, layer: torch.nn.Module, xt: torch.Tensor,
              peer_batch: int) -> Iterator[Callable[[], object]]:
    """pytorch-grad-cam's whole call for top-1 of each image; its hooks are released after."""
    import pytorch_grad_cam

    guided = None
    if method in PIXEL_METHODS:
        # the call swaps the ReLU modules (and puts back non-inplace ones): a copy of the model
        guided = pytorch_grad_cam.GuidedBackpropReLUModel(model=copy.deepcopy(model))

        def backprop(i: int) -> np.ndarray:  # [H, W, C]; a fresh leaf: .grad would accumulate
            return guided(xt[i : i + 1].clone(), target_category=None)

    if method == "guided-backprop":
        yield lambda: [backprop(i) for i in range(len(xt))]
        return
    name = "GradCAM" if method == "guided-gradcam" else PYTORCH_GRAD_CAM[method]
    with getattr(pytorch_grad_cam, name)(model=model, target_layers=[layer]) as peer:
        if method in PERTURBATION:
            peer.batch_size = peer_batch
        if method == "guided-gradcam":

            def call() -> object:
                gray = peer(input_tensor=xt, targets=None)  # [B, H, W]
                return [np.stack([g, g, g], axis=-1) * backprop(i) for i, g in enumerate(gray)]

            yield call
        else:
            yield partial(peer, input_tensor=xt, targets=None)


@contextmanager
def _torchcam_call(method: str, model: torch.nn.Module, layer_path: str, xt: torch.Tensor,
                   batch_size: int) -> Iterator[Callable[[], object]]:
    """torchcam's whole user-visible call: forward (hooked), then the extractor with each
    image's top-1 class (and the scores for gradient methods); hooks removed after."""
    import torchcam.methods

    name = TORCHCAM[method]
    kwargs: dict[str, Any] = {"batch_size": batch_size} if name == "ScoreCAM" else {}
    with getattr(torchcam.methods, name)(model, layer_path, **kwargs) as extractor:
        gradient = name not in TORCHCAM_NO_GRAD

        def call() -> list[torch.Tensor]:
            with nullcontext() if gradient else torch.no_grad():
                scores = model(xt)
            top1 = scores.argmax(1).tolist()
            return extractor(class_idx=top1, scores=scores) if gradient else extractor(top1)

        yield call


def timed(runs: dict[str, Callable[[], object]], args: argparse.Namespace,
          notes: list[str], single: list[str]) -> dict[str, float]:
    """Milliseconds of each callable: one call first; block medians (``block_median_ms``)
    for those under ``args.single_above`` seconds, that first call for the others (named in
    ``single``, explained in ``notes``). A callable that raises is noted and left out."""
    blocks, times = {}, {}
    for key, fn in runs.items():
        start = time.perf_counter()
        try:
            fn()
        except Exception as error:  # recorded in the row, not hidden
            notes.append(f"{key} failed: {type(error).__name__}: {str(error)[:200]}")
            continue
        seconds = time.perf_counter() - start
        if seconds > args.single_above:
            times[key] = seconds * 1000
            single.append(key)
            notes.append(f"{key}: one call (rounds=1, block=1), {seconds:.1f} s > "
                         f"{args.single_above:g} s")
        else:
            blocks[key] = fn
    if blocks:
        times.update(block_median_ms(blocks, args.rounds, args.block))
    return times


def bench_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of one model: every selected method at every batch size."""
    torch.manual_seed(0)
    model = recalibrate_batchnorm(getattr(torchvision.models, name)(weights=None), batches=2)
    layer_path = MODELS[name]
    layer = model.get_submodule(layer_path)
    explainer = Explainer(export_torch(model, layer_path), threads=args.threads)
    pixel = None
    if any(m in PIXEL_METHODS for m in args.methods):
        pixel = Explainer(export_torch(model, layer_path, input_gradient=True),
                          threads=args.threads)
    plain, _, _ = export_tapped(model, [])
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    infer = ort.InferenceSession(plain.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
    input_name = infer.get_inputs()[0].name
    first: dict[tuple[str, str], float] = {}  # (method, column) -> batch-1 ms, for estimates
    rows = []
    for batch in args.batches:
        x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
        xt = torch.from_numpy(x)
        for method in args.methods:
            ours = pixel if method in PIXEL_METHODS else explainer
            row: dict[str, Any] = {"model": name, "layer": layer_path, "method": method,
                                   "batch": batch, "threads": args.threads,
                                   "path": onnxcam_path(ours, method)}
            row["peers"] = {"pytorch_grad_cam": PYTORCH_GRAD_CAM.get(method),
                            "torchcam": TORCHCAM.get(method)}
            if method in PERTURBATION:
                row["perturbation_batch"] = {
                    "onnxcam": SCORE_BATCH if method == "scorecam" else ABLATION_BATCH,
                    "pytorch_grad_cam": args.peer_batch,
                    **({"torchcam": args.torchcam_batch} if method in TORCHCAM else {}),
                }
            notes: list[str] = []
            single: list[str] = []

            def skipped(column: str, batch: int = batch, method: str = method,
                        notes: list[str] = notes) -> bool:
                """Whether the cell's estimate from batch 1 is over ``--skip-above``."""
                estimate = first.get((method, column), 0.0) * batch / 1000
                if args.skip_above is None or batch == 1 or estimate <= args.skip_above:
                    return False
                notes.append(f"{column} skipped: about {estimate:.3g} s per call estimated "
                             f"from batch 1 > {args.skip_above:g} s")
                return True

            # ONNX Runtime first, then PyTorch: torch's OpenMP threads keep spinning after a call
            runs: dict[str, Callable[[], object]] = {
                "inference": partial(infer.run, None, {input_name: x})}
            if not skipped("onnxcam_ms"):
                runs["onnxcam_ms"] = partial(ours.explain, x, method=method)
            times = timed(runs, args, notes, single)
            times = {("inference_ms" if k == "inference" else k): v for k, v in times.items()}
            peers: list[tuple[str, Callable[[], Any]]] = [("pytorch_grad_cam_ms", partial(
                _pgc_call, method, model, layer, xt, args.peer_batch))]
            if method in TORCHCAM:
                if args.torchcam:
                    peers.append(("torchcam_ms", partial(
                        _torchcam_call, method, model, layer_path, xt, args.torchcam_batch)))
                else:
                    notes.append("torchcam_ms: torchcam is not installed")
            for column, make in peers:
                if column == "pytorch_grad_cam_ms" and method not in PYTORCH_GRAD_CAM:
                    continue
                if skipped(column):
                    continue
                try:
                    with make() as call:
                        times.update(timed({column: call}, args, notes, single))
                except Exception as error:  # a peer that cannot be built: noted
                    notes.append(f"{column} failed: {type(error).__name__}: {str(error)[:200]}")
            for column in ("onnxcam_ms", "inference_ms", "pytorch_grad_cam_ms", "torchcam_ms"):
                if column in times:
                    row[column] = round(times[column], 1)
                    if batch == 1:
                        first[(method, column)] = times[column]
            if "onnxcam_ms" in times and "inference_ms" in times:
                row["vs_inference"] = round(times["onnxcam_ms"] / times["inference_ms"], 2)
            if single:
                row["single_call"] = single
            if notes:
                row["note"] = "; ".join(notes)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    """Parse the options, time every selected model and method, print and write the rows."""
    names = list(METHODS)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--models", nargs="+", default=["resnet18"], choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=names, choices=names)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batch 1 only, rounds 1, block 1")
    parser.add_argument("--single-above", type=float, default=None, metavar="S",
                        help="time a callable whose first call takes over S seconds by that "
                        "call (default 60; 5 with --quick)")
    parser.add_argument("--skip-above", type=float, default=None, metavar="S",
                        help="skip cells estimated (from batch 1) to take over S seconds a call")
    parser.add_argument("--peer-batch", type=int, default=64,
                        help="pytorch-grad-cam ScoreCAM/AblationCAM batch_size")
    parser.add_argument("--torchcam-batch", type=int, default=32,
                        help="torchcam ScoreCAM batch_size")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds, args.block = [1], 1, 1
    if args.single_above is None:
        args.single_above = 5.0 if args.quick else 60.0
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    try:
        import torchcam  # noqa: F401

        args.torchcam = True
    except ImportError:
        args.torchcam = False
    rows = [row for name in args.models for row in bench_model(name, args)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
