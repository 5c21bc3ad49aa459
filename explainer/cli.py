"""The ``onnxcam`` command: explain, export, inspect and check ONNX models. Never imports torch.

Every error the project raises is an :class:`explainer.OnnxcamError`; the command prints it as
one line on stderr and exits with its ``exit_code`` (listed in ``onnxcam --help``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import OnnxcamError
from .methods import METHODS
from .pixels import PIXEL_METHODS
from .visualize import COLORMAPS

__all__ = ["main", "build_parser"]

EXAMPLES = """examples:
  onnxcam inspect model.onnx                      # candidate layers, '*' marks the auto pick
  onnxcam explain model.onnx cat.jpg dog.jpg --top-k 3 --out cams/
  onnxcam explain model.onnx photos/ --recursive --report --out cams/   # then open cams/index.html
  onnxcam explain model.onnx cat.jpg --target features --labels imagenet
  onnxcam export model.onnx --target auto --labels imagenet -o model.onnxcam
  onnxcam export model.onnx --target A --target B --input-gradient -o sweep.onnxcam
  onnxcam explain model.onnxcam cat.jpg --targets top3+least --providers cuda
  onnxcam check model.onnx                        # gradient vs finite differences
  onnxcam explain yolov8n.onnx street.jpg --targets detections --out cams/   # a detector
  onnxcam explain ch_PP-OCRv4_det_infer.onnx page.png --threshold 0.3   # text regions (DBNet)
  onnxcam explain ch_PP-OCRv4_rec_infer.onnx line.png --labels keys.txt  # one map per character

exit codes:
  0  success
  1  a failure while explaining (a gradient that cannot be built, a failed self-check, some
     images of an explain run failed: see OUT/summary.json)
  2  a usage or input error (bad argument, unreadable model or bundle, bad labels, an output
     that exists without --overwrite/--resume)
"""
EXPLAIN_EXAMPLES = """examples:
  onnxcam explain model.onnx cat.jpg dog.jpg --top-k 3 --out cams/
  onnxcam explain model.onnx photos/ --recursive --batch-size 16 --report --out cams/
  onnxcam explain model.onnx 'photos/**/*.jpg' --recursive --save-npy --resume --out cams/
  onnxcam explain model.onnx cat.jpg --target auto --cache-dir ~/.cache/onnxcam
  onnxcam explain resnet50.onnxcam cat.jpg --targets top3+least --providers cuda
  onnxcam explain model.onnx cat.jpg --targets 3 --contrast 5 --score probability
  onnxcam explain model.onnx photos/ --target A --target B --fuse max --out cams/
  onnxcam explain model.onnx cat.jpg --method guided-backprop --save-npy --out cams/
  onnxcam explain yolov8n.onnx street.jpg --targets detections --conf 0.4 --out cams/
  onnxcam explain yolov8n.onnx street.jpg --targets top3 --labels coco.txt
  onnxcam explain yolov8n.onnx street.jpg --targets person         # all persons, one map
  onnxcam explain yolov8n.onnx street.jpg --targets '{"box": [10, 20, 200, 300], "class": 0}'
  onnxcam explain common_det.onnx page.png --format yolox --preprocessing pre.json
  onnxcam explain deeplab.onnx street.jpg --targets person         # a class over its mask
  onnxcam explain dbnet.onnx page.png --targets regions --threshold 0.3
  onnxcam explain rec.onnx line.png --targets string+characters --labels keys.txt

Writes OUT/NAME_cam.png per image (NAME: the image's path below the inputs' common folder),
NAME_cam.npy with --save-npy, and OUT/summary.json (classes, probabilities, files or error per
image; a detector's boxes, scores and labels; a segmenter's regions; a text recognizer's
string and characters). A detector's figure draws each explained detection's box on its map (a
segmenter's regions likewise; a text line's maps are laid out one per row); an image with nothing
to explain gets the input alone and a note (not an error). A layer sweep (--target repeated) adds
NAME_cam_LAYER.png per layer (the top-level overlay is the fused map); guided-backprop/
guided-gradcam add NAME_pixels.png (NAME_pixels_J.png per target J when several) and
NAME_pixels.npy with --save-npy. Exit code 0: all images explained; 1: some failed (the rest are
written); 2: a usage error. Existing outputs are replaced only with --overwrite; --resume
continues a run that was stopped.
"""
EXPORT_EXAMPLES = """examples:
  onnxcam export model.onnx -o model.onnxcam
  onnxcam export model.onnx --target features --layout NHWC --labels imagenet -o model.onnxcam
  onnxcam export model.onnx --output logits --keep-softmax -o model.onnxcam
  onnxcam export model.onnx --target relu_8 --target features -o sweep.onnxcam   # layer sweep
  onnxcam export model.onnx --input-gradient -o model.onnxcam   # + guided-backprop/-gradcam
  onnxcam export cls.onnx --bgr --preprocessing '{"resize": [48, 192], "crop": null}' -o b/
  onnxcam export common_old.onnx --input-layout NCHW -o old.onnxcam   # a [1, 1, 64, W] input
"""
INSPECT_EXAMPLES = """examples:
  onnxcam inspect model.onnx
  onnxcam inspect model.onnx --output logits --last 10

columns: '*' the layer target=auto picks; cut: every input->output path goes through the
tensor; grad: every op of the head past it has a gradient rule.
"""
CHECK_EXAMPLES = """examples:
  onnxcam check model.onnx
  onnxcam check model.onnxcam --images cat.jpg --directions 8 --eps 1e-2 1e-3
"""


def _is_bundle(path: str) -> bool:
    return Path(path).is_dir()


def _export_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if getattr(args, "layout", "auto") != "auto":
        kwargs["layout"] = args.layout
    if getattr(args, "output", None):
        kwargs["output"] = args.output
    if getattr(args, "labels", None):
        kwargs["labels"] = _labels(args.labels)
    if getattr(args, "keep_softmax", False):
        kwargs["pre_softmax"] = False
    pre = _preprocessing(args.preprocessing) if getattr(args, "preprocessing", None) else None
    if getattr(args, "bgr", False):  # the rest from --preprocessing, else the model's default
        pre = {**(pre or {}), "channels": "BGR"}
    if pre is not None:
        kwargs["preprocessing"] = pre
    if getattr(args, "input_layout", "auto") != "auto":
        kwargs["input_layout"] = args.input_layout
    if getattr(args, "input_gradient", False):
        kwargs["input_gradient"] = True
    if getattr(args, "task", "auto") != "auto":
        kwargs["task"] = args.task
    if getattr(args, "format", None):
        kwargs["format"] = _format(args.format)
    return kwargs


def _format(spec: str) -> str | dict[str, Any]:
    """--format: a format name, or a JSON object of format parameters."""
    from .errors import UsageError

    if not spec.lstrip().startswith("{"):
        return spec
    try:
        value = json.loads(spec)
    except ValueError as err:
        raise UsageError(f"--format {spec!r}: not a format name nor a JSON object ({err})") from err
    if not isinstance(value, dict) or "name" not in value:
        raise UsageError(f"--format {spec!r}: a JSON format needs a \"name\"")
    return value


def _target(args: argparse.Namespace) -> str | list[str]:
    """The --target value(s): "auto" when none, one name, or a layer sweep's list of names."""
    from .errors import UsageError

    given = args.target or ["auto"]
    if len(given) == 1:
        return given[0]
    if "auto" in given:
        raise UsageError(f"--target auto cannot be part of a layer sweep ({', '.join(given)}); "
                         "name every layer (onnxcam inspect lists them)")
    return list(given)


def _preprocessing(spec: str) -> dict[str, Any]:
    """Preprocessing from inline JSON or a JSON file (keys of explainer.Preprocessing),
    checked, as a dict: the keys it leaves out (``layout``...) the export takes from the
    model (see explainer.preprocessing.complete_preprocessing)."""
    from .errors import ImageError
    from .preprocessing import Preprocessing

    try:
        data = json.loads(spec) if spec.lstrip().startswith("{") else json.loads(
            Path(spec).read_text())
        if not isinstance(data, dict):
            raise TypeError(f"got a JSON {type(data).__name__}")
        Preprocessing.from_dict(data, base=Preprocessing())  # its errors now, before the model
        return data
    except (OSError, ValueError, TypeError) as err:
        if isinstance(err, ImageError):
            raise
        raise ImageError(f"--preprocessing {spec!r}: expected a JSON object or a JSON file with "
                         f"keys of explainer.Preprocessing ({err})") from err


def _labels(spec: str) -> str | list[str]:
    """A label-set name, or a text file with one class name per line."""
    path = Path(spec)
    if path.is_file():  # a line of only whitespace is a name (a text recognizer's space)
        return [line.strip() or line for line in path.read_text("utf-8").splitlines() if line]
    return spec


def _explainer(args: argparse.Namespace) -> Any:
    from . import Explainer

    target = _target(args)
    if _is_bundle(args.model):
        flags = {"pre_softmax": "--keep-softmax", "input_gradient": "--input-gradient",
                 "input_layout": "--input-layout",
                 "preprocessing": "--preprocessing" if args.preprocessing else "--bgr"}
        ignored = [flags.get(k, f"--{k}") for k in _export_kwargs(args)]
        if target != "auto":
            ignored.insert(0, "--target")
        if ignored:
            print(f"note: {args.model} is a bundle; {', '.join(ignored)} ignored (they apply "
                  "to .onnx files)", file=sys.stderr)
        return Explainer(args.model, providers=args.providers, threads=args.threads)
    kwargs = _export_kwargs(args)
    if getattr(args, "method", None) in PIXEL_METHODS:  # the guided methods need the graph
        kwargs["input_gradient"] = True
    explainer = Explainer.from_onnx(
        args.model, target=target, providers=args.providers, threads=args.threads,
        cache_dir=args.cache_dir, **kwargs,
    )
    if explainer.bundle.manifest.get("export", {}).get("preprocessing_guessed"):
        print(f"note: no --preprocessing given; assuming {explainer.preprocessing}",
              file=sys.stderr)
    return explainer


def _targets(spec: str | None) -> Any:
    """--targets: an int, a JSON object or list (a detector's box targets), or a string."""
    from .errors import TargetError

    if spec is None:
        return None
    if spec.lstrip("-").isdigit():
        return int(spec)
    if spec.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(spec)
        except ValueError as err:
            raise TargetError(f"--targets {spec!r}: not valid JSON ({err})") from err
    return spec


def _layers_text(manifest: dict[str, Any]) -> str:
    """The explained layer(s) of a manifest: tensor, layer, layout and shape of each."""
    layers = manifest.get("layers") or [manifest["target"]]
    text = "; ".join(f"{t['tensor']!r} ({t['layer']}, {t['layout']}, shape {t.get('shape')})"
                     for t in layers)
    return f"layer sweep of {len(layers)}: {text}" if len(layers) > 1 else text


def _progress_bar(args: argparse.Namespace, total: int) -> Any:
    """A tqdm bar on stderr when it is a terminal (and not --quiet), else None."""
    if args.quiet or total == 0 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; a stripped environment just runs without a bar
        return None
    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)


def _explain(args: argparse.Namespace) -> int:
    from .batch import FolderRun, RunOptions, collect_images
    from .report import write_report

    images = collect_images(args.images, recursive=args.recursive, exclude=args.out)
    options = RunOptions(
        targets=_targets(args.targets), top_k=args.top_k, method=args.method,
        batch_size=args.batch_size, colormap=args.colormap, alpha=args.alpha,
        save_npy=args.save_npy, max_pixels=args.max_pixels, overwrite=args.overwrite,
        resume=args.resume, contrast=_targets(args.contrast), score=args.score,
        fuse=None if args.fuse == "none" else args.fuse, conf=args.conf, iou=args.iou,
        renormalize=args.renormalize, threshold=args.threshold,
    )
    explainer = _explainer(args)
    with explainer:
        run = FolderRun(explainer, images, args.out, options, model=args.model,
                        extra_outputs=["index.html"] if args.report else [])
        print(f"explaining {_layers_text(explainer.bundle.manifest)}: {len(run.pending)} of "
              f"{len(images)} image(s)")
        bar = _progress_bar(args, len(run.pending))
        say = bar.write if bar is not None else print

        def on_row(row: dict[str, Any]) -> None:
            if row["status"] == "error":
                image, message = row["image"], cli_message(row["error"]["message"])
                say(f"failed: {message if image in message else f'{image}: {message}'}")
            elif bar is None and not args.quiet:
                titles = ", ".join(f"{label} {p:.3g}" for label, p in zip(
                    row["labels"] or map(str, row["class_ids"]), row["probabilities"]))
                if row.get("note"):
                    titles = f"note: {row['note']}"
                elif "detections" in row:
                    titles = f"{len(row['detections'])} detection(s): {titles}"
                elif "regions" in row:
                    titles = f"{len(row['regions'])} region(s): {titles}"
                elif "text" in row:
                    titles = f"read {row['text']!r}: {len(row['characters'])} map(s)"
                say(f"{row['image']}: {titles} -> {Path(args.out) / row['overlay']}")

        try:
            summary = run.run(progress=bar.update if bar is not None else None, on_row=on_row)
        finally:
            if bar is not None:
                bar.close()
    out = Path(args.out)
    if args.report:
        print(f"report: {write_report(out, summary, page_size=args.report_page_size)[0]}")
    counts = summary["counts"]
    print(f"summary: {out / 'summary.json'} ({counts['ok']} explained, {counts['error']} failed)")
    return 1 if counts["error"] else 0


def _export(args: argparse.Namespace) -> int:
    from .bridge import export_onnx

    bundle = export_onnx(args.model, target=_target(args), **_export_kwargs(args))
    path = bundle.save(args.out_dir)
    notes = bundle.manifest.get("export", {})
    print(f"target: {_layers_text(bundle.manifest)}")
    if bundle.manifest.get("task", "classify") != "classify":
        fmt = bundle.manifest["format"]
        print(f"task: {bundle.manifest['task']}, format {fmt['name']} ({fmt.get('classes')} "
              f"classes), explaining {bundle.manifest['head']['logits']!r} (the "
              f"{fmt.get('explained')})")
    if bundle.input_gradient is not None:
        print("input gradient: yes (guided-backprop, guided-gradcam)")
    if notes.get("softmax"):
        print(f"output {notes['output']!r} is a {notes['softmax']}: explaining the pre-softmax "
              f"logits {notes['explained']!r}")
    if bundle.manifest["head"].get("score") == "probability":
        print(f"output {notes.get('output')!r} holds softmax probabilities (no logits found): "
              "explaining and showing them as they are")
    print(f"bundle: {path}")
    return 0


def _layout_text(candidate: Any) -> str:
    """The layout column: ``NLC 14x14+1`` for tokens (grid and prefix tokens)."""
    if candidate.layout == "NLC" and candidate.token_grid:
        h, w = candidate.token_grid
        return f"NLC {h}x{w}+{candidate.prefix_tokens}"
    return candidate.layout or "?"


def _inspect(args: argparse.Namespace) -> int:
    from .bridge import inspect_model

    candidates, spec, auto_tensors = inspect_model(
        args.model, output=args.output, pre_softmax=not args.keep_softmax, task=args.task,
        format=_format(args.format) if args.format else None, input_layout=args.input_layout)
    picked = [c for c in candidates if c.tensor in auto_tensors]
    auto = picked[0] if picked else None
    shown = candidates[-args.last:] if args.last else candidates
    rows = [("", "tensor", "shape", "node", "op", "layout", "cut", "grad", "unsupported ops")]
    for c in shown:
        rows.append((
            "*" if c in picked else "",
            c.tensor,
            "[" + ", ".join(str(d) for d in c.shape) + "]",
            c.node,
            c.op_type,
            _layout_text(c),
            "yes" if c.clean_cut else "no",
            "yes" if c.differentiable else "no",
            ", ".join(c.unsupported_ops),
        ))
    widths = [min(max(len(r[k]) for r in rows), 48) for k in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(candidates)} candidate layer(s)"
          + (f", showing the last {len(shown)}" if len(shown) < len(candidates) else ""))
    if spec.task != "classify":
        fmt = spec.format
        print(f"task: {spec.task}, format {fmt['name']} ({fmt.get('classes')} classes; outputs "
              f"{fmt['outputs']}; explaining the {fmt.get('explained')})")
    else:
        print("task: classify")
    source = getattr(spec, "input", None)
    if source is not None:
        name, shape, layout = source
        dims = "[" + ", ".join(str(d) for d in shape) + "]"
        print(f"input: {name!r} {dims}, " + (
            f"{layout} ({'given' if args.input_layout != 'auto' else 'detected'})" if layout
            else "layout unknown: export it with --input-layout NCHW or NHWC"))
    if len(picked) > 1:
        print(f"auto target: the head's inputs, one per stride: {[c.tensor for c in picked]}")
    else:
        print(f"auto target: {auto.tensor!r} ({auto.op_type} node {auto.node})" if auto else
              "auto target: none (no clean-cut spatial activation with a differentiable head)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .gradcheck import check_gradients, random_inputs

    explainer = _explainer(args)
    if args.images:
        inputs = explainer.preprocess(args.images)
    else:
        inputs = random_inputs(explainer.bundle, batch=args.batch, seed=args.seed)
    report = check_gradients(
        explainer.bundle, inputs, directions=args.directions, seed=args.seed,
        tolerance=args.tolerance, explainer=explainer, **({"eps": args.eps} if args.eps else {}),
    )
    print(report)
    return 0 if report.passed else 1


def _model_options(parser: argparse.ArgumentParser, model_help: str) -> None:
    parser.add_argument("model", help=model_help)
    parser.add_argument("--target", action="append", default=None,
                        help="layer to explain: auto (default), a tensor name or a node name; "
                             "repeat it for a layer sweep (one bundle, every layer's maps)")
    parser.add_argument("--layout", default="auto", choices=["auto", "NCHW", "NHWC"],
                        help="layout of the target activation (default: detected)")
    parser.add_argument("--output", default=None,
                        help="model output to explain when it has several")
    parser.add_argument("--keep-softmax", action="store_true",
                        help="explain softmax probabilities instead of the pre-softmax logits")
    _task_options(parser)
    parser.add_argument("--preprocessing", default=None,
                        help="JSON object or file, e.g. '{\"resize\": [224, 224], \"crop\": "
                             "null, \"scale\": 1, \"mean\": [127, 127, 127], \"std\": [128, "
                             "128, 128]}' (default: ImageNet-style, or raw uint8 pixels; keys "
                             "left out, \"layout\" included, come from the model)")
    parser.add_argument("--bgr", action="store_true",
                        help="the model takes BGR channels (OpenCV/Caffe pipelines): the same as "
                             "\"channels\": \"BGR\" in --preprocessing (recorded in the "
                             "bundle)")
    _input_layout_option(parser)


def _input_layout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-layout", default="auto", choices=["auto", "NCHW", "NHWC"],
                        help="layout of the model input (default: detected; needed when the "
                             "input's shape does not tell, e.g. 1-channel [1, 1, 64, W])")


def _task_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="auto",
                        choices=["auto", "classify", "detect", "segment", "sequence"],
                        help="what the model is (default: told from its outputs)")
    parser.add_argument("--format", default=None, metavar="FORMAT",
                        help="the output format: detectors yolov8, yolov5, yolox, end2end, "
                             "boxes_scores_labels, picodet; segmenters masks, binary; text "
                             "recognizers ctc; or a JSON object of its parameters (default: "
                             "told from the outputs)")


def _explain_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--targets", default=None,
        help="classes: a class id, or terms like top3, least, top3+least (default: top1); "
             "detectors: detections (default), topK, a class id or name, or a JSON box "
             "'{\"box\": [x1, y1, x2, y2], \"class\": NAME}'; segmenters: classes, regions, "
             "topK, a class, a JSON box or mask; text recognizers: characters (default), "
             "string, a position")
    add("--top-k", type=int, default=None, help="explain the K top classes (detections)")
    add("--method", default=None, choices=[*sorted(METHODS), *PIXEL_METHODS],
        help="CAM method (default: gradcam; layercam for detectors, segmenters and text "
             "recognizers); guided-backprop/"
             "guided-gradcam also write pixel maps")
    add("--conf", type=float, default=0.25,
        help="detectors: confidence threshold of the detections (default: 0.25)")
    add("--iou", type=float, default=0.45,
        help="detectors: IoU threshold of the NMS (default: 0.45)")
    add("--renormalize", default=None, metavar="boxes",
        help="detectors, segmenters, text recognizers: rescale each map inside its box "
             "(detection, region, character columns), zero outside")
    add("--threshold", type=float, default=0.5,
        help="segmenters with one sigmoid map (DBNet): the probability a region's pixels "
             "exceed (default: 0.5)")
    add("--contrast", default=None, metavar="SPEC",
        help="explain each target's score minus this class's (forms of --targets; one class, "
             "or one per target)")
    add("--score", default="logit", metavar="{logit,probability}",
        help="explain the logit (default) or the softmax probability")
    add("--fuse", default="mean", metavar="{mean,max,none}",
        help="layer sweeps: the top-level map is the mean (default) or max of the layers', or "
             "(none) the first layer's")
    add("--out", default="onnxcam_out", help="output directory")
    add("--recursive", action="store_true", help="descend into subfolders (and '**' in patterns)")
    add("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    add("--colormap", default="jet", choices=COLORMAPS, help="overlay colormap (default: jet)")
    add("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default: 0.5)")
    add("--save-npy", action="store_true", help="also write the heatmaps as NAME_cam.npy")
    add("--report", action="store_true", help="also write OUT/index.html, an offline gallery")
    add("--report-page-size", type=int, default=100, help="entries per report page")
    add("--resume", action="store_true",
        help="skip images a previous run into OUT finished (per OUT/summary.json)")
    add("--overwrite", action="store_true", help="replace existing outputs")
    add("--max-pixels", type=int, default=None,
        help="refuse images larger than this many pixels (default: Pillow's limit, ~89M)")
    add("--quiet", action="store_true", help="no progress bar, no line per image")


def _runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", default=None,
                        help="label set name (imagenet) or a text file, one class per line")
    parser.add_argument("--providers", default=None, help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    parser.add_argument("--cache-dir", default=None,
                        help="cache the bundle built from a .onnx file in this directory")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="onnxcam",
        description="Grad-CAM computed by ONNX Runtime, for ONNX models and onnxcam bundles.",
        epilog=EXAMPLES,
        formatter_class=raw,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)
    model_help = "an ONNX file or a bundle directory (features.onnx, head.onnx, manifest.json)"

    explain = commands.add_parser("explain", help="write CAM overlays and a JSON summary",
                                  epilog=EXPLAIN_EXAMPLES, formatter_class=raw)
    _model_options(explain, model_help)
    explain.add_argument("images", nargs="+", metavar="PATH",
                         help="image files, folders and glob patterns ('photos/*.jpg')")
    _explain_options(explain)
    _runtime_options(explain)
    explain.set_defaults(run=_explain)

    export = commands.add_parser("export", help="build a bundle directory from an ONNX model",
                                 epilog=EXPORT_EXAMPLES, formatter_class=raw)
    _model_options(export, "the ONNX file")
    export.add_argument("-o", "--out-dir", required=True, help="bundle directory to write")
    export.add_argument("--labels", default=None,
                        help="label set name (imagenet) or a text file, one class per line")
    export.add_argument("--input-gradient", action="store_true",
                        help="also build the input-gradient graph (guided-backprop, "
                             "guided-gradcam)")
    export.set_defaults(run=_export)

    inspect = commands.add_parser("inspect", help="list the layers a model can be explained from",
                                  epilog=INSPECT_EXAMPLES, formatter_class=raw)
    inspect.add_argument("model", help="the ONNX file")
    inspect.add_argument("--output", default=None, help="model output to explain")
    inspect.add_argument("--keep-softmax", action="store_true",
                         help="do not look through a final softmax")
    _task_options(inspect)
    _input_layout_option(inspect)
    inspect.add_argument("--last", type=int, default=None, help="show only the last N layers")
    inspect.set_defaults(run=_inspect)

    check = commands.add_parser(
        "check", help="compare the head's gradient with finite differences",
        epilog=CHECK_EXAMPLES, formatter_class=raw,
    )
    _model_options(check, model_help)
    check.add_argument("--images", nargs="*", default=None,
                       help="images to check at (default: random inputs)")
    check.add_argument("--batch", type=int, default=None, help="random inputs: batch size")
    check.add_argument("--directions", type=int, default=3, help="random directions per image")
    check.add_argument("--eps", type=float, nargs="+", default=None,
                       help="relative finite-difference step(s) (default: 3e-2 down to 1e-4)")
    check.add_argument("--tolerance", type=float, default=5e-2, help="largest relative error")
    check.add_argument("--seed", type=int, default=0, help="seed of inputs and directions")
    _runtime_options(check)
    check.set_defaults(run=_check)
    return parser


#: Python argument -> command-line flag, for messages the library writes for Python callers
_FLAGS = {
    "input_layout": "--input-layout", "layout": "--layout", "target": "--target",
    "output": "--output", "labels": "--labels", "preprocessing": "--preprocessing",
    "task": "--task", "format": "--format", "targets": "--targets", "top_k": "--top-k",
    "contrast": "--contrast", "score": "--score", "method": "--method", "conf": "--conf",
    "iou": "--iou", "renormalize": "--renormalize", "fuse": "--fuse",
    "max_pixels": "--max-pixels", "cache_dir": "--cache-dir", "providers": "--providers",
    "threads": "--threads",
}
_SWITCHES = {"pre_softmax=False": "--keep-softmax", "input_gradient=True": "--input-gradient"}
_ARGUMENT = re.compile(r"(?<![\w.-])(" + "|".join(_FLAGS) + r")="
                       r"(?:'([\w.-]*)'(?: or '([\w.-]*)')?)?")


def cli_message(message: str) -> str:
    """``message`` as a command-line user reads it: each Python argument it suggests
    (``target=``, ``input_layout='NCHW' or 'NHWC'``, ``pre_softmax=False``) becomes its flag
    (``--target``, ``--input-layout NCHW or NHWC``, ``--keep-softmax``), unless the message
    names that flag already."""
    for python, flag in _SWITCHES.items():
        if flag not in message:
            message = message.replace(python, flag)

    def flag_of(match: re.Match[str]) -> str:
        flag = _FLAGS[match.group(1)]
        if re.search(re.escape(flag) + r"(?![\w-])", message):
            return match.group(0)  # named both ways already: "--target (target=)"
        values = [v for v in match.groups()[1:] if v]
        return " or ".join([f"{flag} {values[0]}", *values[1:]]) if values else flag

    return _ARGUMENT.sub(flag_of, message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnxcam`` console script; returns the exit code (see ``--help``)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.run(args)
    except OnnxcamError as err:
        print(f"error: {cli_message(str(err))}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
