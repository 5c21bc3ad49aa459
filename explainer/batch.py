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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .errors import InputError, OnnxcamError, OutputError, UsageError
from .image import ImageLike, prepare_image, preprocess
from .inputs import collect_images, output_names
from .outputs import remove_stale_temps, save_json, save_npy, save_png
from .targets import plan_targets
from .visualize import COLORMAPS, figure

__all__ = [
    "SUMMARY",
    "Explained",
    "FolderRun",
    "RunOptions",
    "collect_images",
    "explain_batch",
    "write_outputs",
]

if TYPE_CHECKING:
    from .runtime import Explanation

log = logging.getLogger(__name__)

#: the summary file a run writes in its output folder
SUMMARY = "summary.json"
_OVERLAY, _HEATMAPS = "_cam.png", "_cam.npy"


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
    """

    targets: Any = None
    top_k: int | None = None
    method: str = "gradcam"
    batch_size: int = 8
    colormap: str = "jet"
    alpha: float = 0.5
    save_npy: bool = False
    max_pixels: int | None = None
    overwrite: bool = False
    resume: bool = False

    def check(self, num_classes: int, labels: list[str] | None = None) -> None:
        """Raise a :class:`UsageError` for options no image could satisfy."""
        from .methods import METHODS
        from .pixels import PIXEL_METHODS

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
        plan_targets(self.targets, self.top_k, 1, num_classes, labels)  # before any image


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
        """Classes, labels, scores and probabilities, as JSON-ready lists."""
        e, i = self.explanation, self.index
        return {"class_ids": e.class_ids[i].tolist(), "labels": e.labels[i] if e.labels else None,
                "scores": e.scores[i].tolist(), "probabilities": e.probabilities[i].tolist()}


def _explain_group(explainer: Any, group: list[tuple[int, Image.Image, np.ndarray]],
                   options: RunOptions, results: list[Explained]) -> None:
    """Explain same-shape images in one batch; after an error, one by one to find the culprit."""
    try:
        explanation = explainer.explain(
            np.concatenate([x for _, _, x in group]), targets=options.targets,
            top_k=options.top_k, method=options.method,
        )
    except OnnxcamError as err:
        if len(group) == 1:
            results[group[0][0]] = Explained(error=err)
            return
        for item in group:
            _explain_group(explainer, [item], options, results)
        return
    for row, (k, shown, _) in enumerate(group):
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
    groups: dict[tuple[int, ...], list[tuple[int, Image.Image, np.ndarray]]] = {}
    normalize = dataclasses.replace(pre, resize=None, crop=None)  # `shown` is resized already
    for k, source in enumerate(sources):
        try:
            shown = prepare_image(source, pre, max_pixels=options.max_pixels)
            x = preprocess([shown], normalize)
        except OnnxcamError as err:
            results[k] = Explained(error=err)
            continue
        groups.setdefault(x.shape, []).append((k, shown, x))
    for group in groups.values():
        _explain_group(explainer, group, options, results)
    return results


def write_outputs(result: Explained, overlay: Path, heatmaps: Path | None,
                  options: RunOptions) -> None:
    """Write an image's overlay figure (input + one overlay per target, titled) and, when
    ``heatmaps`` is given, its heatmaps [K, H, W] float32 as ``.npy``; both atomically."""
    e, i = result.explanation, result.index
    save_png(figure(result.shown, list(e.heatmaps[i]), e.titles(i), colormap=options.colormap,
                    alpha=options.alpha), overlay)
    if heatmaps is not None:
        save_npy(np.ascontiguousarray(e.heatmaps[i], dtype=np.float32), heatmaps)


def _error_row(path: Path, err: OnnxcamError) -> dict[str, Any]:
    return {"image": str(path), "status": "error", "overlay": None, "heatmaps": None,
            "error": {"type": type(err).__name__, "message": str(err)}}


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
        self.options.check(explainer.num_classes, explainer.labels)
        self.images = [Path(p).resolve() for p in images]
        target = explainer.bundle.manifest["target"]
        targets = self.options.targets
        self.header = {
            "model": model,
            "target": {k: target.get(k) for k in ("tensor", "layer", "layout")},
            "method": self.options.method,
            "targets": f"top{self.options.top_k}" if self.options.top_k else
            (str(targets) if targets is not None else "top1"),
        }
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
            if key != "model" and data.get(key) != value:
                raise OutputError(
                    f"{path} was written with {key} {data.get(key)!r}, this run has {value!r}; "
                    "resume only with the same settings, or pass --overwrite"
                )
        return rows

    def _done(self, row: dict[str, Any]) -> bool:
        files = [row.get("overlay")] + ([row.get("heatmaps")] if self.options.save_npy else [])
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
            outputs += self._files(path)
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

    def _files(self, path: Path) -> list[Path]:
        name = self.names[path]
        files = [self.out / f"{name}{_OVERLAY}"]
        return files + [self.out / f"{name}{_HEATMAPS}"] if self.options.save_npy else files

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
                    write_outputs(result, files[0], files[1] if self.options.save_npy else None,
                                  self.options)
                    rel = [f.relative_to(self.out).as_posix() for f in files]
                    rows.append({"image": str(path), "status": "ok", "overlay": rel[0],
                                 "heatmaps": rel[1] if self.options.save_npy else None,
                                 **result.fields(), "error": None})
                    continue
                except OnnxcamError as err:
                    result = Explained(error=err)
            rows.append(_error_row(path, result.error))
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
