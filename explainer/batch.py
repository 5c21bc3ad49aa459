"""Folder runs: explain many image files in batches, writing overlays and ``summary.json``.

What ``onnxcam explain`` does with its paths, usable from Python too::

    images = collect_images(["photos/", "more/*.jpg"], recursive=True)
    run = FolderRun(explainer, images, "out", RunOptions(top_k=3, save_npy=True))
    summary = run.run()

Every image is decoded on its own (a file that fails is recorded with its error and the rest
still runs), preprocessed to the model's input size and explained in batches of
``batch_size`` (images whose preprocessed sizes differ go in separate batches). Outputs are
written atomically (:mod:`explainer.outputs`), and ``summary.json`` is rewritten as the run
goes, so a killed run can be continued with ``resume=True``: images recorded as done, whose
files exist, are skipped.

Per image the folder gets ``NAME_cam.png`` (the input and one overlay per target) and, with
``save_npy``, ``NAME_cam.npy`` (heatmaps [K, H, W]). For a detector the targets are its
detections: the figure draws each detection's box on its own overlay (and all of them, numbered,
on the input), the summary row lists them (``detections``: box in model-input pixels,
``image_box`` in the original image's, score, class, label), and an image with no detection
above the threshold gets the input alone and a note, not an error. A segmenter's regions are
drawn and listed likewise (``regions``); a text recognizer's row gives the decoded ``text`` and
its ``characters``, and a text line's figure lays the maps out one per row. A layer-sweep bundle
adds
each layer's overlay figure, ``NAME_cam_LAYER.png`` (the layer name made filesystem-safe; the
top-level overlay is the fused map). The pixel-space methods add each target's pixel map drawn by
:func:`explainer.visualize.pixel_image`, ``NAME_pixels.png`` (``NAME_pixels_J.png`` for target
column J when there are several), and with ``save_npy`` ``NAME_pixels.npy`` ([K, C, H, W]).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .detection import DEFAULT_CONF, DEFAULT_IOU, check_renormalize
from .errors import ExplainerError, InputError, OnnxcamError, OutputError, TargetError, UsageError
from .image import ImageLike, prepare_with_geometry, preprocess, values_only
from .inputs import collect_images, output_names, unique_name
from .layers import check_fuse
from .outputs import remove_stale_temps, save_json, save_npy, save_png
from .pixels import PIXEL_METHODS, require_input_gradient
from .segmentation import DEFAULT_THRESHOLD
from .targets import check_score, plan_targets
from .tasks import planner
from .visualize import COLORMAPS, figure, pixel_image

__all__ = [
    "SUMMARY",
    "Explained",
    "FolderRun",
    "RunOptions",
    "collect_images",
    "explain_batch",
    "layer_file_names",
    "write_outputs",
]

if TYPE_CHECKING:
    from .runtime import Explanation

log = logging.getLogger(__name__)

#: the summary file a run writes in its output folder
SUMMARY = "summary.json"
_OVERLAY, _HEATMAPS = "_cam.png", "_cam.npy"
_PIXELS, _PIXELS_NPY = "_pixels", "_pixels.npy"
#: summary settings of older runs that did not record them, as they ran
_HEADER_DEFAULTS = {"score": "logit", "fuse": "mean"}


@dataclass
class RunOptions:
    """What a :class:`FolderRun` explains and writes.

    Attributes:
        targets: a target spec as for :meth:`Explainer.explain` (None: top-1).
        top_k: explain the K most probable classes.
        method: CAM method name.
        batch_size: images per ONNX Runtime batch.
        colormap: overlay colormap (see :data:`explainer.visualize.COLORMAPS`).
        alpha: overlay opacity in [0, 1].
        save_npy: also write the heatmaps, [K, H, W] float32, as ``<name>_cam.npy``.
        max_pixels: largest input image (width * height), see :func:`explainer.load_image`.
        overwrite: replace existing outputs.
        resume: skip images a previous run in the same folder finished; replace the rest.
        contrast: contrast classes, in the forms of ``targets`` (one per image or one per
            target): explain each target's score minus its contrast class's.
        score: ``"logit"`` or ``"probability"`` (see :data:`explainer.targets.SCORES`).
        fuse: how a layer sweep's top-level heatmaps combine the layers': ``"mean"``,
            ``"max"`` or None (the first layer's); see :func:`explainer.layers.fuse`.
        conf: a detector's confidence threshold.
        iou: a detector's NMS IoU threshold.
        renormalize: ``"boxes"``: each detection's (region's, character's) map rescaled
            inside its box, zero outside.
        threshold: a binary segmentation map's probability threshold.
    """

    targets: Any = None
    top_k: int | None = None
    method: str | None = "gradcam"
    batch_size: int = 8
    colormap: str = "jet"
    alpha: float = 0.5
    save_npy: bool = False
    max_pixels: int | None = None
    overwrite: bool = False
    resume: bool = False
    contrast: Any = None
    score: str = "logit"
    fuse: str | None = "mean"
    conf: float = DEFAULT_CONF
    iou: float = DEFAULT_IOU
    renormalize: str | None = None
    threshold: float = DEFAULT_THRESHOLD

    def check(self, num_classes: int, labels: list[str] | None = None,
              task: str = "classify", fmt: dict[str, Any] | None = None) -> None:
        """Raise a :class:`UsageError` (:class:`TargetError` for targets, contrast and score)
        for options no image could satisfy."""
        from .methods import METHODS

        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.colormap not in COLORMAPS:
            raise UsageError(f"unknown colormap {self.colormap!r}; choose one of {COLORMAPS}")
        if self.method not in METHODS and self.method not in PIXEL_METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose one of "
                             f"{[*sorted(METHODS), *PIXEL_METHODS]}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError(f"max pixels must be positive, got {self.max_pixels}")
        check_score(self.score)
        check_fuse(self.fuse)
        if task != "classify":
            self._check_task(task, num_classes, labels, fmt or {})
            return
        plan = plan_targets(self.targets, self.top_k, 1, num_classes, labels)  # before any image
        if self.contrast is not None:
            against = plan_targets(self.contrast, None, 1, num_classes, labels).count
            if against not in (1, plan.count):
                raise TargetError(
                    f"contrast {self.contrast!r} gives {against} classes per image for "
                    f"{plan.count} targets; give one contrast class per image or one per target"
                )

    def _check_task(self, task: str, num_classes: int, labels: list[str] | None,
                    fmt: dict[str, Any]) -> None:
        if self.method in PIXEL_METHODS:
            raise UsageError(f"method {self.method!r} is for classifiers; a {task} model takes "
                             "the CAM methods")
        if self.contrast is not None:
            raise TargetError(f"--contrast is for classifiers; a {task} model explains its "
                              "own targets")
        check_renormalize(self.renormalize)
        options = self.explain_options(task)
        planner(task, fmt, labels, num_classes, options.pop("targets"), self.score,
                **{k: v for k, v in options.items()
                   if k not in ("method", "score", "fuse", "renormalize")})

    def explain_options(self, task: str = "classify") -> dict[str, Any]:
        """The keyword arguments of :meth:`Explainer.explain` these options set."""
        options = {"targets": self.targets, "top_k": self.top_k, "method": self.method,
                   "score": self.score, "fuse": self.fuse}
        if task == "classify":
            return {**options, "contrast": self.contrast}
        options["renormalize"] = self.renormalize
        if task == "detect":
            return {**options, "conf": self.conf, "iou": self.iou}
        if task == "segment":
            return {**options, "threshold": self.threshold}
        return options


def layer_file_names(layers: Sequence[str]) -> dict[str, str]:
    """A filesystem-safe, unique file-name part per layer name: characters other than
    letters, digits, ``.``, ``-`` and ``_`` become ``_`` (``/layer4/Relu`` -> ``layer4_Relu``);
    names that would clash get ``_2``, ``_3``..."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for layer in layers:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", layer).strip("._") or "layer"
        names[layer] = unique_name(base, used)
    return names


@dataclass
class Explained:
    """One image of :func:`explain_batch`: what the model saw and its explanation, or the error.

    Attributes:
        shown: the image resized and cropped as the model saw it.
        explanation: the explanation of the batch the image was in.
        index: the image's row in ``explanation``.
        error: why the image failed (then the other fields are None).
    """

    shown: Image.Image | None = None
    explanation: Explanation | None = None
    index: int = 0
    error: OnnxcamError | None = None

    def fields(self) -> dict[str, Any]:
        """Classes, labels, scores and probabilities (and a detector's detections), as
        JSON-ready lists."""
        e, i = self.explanation, self.index
        k = e.count(i)
        row = {"class_ids": e.class_ids[i, :k].tolist(),
               "labels": e.labels[i][:k] if e.labels else None,
               "scores": e.scores[i, :k].tolist(),
               "probabilities": e.probabilities[i, :k].tolist()}
        if e.items is None:
            return row
        key = {"detect": "detections", "segment": "regions", "sequence": "characters"}[e.task]
        row[key] = [item.to_dict() for item in e.items[i]]
        if e.sequence is not None:
            row["text"] = e.sequence[i].text
            row["text_score"] = e.sequence[i].score
        nothing = {"detect": "no detection to explain", "segment": "no region to explain",
                   "sequence": "no character decoded"}[e.task]
        row["note"] = None if k else nothing
        return row


def _explain_group(explainer: Any, group: list[tuple[Any, ...]],
                   options: RunOptions, results: list[Explained]) -> None:
    """Explain same-shape images in one batch; after an error, one by one to find the culprit."""
    task = getattr(explainer, "task", "classify")
    extra = {"geometry": [g for *_, g in group]} if task != "classify" else {}
    try:
        explanation = explainer.explain(np.concatenate([item[2] for item in group]),
                                        **options.explain_options(task), **extra)
    except OnnxcamError as err:
        if len(group) == 1:
            results[group[0][0]] = Explained(error=err)
            return
        for item in group:
            _explain_group(explainer, [item], options, results)
        return
    for row, (k, shown, *_) in enumerate(group):
        results[k] = Explained(shown, explanation, row)


def explain_batch(
    explainer: Any, sources: Sequence[ImageLike], options: RunOptions | None = None
) -> list[Explained]:
    """Decode, preprocess and explain images, one :class:`Explained` per source, in order.

    A source that cannot be decoded or explained gets its error; the others are explained in
    one batch per preprocessed shape (images of one model size always batch together).
    """
    options = options or RunOptions()
    pre = explainer.preprocessing
    if pre is None:
        raise InputError("the bundle records no preprocessing; export it with --preprocessing")
    results = [Explained() for _ in sources]
    groups: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
    normalize = values_only(pre)  # `shown` is resized already
    for k, source in enumerate(sources):
        try:
            shown, geometry = prepare_with_geometry(source, pre, max_pixels=options.max_pixels)
            x = preprocess([shown], normalize)
        except OnnxcamError as err:
            results[k] = Explained(error=err)
            continue
        groups.setdefault(x.shape, []).append((k, shown, x, geometry))
    for group in groups.values():
        _explain_group(explainer, group, options, results)
    return results


def write_outputs(
    result: Explained,
    overlay: Path,
    heatmaps: Path | None,
    options: RunOptions,
    *,
    layers: dict[str, Path] | None = None,
    pixels: Sequence[Path] = (),
    pixels_npy: Path | None = None,
) -> None:
    """Write an image's outputs, each atomically.

    Args:
        result: the explained image.
        overlay: its overlay figure (input + one overlay per target, titled).
        heatmaps: where its heatmaps [K, H, W] float32 go as ``.npy``, or None.
        options: colormap and opacity of the overlays.
        layers: a layer sweep's overlay figure per layer name (each layer's own heatmaps).
        pixels: one PNG per target of the pixel maps (:func:`explainer.visualize.pixel_image`).
        pixels_npy: where the pixel maps [K, C, H, W] float32 go as ``.npy``, or None.

    Raises:
        ExplainerError: the explanation lacks the layer maps or pixel maps asked for.
    """
    e, i = result.explanation, result.index
    k = e.count(i)
    # a detection's or region's box on its map (a character's columns would hide its map)
    boxes = None if e.items is None or e.task == "sequence" else [item.box for item in e.items[i]]

    def draw(maps: np.ndarray, path: Path) -> None:
        save_png(figure(result.shown, list(maps[i, :k]), e.titles(i), colormap=options.colormap,
                        alpha=options.alpha, boxes=boxes), path)

    draw(e.heatmaps, overlay)
    if heatmaps is not None:
        save_npy(np.ascontiguousarray(e.heatmaps[i, :k], dtype=np.float32), heatmaps)
    for layer, path in (layers or {}).items():
        if e.items is not None and k == 0:  # nothing to explain: the input alone
            draw(e.heatmaps, path)
            continue
        if not e.layers or layer not in e.layers:
            raise ExplainerError(f"the explanation has no maps of layer {layer!r}")
        draw(e.layers[layer].heatmaps, path)
    if (pixels or pixels_npy is not None) and e.pixels is None:
        raise ExplainerError(f"method {e.method!r} gave no pixel maps")
    for k, path in enumerate(pixels):
        save_png(pixel_image(e.pixels[i, k]), path)
    if pixels_npy is not None:
        save_npy(np.ascontiguousarray(e.pixels[i], dtype=np.float32), pixels_npy)


@dataclass
class _Files:
    """The outputs of one image in a folder run (None / empty where the run writes none)."""

    overlay: Path
    heatmaps: Path | None = None
    layers: dict[str, Path] = dataclasses.field(default_factory=dict)
    pixels: list[Path] = dataclasses.field(default_factory=list)
    pixels_npy: Path | None = None

    def all(self) -> list[Path]:
        """Every file, in a fixed order."""
        files = [self.overlay, self.heatmaps, *self.layers.values(), *self.pixels,
                 self.pixels_npy]
        return [f for f in files if f is not None]


class FolderRun:
    """Explain image files into an output folder (see the module docstring).

    Args:
        explainer: the :class:`~explainer.Explainer` (it must record preprocessing).
        images: image files, e.g. from :func:`collect_images`.
        out: the output folder.
        options: what to explain and write.
        model: how the summary names the model (e.g. the path given on the command line).
        extra_outputs: more files the caller writes into ``out`` (e.g. ``index.html``); they
            are checked like the others.

    Raises:
        OutputError: an output would replace an input, or exists already without ``overwrite``
            or ``resume``; or ``resume`` finds a summary written with other settings.
        MethodError: a pixel-space method and a bundle without the input-gradient graph.
        UsageError: invalid options.
    """

    def __init__(
        self,
        explainer: Any,
        images: Sequence[Path],
        out: str | os.PathLike[str],
        options: RunOptions | None = None,
        model: str = "",
        extra_outputs: Sequence[str] = (),
    ) -> None:
        if explainer.preprocessing is None:
            raise InputError(f"{model or 'the bundle'} records no preprocessing; export it with "
                             "--preprocessing")
        self.explainer, self.out = explainer, Path(out)
        self.options = options or RunOptions()
        options = self.options
        self.task = getattr(explainer, "task", "classify")
        if options.method is None:
            options.method = getattr(explainer, "default_method", "gradcam")
        options.check(explainer.num_classes, explainer.labels, self.task,
                      explainer.bundle.manifest.get("format"))
        if options.method in PIXEL_METHODS:  # before any image, not once per image
            require_input_gradient(explainer.bundle, options.method)
        self.images = [Path(p).resolve() for p in images]
        manifest = explainer.bundle.manifest
        target = manifest["target"]
        layers = [layer["layer"] for layer in manifest.get("layers") or []]
        #: a sweep's layer name -> its file-name part (empty for a one-layer bundle)
        self.layer_files = layer_file_names(layers) if len(layers) > 1 else {}
        #: targets per image (a pixel map file each)
        self.k = 1 if self.task != "classify" else plan_targets(
            options.targets, options.top_k, 1, explainer.num_classes, explainer.labels).count
        self.pixels = options.method in PIXEL_METHODS
        targets = options.targets
        self.header = {
            "model": model,
            "target": {k: target.get(k) for k in ("tensor", "layer", "layout")},
            "layers": layers if self.layer_files else None,
            "method": options.method,
            "targets": f"top{options.top_k}" if options.top_k else
            (str(targets) if targets is not None else "top1"),
            "contrast": None if options.contrast is None else str(options.contrast),
            # what was explained: a head that outputs probabilities explains them
            "score": "probability" if getattr(explainer, "output_score", "logit")
            == "probability" else options.score,
            "fuse": options.fuse,
        }
        if self.task != "classify":  # recorded (and compared on --resume) for these tasks
            default = {"detect": "detections", "sequence": "characters", "segment": "regions"
                       if (manifest.get("format") or {}).get("name") == "binary" else "classes"}
            self.header.update({"task": self.task, "renormalize": options.renormalize,
                                "targets": default[self.task] if targets is None
                                and not options.top_k else self.header["targets"]})
            if self.task == "detect":
                self.header.update({"conf": options.conf, "iou": options.iou})
            if self.task == "segment":
                self.header["threshold"] = options.threshold
        self.rows: dict[str, dict[str, Any]] = {}
        self.pending = self._plan(list(extra_outputs))
        self._last_save = 0.0

    # --- planning -------------------------------------------------------------------------------
    def _previous(self) -> dict[str, dict[str, Any]]:
        """Rows of the summary a previous run left, when resuming with the same settings."""
        path = self.out / SUMMARY
        if not (self.options.resume and path.is_file()):
            return {}
        try:
            data = json.loads(path.read_text())
            rows = {row["image"]: row for row in data["images"]}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise OutputError(f"{path}: cannot resume from it ({err}); pass --overwrite") from err
        for key, value in self.header.items():
            before = data.get(key, _HEADER_DEFAULTS.get(key))
            if key != "model" and before != value:
                raise OutputError(
                    f"{path} was written with {key} {before!r}, this run has {value!r}; "
                    "resume only with the same settings, or pass --overwrite"
                )
        return rows

    def _done(self, row: dict[str, Any]) -> bool:
        """Whether a previous run's row is finished: ok, with every file this run writes."""
        files = [row.get("overlay")] + ([row.get("heatmaps")] if self.options.save_npy else [])
        if self.layer_files:
            layers = row.get("layers") or {}
            files += [layers.get(layer) for layer in self.layer_files]
        if self.pixels:
            files += list(row.get("pixels") or [None])
            files += [row.get("pixels_npy")] if self.options.save_npy else []
        return row.get("status") == "ok" and all(f and (self.out / f).is_file() for f in files)

    def _plan(self, extra_outputs: list[str]) -> list[Path]:
        previous = self._previous()
        self.rows = dict(previous)
        taken = {Path(image): row["overlay"][: -len(_OVERLAY)] for image, row in previous.items()
                 if row.get("overlay")}
        self.names = output_names(self.images, taken)
        pending = [p for p in self.images if not (str(p) in previous and
                                                  self._done(previous[str(p)]))]
        for path in self.images:
            self.rows.setdefault(str(path), {"image": str(path), "status": "pending"})
        outputs = [self.out / SUMMARY, *(self.out / name for name in extra_outputs)]
        for path in pending:
            outputs += self._files(path).all()
        seen: set[str] = set()
        for output in outputs:  # e.g. image x's layer "cam_a" and image x_cam's layer "a"
            key = str(output).lower()
            if key in seen:
                raise OutputError(f"{output} would be written twice (two images or layers give "
                                  "that name); rename the image or choose other layers")
            seen.add(key)
        inputs = set(self.images)
        for output in outputs:
            if output.resolve() in inputs:
                raise OutputError(f"{output} would overwrite an input image; choose another --out")
        if not (self.options.overwrite or self.options.resume):
            existing = [o for o in outputs if o.exists()]
            if existing:
                more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
                raise OutputError(
                    f"{existing[0]} exists{more}; pass --overwrite to replace it, or --resume to "
                    "continue the run that wrote it"
                )
        log.info("%d images, %d to explain", len(self.images), len(pending))
        return pending

    def _files(self, path: Path) -> _Files:
        """The outputs of one image (see the module docstring for their names)."""
        stem, npy = self.out / self.names[path], self.options.save_npy
        files = _Files(overlay=Path(f"{stem}{_OVERLAY}"),
                       heatmaps=Path(f"{stem}{_HEATMAPS}") if npy else None)
        files.layers = {layer: Path(f"{stem}_cam_{part}.png")
                        for layer, part in self.layer_files.items()}
        if self.pixels:
            files.pixels = [Path(f"{stem}{_PIXELS}.png")] if self.k == 1 else [
                Path(f"{stem}{_PIXELS}_{j}.png") for j in range(self.k)]
            files.pixels_npy = Path(f"{stem}{_PIXELS_NPY}") if npy else None
        return files

    def _row(self, path: Path, files: _Files | None, result: Explained) -> dict[str, Any]:
        """The summary row of an image: explained (its ``files`` written), or failed
        (``files`` None, ``result.error`` set)."""
        def rel(file: Path | None) -> str | None:
            return None if file is None else file.relative_to(self.out).as_posix()

        if files is None:
            err = result.error
            row: dict[str, Any] = {"image": str(path), "status": "error", "overlay": None,
                                   "heatmaps": None}
            row.update({"layers": None} if self.layer_files else {})
            row.update({"pixels": None, "pixels_npy": None} if self.pixels else {})
            return {**row, "error": {"type": type(err).__name__, "message": str(err)}}
        row = {"image": str(path), "status": "ok", "overlay": rel(files.overlay),
               "heatmaps": rel(files.heatmaps)}
        if self.layer_files:
            row["layers"] = {layer: rel(f) for layer, f in files.layers.items()}
        if self.pixels:
            row["pixels"] = [rel(f) for f in files.pixels]
            row["pixels_npy"] = rel(files.pixels_npy)
        return {**row, **result.fields(), "error": None}

    # --- running --------------------------------------------------------------------------------
    def run(
        self,
        progress: Callable[[int], None] | None = None,
        on_row: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Explain the pending images; returns the summary (also in ``out/summary.json``).

        Args:
            progress: called with the number of images finished after each batch.
            on_row: called with each image's summary row as it is finished.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.out)
        size = self.options.batch_size
        for start in range(0, len(self.pending), size):
            chunk = self.pending[start : start + size]
            for row in self._run_chunk(chunk):
                self.rows[row["image"]] = row
                if on_row:
                    on_row(row)
            self.save_summary(force=False)
            if progress:
                progress(len(chunk))
        return self.save_summary(force=True)

    def _run_chunk(self, chunk: list[Path]) -> list[dict[str, Any]]:
        """Explain one chunk of images and write their outputs; returns their summary rows."""
        rows = []
        for path, result in zip(chunk, explain_batch(self.explainer, chunk, self.options)):
            if result.error is None:
                try:
                    files = self._files(path)
                    write_outputs(result, files.overlay, files.heatmaps, self.options,
                                  layers=files.layers, pixels=files.pixels,
                                  pixels_npy=files.pixels_npy)
                    rows.append(self._row(path, files, result))
                    continue
                except OnnxcamError as err:
                    result = Explained(error=err)
            rows.append(self._row(path, None, result))
        return rows

    # --- the summary ----------------------------------------------------------------------------
    @property
    def summary(self) -> dict[str, Any]:
        """The summary as it stands: settings, counts and one row per image."""
        from . import __version__

        rows = list(self.rows.values())
        counts = {status: sum(row["status"] == status for row in rows)
                  for status in ("ok", "error", "pending")}
        return {"onnxcam": __version__, **self.header, "counts": counts, "images": rows}

    def save_summary(self, force: bool = True) -> dict[str, Any]:
        """Write ``summary.json`` (atomically); without ``force`` at most once a second."""
        summary = self.summary
        if force or time.monotonic() - self._last_save >= 1.0:
            save_json(summary, self.out / SUMMARY)
            self._last_save = time.monotonic()
        return summary

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Rows of the images that failed."""
        return [row for row in self.rows.values() if row["status"] == "error"]
