"""The ``onnxcam`` command: explain, export, inspect and check ONNX models. Never imports torch.

Every error the project raises is an :class:`explainer.OnnxcamError`; the command prints it as
one line on stderr and exits with its ``exit_code`` (listed in ``onnxcam --help``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputError, OnnxcamError
from .methods import METHODS

__all__ = ["main", "build_parser"]

EXAMPLES = """examples:
  onnxcam inspect model.onnx                      # candidate layers, '*' marks the auto pick
  onnxcam explain model.onnx cat.jpg dog.jpg --top-k 3 --out cams/
  onnxcam explain model.onnx cat.jpg --target features --labels imagenet
  onnxcam export model.onnx --target auto --labels imagenet -o model.onnxcam
  onnxcam explain model.onnxcam cat.jpg --targets top3+least --providers cuda
  onnxcam check model.onnx                        # gradient vs finite differences

exit codes:
  0  success
  1  a failure while explaining (a gradient that cannot be built, a failed self-check)
  2  a usage or input error (bad argument, unreadable model, image or bundle, bad labels)
"""
EXPLAIN_EXAMPLES = """examples:
  onnxcam explain model.onnx cat.jpg dog.jpg --top-k 3 --out cams/
  onnxcam explain model.onnx cat.jpg --target auto --cache-dir ~/.cache/onnxcam
  onnxcam explain resnet50.onnxcam cat.jpg --targets top3+least --providers cuda
"""
EXPORT_EXAMPLES = """examples:
  onnxcam export model.onnx -o model.onnxcam
  onnxcam export model.onnx --target features --layout NHWC --labels imagenet -o model.onnxcam
  onnxcam export model.onnx --output logits --keep-softmax -o model.onnxcam
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
    if getattr(args, "preprocessing", None):
        kwargs["preprocessing"] = _preprocessing(args.preprocessing)
    return kwargs


def _preprocessing(spec: str) -> Any:
    """Preprocessing from inline JSON or a JSON file (keys of explainer.Preprocessing)."""
    from .errors import ImageError
    from .preprocessing import Preprocessing

    try:
        data = json.loads(spec) if spec.lstrip().startswith("{") else json.loads(
            Path(spec).read_text())
        return Preprocessing.from_dict(data)
    except (OSError, ValueError, TypeError) as err:
        if isinstance(err, ImageError):
            raise
        raise ImageError(f"--preprocessing {spec!r}: expected a JSON object or a JSON file with "
                         f"keys of explainer.Preprocessing ({err})") from err


def _labels(spec: str) -> str | list[str]:
    """A label-set name, or a text file with one class name per line."""
    path = Path(spec)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return spec


def _explainer(args: argparse.Namespace) -> Any:
    from . import Explainer

    if _is_bundle(args.model):
        flags = {"pre_softmax": "--keep-softmax"}
        ignored = [flags.get(k, f"--{k}") for k in _export_kwargs(args)]
        if args.target != "auto":
            ignored.insert(0, "--target")
        if ignored:
            print(f"note: {args.model} is a bundle; {', '.join(ignored)} ignored (they apply "
                  "to .onnx files)", file=sys.stderr)
        return Explainer(args.model, providers=args.providers, threads=args.threads)
    explainer = Explainer.from_onnx(
        args.model, target=args.target, providers=args.providers, threads=args.threads,
        cache_dir=args.cache_dir, **_export_kwargs(args),
    )
    if explainer.bundle.manifest.get("export", {}).get("preprocessing_guessed"):
        print(f"note: no --preprocessing given; assuming {explainer.preprocessing}",
              file=sys.stderr)
    return explainer


def _explain(args: argparse.Namespace) -> int:
    from .image import prepare_image
    from .visualize import figure

    explainer = _explainer(args)
    if explainer.preprocessing is None:
        raise InputError(f"{args.model} records no preprocessing; export it with --preprocessing")
    target = explainer.bundle.manifest["target"]
    print(f"explaining {target['tensor']!r} ({target['layer']}, {target['layout']}, shape "
          f"{target.get('shape')})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = args.targets
    if targets is not None and targets.lstrip("-").isdigit():
        targets = int(targets)
    explanation = explainer.explain(
        explainer.preprocess(args.images), targets=targets, top_k=args.top_k, method=args.method
    )
    summary = []
    for i, image in enumerate(args.images):
        shown = prepare_image(image, explainer.preprocessing)
        path = out / f"{Path(image).stem}_cam.png"
        figure(shown, list(explanation.heatmaps[i]), explanation.titles(i)).save(path)
        summary.append({
            "image": str(image),
            "overlay": str(path),
            "target": target["tensor"],
            "class_ids": explanation.class_ids[i].tolist(),
            "labels": explanation.labels[i] if explanation.labels else None,
            "scores": explanation.scores[i].tolist(),
            "probabilities": explanation.probabilities[i].tolist(),
        })
        print(f"{image}: {', '.join(explanation.titles(i))} -> {path}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {out / 'summary.json'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .bridge import export_onnx

    bundle = export_onnx(args.model, target=args.target, **_export_kwargs(args))
    path = bundle.save(args.out_dir)
    target, notes = bundle.manifest["target"], bundle.manifest.get("export", {})
    print(f"target: {target['tensor']!r} ({target['layer']}, {target['layout']}, shape "
          f"{target['shape']})")
    if notes.get("softmax"):
        print(f"output {notes['output']!r} is a {notes['softmax']}: explaining the pre-softmax "
              f"logits {notes['explained']!r}")
    print(f"bundle: {path}")
    return 0


def _layout_text(candidate: Any) -> str:
    """The layout column: ``NLC 14x14+1`` for tokens (grid and prefix tokens)."""
    if candidate.layout == "NLC" and candidate.token_grid:
        h, w = candidate.token_grid
        return f"NLC {h}x{w}+{candidate.prefix_tokens}"
    return candidate.layout or "?"


def _inspect(args: argparse.Namespace) -> int:
    from .bridge import auto_targets, candidate_layers

    candidates = candidate_layers(args.model, output=args.output,
                                  pre_softmax=not args.keep_softmax)
    auto = next(iter(auto_targets(candidates)), None)
    shown = candidates[-args.last:] if args.last else candidates
    rows = [("", "tensor", "shape", "node", "op", "layout", "cut", "grad", "unsupported ops")]
    for c in shown:
        rows.append((
            "*" if c is auto else "",
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
    parser.add_argument("--target", default="auto",
                        help="layer to explain: auto (default), a tensor name or a node name")
    parser.add_argument("--layout", default="auto", choices=["auto", "NCHW", "NHWC"],
                        help="layout of the target activation (default: detected)")
    parser.add_argument("--output", default=None,
                        help="model output to explain when it has several")
    parser.add_argument("--keep-softmax", action="store_true",
                        help="explain softmax probabilities instead of the pre-softmax logits")
    parser.add_argument("--preprocessing", default=None,
                        help="JSON object or file, e.g. '{\"resize\": [224, 224], \"crop\": "
                             "null, \"scale\": 1, \"mean\": [127, 127, 127], \"std\": [128, "
                             "128, 128]}' (default: ImageNet-style, or raw uint8 pixels)")


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
    explain.add_argument("images", nargs="+", help="image files")
    explain.add_argument("--targets", default=None,
                         help="classes: a class id, or terms like top3, least, top3+least "
                              "(default: top1)")
    explain.add_argument("--top-k", type=int, default=None, help="explain the K top classes")
    explain.add_argument("--method", default="gradcam", choices=sorted(METHODS),
                         help="CAM method (default: gradcam)")
    explain.add_argument("--out", default="onnxcam_out", help="output directory")
    _runtime_options(explain)
    explain.set_defaults(run=_explain)

    export = commands.add_parser("export", help="build a bundle directory from an ONNX model",
                                 epilog=EXPORT_EXAMPLES, formatter_class=raw)
    _model_options(export, "the ONNX file")
    export.add_argument("-o", "--out-dir", required=True, help="bundle directory to write")
    export.add_argument("--labels", default=None,
                        help="label set name (imagenet) or a text file, one class per line")
    export.set_defaults(run=_export)

    inspect = commands.add_parser("inspect", help="list the layers a model can be explained from",
                                  epilog=INSPECT_EXAMPLES, formatter_class=raw)
    inspect.add_argument("model", help="the ONNX file")
    inspect.add_argument("--output", default=None, help="model output to explain")
    inspect.add_argument("--keep-softmax", action="store_true",
                         help="do not look through a final softmax")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnxcam`` console script; returns the exit code (see ``--help``)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.run(args)
    except OnnxcamError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
