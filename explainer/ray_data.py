"""Explain a Ray Dataset of images: ``map_batches`` with one :class:`~explainer.Explainer` per
actor. Needs the ``ray`` extra (``pip install 'onnxcam[ray]'``); ``import explainer`` never
imports Ray, and this module imports it only inside :func:`explain_dataset`.

Example (a table of paths, or ``ray.data.read_images(folder, include_paths=True)``)::

    import ray
    from explainer.ray_data import explain_dataset

    paths = ray.data.from_items([{"path": p} for p in ["a.jpg", "b.jpg"]])
    table = explain_dataset(paths, "model.onnxcam", "out/", top_k=3, concurrency=2)
    table.write_parquet("out/table")        # or .to_pandas(), .take_all(), ...

Each actor loads the bundle once (:class:`ExplainBatch` is a class-based UDF) and explains
the rows of each batch together. The result has one row per input: ``path``, ``status``
(``"ok"`` or ``"error"``), ``error`` (the message, ``""`` when ok), ``class_ids``,
``labels``, ``probabilities`` and ``scores`` (each ``K`` long: ``-1``, ``""`` and NaN for a
failed image), and ``overlay`` / ``heatmaps``, the files written. A failing image becomes an
``"error"`` row; it does not fail the job.

A detector, segmenter or text recognizer finds a different number of targets in each image:
its rows hold ``count`` (the number of detections, regions or characters explained),
``items`` (them as a JSON list: box, label, score, ...), ``text`` (a recognizer's transcript,
else ``""``) and the same ``path``, ``status``, ``error``, ``overlay`` and ``heatmaps``.

On a cluster the same code runs unchanged after ``ray.init(address="auto")``: the bundle path
and ``out`` must then be visible to every node (a shared file system), and output names are
made from each image's full path (``<stem>_<hash of the path>_cam.png``), so workers never
need to agree on names.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .batch import RunOptions, explain_batch, write_outputs
from .bundle import Bundle
from .errors import UsageError
from .explained import Explained
from .targets import plan_targets
from .tasks.registry import TASKS

__all__ = ["ExplainBatch", "explain_dataset", "output_stem"]


def output_stem(path: str) -> str:
    """Output name of an image: its stem plus a short hash of its full path (unique without
    coordination between workers)."""
    digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:10]
    return f"{Path(path).stem}_{digest}"


def _columns(batch: dict[str, Any], image_column: str, path_column: str) -> tuple[list, list]:
    """(sources, paths) of a batch: image arrays when the batch has them, else the paths."""
    if path_column not in batch:
        raise UsageError(f"the dataset needs a {path_column!r} column (use include_paths=True "
                         f"with ray.data.read_images); it has {sorted(batch)}")
    paths = [str(p) for p in batch[path_column]]
    if image_column in batch:
        return list(batch[image_column]), paths
    return paths, paths


class ExplainBatch:
    """A Ray Data class-based UDF: explains each batch of images with one Explainer per actor.

    Args:
        bundle: a bundle directory (loaded once per actor) or a :class:`Bundle`.
        out: the folder overlays (and heatmaps) are written to.
        targets, top_k, method, colormap, alpha, save_npy, max_pixels: as in
            :class:`explainer.batch.RunOptions` (``method`` None: the bundle's default).
        providers: ONNX Runtime providers, as for :class:`~explainer.Explainer`.
        threads: intra-op threads per actor (match the actor's ``num_cpus``).
        image_column: the column of decoded images (``ray.data.read_images`` names it
            ``"image"``); when absent, images are read from ``path_column``.
        path_column: the column of image paths.
        task_options: a detector's ``conf``, ``iou``, a segmenter's ``threshold``,
            ``renormalize`` (as in :class:`~explainer.batch.RunOptions`).
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str] | Bundle,
        out: str | os.PathLike[str],
        *,
        targets: Any = None,
        top_k: int | None = None,
        method: str | None = None,
        colormap: str = "jet",
        alpha: float = 0.5,
        save_npy: bool = True,
        max_pixels: int | None = None,
        providers: Any = None,
        threads: int | None = 1,
        image_column: str = "image",
        path_column: str = "path",
        **task_options: Any,
    ) -> None:
        from .runtime import Explainer

        self.explainer = explainer = Explainer(bundle, providers=providers, threads=threads)
        self.task = explainer.task
        unknown = set(task_options) - {"conf", "iou", "threshold", "renormalize"}
        if unknown or (task_options and self.task == "classify"):
            raise UsageError(f"unknown option(s) {sorted(unknown or task_options)} for a "
                             f"{self.task} bundle")
        self.options = RunOptions(targets=targets, top_k=top_k,
                                  method=method or explainer.default_method, colormap=colormap,
                                  alpha=alpha, save_npy=save_npy, max_pixels=max_pixels,
                                  **task_options)
        self.options.check(explainer.num_classes, explainer.labels, self.task,
                           explainer.bundle.manifest.get("format"))
        self.k = 0  # a task's images have their own number of targets
        if self.task == "classify":  # a table row holds K classes, fixed per dataset
            plan = plan_targets(targets, top_k, 1, explainer.num_classes, explainer.labels)
            self.k = plan.class_ids.shape[1] if plan.class_ids is not None else sum(
                1 if kind == "id" else k for kind, k in plan.terms)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.image_column, self.path_column = image_column, path_column

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Explain one batch (Ray's ``"numpy"`` batch format: a dict of columns)."""
        sources, paths = _columns(batch, self.image_column, self.path_column)
        n, k = len(paths), self.k
        table: dict[str, np.ndarray] = {
            "path": np.array(paths, dtype=object),
            "status": np.full(n, "ok", dtype=object),
            "error": np.full(n, "", dtype=object),
            **({"class_ids": np.full((n, k), -1, np.int64),
                "labels": np.full((n, k), "", dtype=object),
                "probabilities": np.full((n, k), np.nan, np.float32),
                "scores": np.full((n, k), np.nan, np.float32)} if self.task == "classify" else
               {"count": np.zeros(n, np.int64), "items": np.full(n, "[]", dtype=object),
                "text": np.full(n, "", dtype=object)}),
            "overlay": np.full(n, "", dtype=object),
            "heatmaps": np.full(n, "", dtype=object),
        }
        results = explain_batch(self.explainer, sources, self.options)
        for i, (path, result) in enumerate(zip(paths, results)):
            if result.error is None:
                stem = self.out / output_stem(path)
                overlay = stem.with_name(stem.name + "_cam.png")
                heatmaps = stem.with_name(stem.name + "_cam.npy") if self.options.save_npy else None
                try:
                    write_outputs(result, overlay, heatmaps, self.options)
                except UsageError as err:
                    result.error = err
            if result.error is not None:
                table["status"][i], table["error"][i] = "error", str(result.error)
                continue
            self._fill(table, i, result)
            table["overlay"][i] = str(overlay)
            table["heatmaps"][i] = str(heatmaps) if heatmaps is not None else ""
        return table

    def _fill(self, table: dict[str, np.ndarray], i: int, result: Explained) -> None:
        """Row ``i``'s targets: K classes, or a task's items as JSON."""
        fields = result.fields()
        if self.task != "classify":
            items = fields.get(str(TASKS[self.task].items)) or []
            table["count"][i] = len(items)
            table["items"][i] = json.dumps(items)
            table["text"][i] = fields.get("text") or ""
            return
        table["class_ids"][i] = fields["class_ids"]
        table["labels"][i] = fields["labels"] or [str(c) for c in fields["class_ids"]]
        table["probabilities"][i] = fields["probabilities"]
        table["scores"][i] = fields["scores"]


def explain_dataset(
    dataset: Any,
    bundle: str | os.PathLike[str] | Bundle,
    out: str | os.PathLike[str],
    *,
    concurrency: int = 1,
    batch_size: int = 8,
    num_cpus: float = 1,
    **options: Any,
) -> Any:
    """Explain every image of a Ray Dataset; returns the (lazy) result table as a Dataset.

    Args:
        dataset: rows with a ``path`` column (a table of paths) and optionally decoded
            ``image`` arrays (``ray.data.read_images(..., include_paths=True)``).
        bundle: the bundle directory (every actor loads it once).
        out: the output folder (shared by all nodes on a cluster).
        concurrency: the number of actors (each holds one Explainer).
        batch_size: rows per batch handed to an actor.
        num_cpus: CPUs reserved per actor; also its ONNX Runtime threads unless ``threads``
            is given.
        **options: more arguments of :class:`ExplainBatch` (``top_k``, ``targets``,
            ``method``, ``save_npy``, ``providers``...). For GPUs call
            ``dataset.map_batches(ExplainBatch, ..., num_gpus=1)`` with ``providers="cuda"``.
    """
    import ray.data

    options.setdefault("threads", max(1, int(num_cpus)))
    return dataset.map_batches(
        ExplainBatch,
        fn_constructor_args=(bundle, out),
        fn_constructor_kwargs=options,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
    )
