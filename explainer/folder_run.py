"""A folder run: explain image files in batches into an output folder, with its
``summary.json`` (see :mod:`explainer.batch` for the files it writes)."""

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
from typing import Any

from .errors import InputError, OnnxcamError, OutputError
from .explained import Explained, explain_batch, write_outputs
from .inputs import output_names, unique_name
from .outputs import remove_stale_temps, save_json
from .pixels import PIXEL_METHODS, require_input_gradient
from .run_options import RunOptions
from .targets import plan_targets
from .tasks.registry import default_targets

__all__ = ["SUMMARY", "FolderRun", "layer_file_names"]

log = logging.getLogger(__name__)

#: the summary file a run writes in its output folder
SUMMARY = "summary.json"
_OVERLAY, _HEATMAPS = "_cam.png", "_cam.npy"
_PIXELS, _PIXELS_NPY = "_pixels", "_pixels.npy"
#: summary settings of older runs that did not record them, as they ran
_HEADER_DEFAULTS = {"score": "logit", "fuse": "mean"}


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
    """Explain image files into an output folder (see :mod:`explainer.batch`).

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
        spec = explainer.spec
        options.check(explainer.num_classes, explainer.labels, self.task, spec.format)
        if options.method in PIXEL_METHODS:  # before any image, not once per image
            require_input_gradient(explainer.bundle, options.method)
        self.images = [Path(p).resolve() for p in images]
        layers = [layer.layer for layer in spec.layers] if len(spec.layers) > 1 else []
        #: a sweep's layer name -> its file-name part (empty for a one-layer bundle)
        self.layer_files = layer_file_names(layers) if len(layers) > 1 else {}
        #: targets per image (a pixel map file each)
        self.k = 1 if self.task != "classify" else plan_targets(
            options.targets, options.top_k, 1, explainer.num_classes, explainer.labels).count
        self.pixels = options.method in PIXEL_METHODS
        targets = options.targets
        self.header = {
            "model": model,
            "target": {"tensor": spec.target.tensor, "layer": spec.target.layer,
                       "layout": spec.target.layout},
            "layers": layers if self.layer_files else None,
            "method": options.method,
            "targets": f"top{options.top_k}" if options.top_k else
            (str(targets) if targets is not None else "top1"),
            "contrast": None if options.contrast is None else str(options.contrast),
            # what was explained: a head that outputs probabilities explains them
            "score": "probability" if spec.head.score == "probability" else options.score,
            "fuse": options.fuse,
        }
        if self.task != "classify":  # recorded (and compared on --resume) for these tasks
            self.header.update({"task": self.task, "renormalize": options.renormalize,
                                "targets": default_targets(self.task, spec.format)
                                if targets is None
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
        """The outputs of one image (see :mod:`explainer.batch` for their names)."""
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
