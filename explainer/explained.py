"""One batch of images: decode, preprocess and explain them (:func:`explain_batch`, one
:class:`Explained` per image), and write an explained image's figures and arrays
(:func:`write_outputs`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .errors import ExplainerError, InputError, OnnxcamError
from .image import ImageLike, prepare_with_geometry, preprocess, values_only
from .outputs import save_npy, save_png
from .run_options import RunOptions
from .tasks.registry import TASKS
from .visualize import figure, item_boxes, pixel_image

__all__ = ["Explained", "explain_batch", "write_outputs"]

if TYPE_CHECKING:
    from .runtime import Explanation


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
        task = TASKS[e.task]
        row[str(task.items)] = [item.to_dict() for item in e.items[i]]
        if e.sequence is not None:
            row["text"] = e.sequence[i].text
            row["text_score"] = e.sequence[i].score
        row["note"] = None if k else task.nothing
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
    boxes = None if e.items is None else item_boxes(TASKS[e.task].drawer, e.items[i])

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
