"""The subcommands of ``onnxcam`` (explain, export, inspect, check), each run on the parsed
arguments; :mod:`explainer.cli` builds the parser. Never imports torch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .cli_messages import cli_message
from .pixels import PIXEL_METHODS

__all__ = ["run_check", "run_explain", "run_export", "run_inspect"]


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


def _layer(args: argparse.Namespace) -> str | list[str]:
    """The --layer value(s): "auto" when none, one name, or a layer sweep's list of names."""
    from .errors import UsageError

    given = args.layer or ["auto"]
    if len(given) == 1:
        return given[0]
    if "auto" in given:
        raise UsageError(f"--layer auto cannot be part of a layer sweep ({', '.join(given)}); "
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

    target = _layer(args)
    if _is_bundle(args.model):
        flags = {"pre_softmax": "--keep-softmax", "input_gradient": "--input-gradient",
                 "input_layout": "--input-layout",
                 "preprocessing": "--preprocessing" if args.preprocessing else "--bgr"}
        ignored = [flags.get(k, f"--{k}") for k in _export_kwargs(args)]
        if target != "auto":
            ignored.insert(0, "--layer")
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
    if (explainer.spec.export or {}).get("preprocessing_guessed"):
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


def _task_text(task: str, fmt: dict[str, Any] | None, explained: str | None = None) -> str:
    """The one line export and inspect print about the task: past a classifier, its output
    format (classes, outputs) and what the head explains (the tensor ``explained`` when known)."""
    if task == "classify" or not fmt:
        return f"task: {task}"
    what = f"the {fmt.get('explained')}"
    return (f"task: {task}, format {fmt['name']} ({fmt.get('classes')} classes; outputs "
            f"{fmt.get('outputs')}), explaining " + (f"{explained!r} ({what})" if explained
                                                     else what))


def _progress_bar(args: argparse.Namespace, total: int) -> Any:
    """A tqdm bar on stderr when it is a terminal (and not --quiet), else None."""
    if args.quiet or total == 0 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; a stripped environment just runs without a bar
        return None
    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)


def run_explain(args: argparse.Namespace) -> int:
    """``onnxcam explain``: a folder run of the images (and its report); the exit code."""
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


def run_export(args: argparse.Namespace) -> int:
    """``onnxcam export``: build and save the bundle of an ONNX file; the exit code."""
    from .bridge import export_onnx

    bundle = export_onnx(args.model, target=_layer(args), **_export_kwargs(args))
    path = bundle.save(args.out_dir)
    spec = bundle.spec
    notes = spec.export or {}
    print(f"target: {_layers_text(bundle.manifest)}")
    if spec.task != "classify":
        print(_task_text(spec.task, spec.format, spec.head.logits))
    if bundle.input_gradient is not None:
        print("input gradient: yes (guided-backprop, guided-gradcam)")
    if notes.get("softmax"):
        print(f"output {notes['output']!r} is a {notes['softmax']}: explaining the pre-softmax "
              f"logits {notes['explained']!r}")
    if spec.head.score == "probability":
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


def run_inspect(args: argparse.Namespace) -> int:
    """``onnxcam inspect``: print the candidate layers, the task and the auto layer."""
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
    print(_task_text(spec.task, spec.format))
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


def run_check(args: argparse.Namespace) -> int:
    """``onnxcam check``: the gradient self-check; exit code 1 when it fails."""
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
