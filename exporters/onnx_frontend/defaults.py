"""Defaults the ONNX front end records when the user gives none: the preprocessing of a
classifier, detector, segmenter or text recognizer, and a text recognizer's vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from explainer.errors import LabelError
from explainer.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from explainer.sequence import sequence_labels

from ..graph import Graph
from .candidates import image_input

__all__ = ["guess_preprocessing", "task_labels", "task_preprocessing"]

log = logging.getLogger(__name__)


def guess_preprocessing(g: Graph, layout: str) -> Preprocessing | None:
    """A classifier's default preprocessing of 3-channel inputs: resize/crop to the input
    size, ImageNet mean/std for float inputs, raw 0..255 pixels for uint8 ones."""
    source = image_input(g)
    shape = g.shape(source) or ()
    channels = shape[layout.index("C")]
    h, w = shape[layout.index("H")], shape[layout.index("W")]
    if channels != 3:
        log.info("input has %s channels: no default preprocessing recorded", channels)
        return None
    if isinstance(h, int) and isinstance(w, int):
        crop: tuple[int, int] | int = (h, w)
        resize: int | tuple[int, int] = int(round(min(h, w) * 256 / 224))
    else:
        crop, resize = 224, 256
    if g.elem_type(source) == TensorProto.UINT8:
        pre = Preprocessing(resize=resize, crop=crop, scale=1.0, mean=(0.0, 0.0, 0.0),
                            std=(1.0, 1.0, 1.0), layout=layout, dtype="uint8")
    else:
        pre = Preprocessing(resize=resize, crop=crop, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                            layout=layout)
    log.info("no preprocessing given; assuming %s", pre)
    return pre


def task_preprocessing(g: Graph, task: str, layout: str) -> Preprocessing | None:
    """The default preprocessing of 3-channel inputs.

    Detectors and segmenters: letterboxed (the aspect ratio kept) to the model size, or for
    any-size models the longer side to 640 padded to a multiple of 32; detectors as Ultralytics
    (grey 114 padding, pixels / 255), segmenters with ImageNet mean/std. Text recognizers: the
    line scaled to the model's height (48, PP-OCR's, when it takes any height), or letterboxed
    at the top left into a fixed size, pixels scaled to [-1, 1] (CRNN and PP-OCR)."""
    shape = g.shape(image_input(g)) or ()
    if shape[layout.index("C")] != 3:
        return None
    h, w = shape[layout.index("H")], shape[layout.index("W")]
    fixed = isinstance(h, int) and isinstance(w, int)
    dtype = "uint8" if g.elem_type(image_input(g)) == TensorProto.UINT8 else "float32"
    if task == "sequence":
        half = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
        if fixed:
            pre = Preprocessing(resize=None, crop=None, letterbox=(h, w), layout=layout,
                                dtype=dtype, letterbox_align="topleft", pad_value=128, **half)
        else:
            pre = Preprocessing(resize=h if isinstance(h, int) else 48, crop=None,
                                layout=layout, dtype=dtype, **half)
        log.info("no preprocessing given; assuming %s", pre)
        return pre
    size: int | tuple[int, int] = (h, w) if fixed else 640
    normalize = {} if task == "detect" else {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    pre = Preprocessing(**{"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), **normalize},
                        resize=None, crop=None, letterbox=size, layout=layout, dtype=dtype)
    log.info("no preprocessing given; assuming %s", pre)
    return pre


def task_labels(loaded: onnx.ModelProto, task: str, fmt: dict[str, Any],
                 labels: str | Sequence[str] | None) -> str | list[str] | None:
    """A text recognizer's vocabulary (given, else the ``character`` metadata PaddleOCR
    writes; see :func:`explainer.sequence.sequence_labels`); other tasks' labels as given."""
    if task != "sequence":
        return labels if labels is None or isinstance(labels, str) else list(labels)
    if labels is None:
        meta = {p.key: p.value for p in loaded.metadata_props}
        if "character" in meta:
            labels = meta["character"].split("\n")
            log.info("vocabulary: %d characters from the model's 'character' metadata",
                     len(labels))
    if isinstance(labels, str):
        if not Path(labels).is_file():
            raise LabelError(f"labels {labels!r}: a text recognizer's vocabulary is a file "
                             "with one character per line, or a list")
        labels = [line for line in Path(labels).read_text("utf-8").splitlines() if line]
    return sequence_labels(labels, int(fmt["classes"]), int(fmt.get("blank", 0)))
