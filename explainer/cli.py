"""The ``onnxcam`` command: explain, export, inspect and check ONNX models. Never imports torch.

Every error the project raises is an :class:`explainer.OnnxcamError`; the command prints it as
one line on stderr and exits with its ``exit_code`` (listed in ``onnxcam --help``).

This module builds the argument parser and runs a command: the commands themselves are in
:mod:`explainer.cli_commands`, their help texts in :mod:`explainer.cli_help` and the rewriting of
error messages for the command line in :mod:`explainer.cli_messages`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .cli_commands import run_check, run_explain, run_export, run_inspect
from .cli_evaluate import EVALUATE_EXAMPLES, evaluate_options, run_evaluate
from .cli_help import (
    CHECK_EXAMPLES,
    EXAMPLES,
    EXPLAIN_EXAMPLES,
    EXPORT_EXAMPLES,
    INSPECT_EXAMPLES,
)
from .cli_messages import cli_message
from .errors import OnnxcamError
from .methods import METHODS
from .tasks.registry import TASKS, format_help
from .visualize import COLORMAPS

__all__ = ["main", "build_parser", "cli_message"]

#: the note the deprecated ``--target`` (now ``--layer``) prints, once per command line
TARGET_DEPRECATED = ("note: --target is deprecated and will be removed in the next release; "
                     "use --layer (the layer to explain; --targets still chooses what to explain)")


class _DeprecatedLayerAlias(argparse.Action):
    """``--target NAME``: appends to ``--layer`` as ``--layer NAME`` does, and prints
    :data:`TARGET_DEPRECATED` to stderr the first time it is given."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if not getattr(namespace, "_target_noted", False):
            print(TARGET_DEPRECATED, file=sys.stderr)
            namespace._target_noted = True
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])


def _model_options(parser: argparse.ArgumentParser, model_help: str) -> None:
    parser.add_argument("model", help=model_help)
    parser.add_argument("--layer", action="append", default=None, metavar="LAYER",
                        help="layer to explain (where the model is cut): auto (default), a "
                             "tensor name or a node name; repeat it for a layer sweep (one "
                             "bundle, every layer's maps)")
    parser.add_argument("--target", action=_DeprecatedLayerAlias, dest="layer",
                        metavar="LAYER", help="deprecated name of --layer")
    parser.add_argument("--layout", default="auto", choices=["auto", "NCHW", "NHWC"],
                        help="layout of the layer's activation (default: detected)")
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
                        choices=["auto", *TASKS],
                        help="what the model is (default: told from its outputs)")
    parser.add_argument("--format", default=None, metavar="FORMAT",
                        help=f"the output format: {format_help()}; or a JSON object of its "
                             "parameters (default: told from the outputs)")


def _explain_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--targets", default=None,
        help="classes: a class id, or terms like top3, least, top3+least (default: top1); "
             "detectors: detections (default), topK, a class id or name, or a JSON box "
             "'{\"box\": [x1, y1, x2, y2], \"class\": NAME}'; segmenters: classes, regions, "
             "topK, a class, a JSON box or mask; text recognizers: characters (default), "
             "string, a position")
    add("--top-k", type=int, default=None, help="explain the K top classes (detections)")
    add("--method", default=None, choices=list(METHODS),
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
    explain.set_defaults(run=run_explain)

    export = commands.add_parser("export", help="build a bundle directory from an ONNX model",
                                 epilog=EXPORT_EXAMPLES, formatter_class=raw)
    _model_options(export, "the ONNX file")
    export.add_argument("-o", "--out-dir", required=True, help="bundle directory to write")
    export.add_argument("--labels", default=None,
                        help="label set name (imagenet) or a text file, one class per line")
    export.add_argument("--input-gradient", action="store_true",
                        help="also build the input-gradient graph (guided-backprop, "
                             "guided-gradcam)")
    export.set_defaults(run=run_export)

    inspect = commands.add_parser("inspect", help="list the layers a model can be explained from",
                                  epilog=INSPECT_EXAMPLES, formatter_class=raw)
    inspect.add_argument("model", help="the ONNX file")
    inspect.add_argument("--output", default=None, help="model output to explain")
    inspect.add_argument("--keep-softmax", action="store_true",
                         help="do not look through a final softmax")
    _task_options(inspect)
    _input_layout_option(inspect)
    inspect.add_argument("--last", type=int, default=None, help="show only the last N layers")
    inspect.set_defaults(run=run_inspect)

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
    check.set_defaults(run=run_check)

    evaluate = commands.add_parser("evaluate", help="score CAM methods with evaluation metrics",
                                   epilog=EVALUATE_EXAMPLES, formatter_class=raw)
    _model_options(evaluate, model_help)
    evaluate_options(evaluate)
    _runtime_options(evaluate)
    evaluate.set_defaults(run=run_evaluate)
    return parser



def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnxcam`` console script; returns the exit code (see ``--help``)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    # export and inspect print the task line themselves: the exporters' log of it would repeat it
    quiet = list(logging.getLogger().handlers) if args.run in (run_export, run_inspect) else []
    for handler in quiet:
        handler.addFilter(without_task_log)
    try:
        return args.run(args)
    except OnnxcamError as err:
        print(f"error: {cli_message(str(err))}", file=sys.stderr)
        return err.exit_code
    finally:
        for handler in quiet:
            handler.removeFilter(without_task_log)


def without_task_log(record: logging.LogRecord) -> bool:
    """A logging filter: False for the exporters' INFO record of the task and output format
    (``task detect, format yolov8 ...``), which ``export`` and ``inspect`` print as their task
    line."""
    return not (record.name.startswith("exporters.") and record.levelno == logging.INFO
                and str(record.msg).startswith("task "))


if __name__ == "__main__":
    sys.exit(main())
