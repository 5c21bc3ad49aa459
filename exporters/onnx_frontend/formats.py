"""A deployed model's output format, told from its outputs' (probed) shapes, types and values:
the detection formats (YOLO layouts, end-to-end, boxes/scores/labels, PicoDet), segmentation
masks and CTC text recognition. The rules are listed in :mod:`exporters.onnx_frontend.tasks`;
the formats' names and layouts are those of :data:`explainer.tasks.FORMATS`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from explainer.tasks.registry import FORMATS

from ..errors import OnnxExportError
from ..graph import FLOAT_TYPES

__all__ = ["class_count", "classify_shapes", "dense_format", "detect_format", "given_format",
           "listing"]

_STRIDES = ((8, 16, 32, 64), (8, 16, 32))


def listing(shapes: dict[str, Any], types: dict[str, int]) -> str:
    """Each output with its shape and dtype, for messages."""
    def dtype(name: str) -> str:
        known = types.get(name)
        return helper.tensor_dtype_to_np_dtype(known).name if known else "?"

    return "; ".join(f"{name!r} {shape} {dtype(name)}" for name, shape in shapes.items())


def _anchor_counts(hw: tuple[int, int]) -> set[int]:
    counts = set()
    for strides in _STRIDES:
        cells = sum(math.ceil(hw[0] / s) * math.ceil(hw[1] / s) for s in strides)
        counts.update({cells, 3 * cells})
    return counts


def _bsl(shapes: dict[str, list[Any]], types: dict[str, int]) -> dict[str, str] | None:
    """boxes/scores/labels outputs by name, else by shape and type."""
    by_name = {n.lower(): n for n in shapes}
    if all(k in by_name for k in ("boxes", "scores", "labels")):
        return {k: by_name[k] for k in ("boxes", "scores", "labels")}
    roles: dict[str, str] = {}
    for name, shape in shapes.items():
        if shape is None:
            continue
        squeezed = [d for d in shape]
        if len(squeezed) in (2, 3) and squeezed[-1] == 4 and types.get(name) in FLOAT_TYPES:
            roles.setdefault("boxes", name)
        elif len(squeezed) in (1, 2) and types.get(name) in FLOAT_TYPES:
            roles.setdefault("scores", name)
        elif len(squeezed) in (1, 2) and types.get(name) in (TensorProto.INT64, TensorProto.INT32):
            roles.setdefault("labels", name)
    return roles if len(roles) == 3 and len(shapes) == 3 else None


def classify_shapes(shapes: dict[str, list[Any]], types: dict[str, int]) -> bool:
    """Whether a float output looks like a classifier's scores (one axis > 1 past the batch)."""
    floats = [s for n, s in shapes.items() if types.get(n) in FLOAT_TYPES]
    return any(s is not None and len(s) >= 2 and sum(1 for d in s[1:] if d != 1) <= 1
               for s in floats)


def detect_format(shapes: dict[str, list[Any]], types: dict[str, int],
                   hw: tuple[int, int] | None,
                   values: dict[str, np.ndarray] | None = None) -> dict[str, Any] | None:
    roles = _bsl(shapes, types)
    if roles:
        return {"name": "boxes_scores_labels", "outputs": roles}
    anchors = _anchor_counts(hw) if hw else set()
    for name, shape in shapes.items():
        if types.get(name) not in FLOAT_TYPES or shape is None or len(shape) != 3:
            continue
        _, d1, d2 = shape
        if not (isinstance(d1, int) and isinstance(d2, int)):
            continue
        if d2 in anchors and 5 <= d1 < d2:
            return {"name": "yolov8", "outputs": {"predictions": name}, "classes": d1 - 4}
        if d1 in anchors and 6 <= d2 < d1:
            name5 = "yolov5"
            if values is not None and hw and _raw_boxes(values[name], hw):
                name5 = "yolox"
            return {"name": name5, "outputs": {"predictions": name}, "classes": d2 - 5}
    for name, shape in shapes.items():
        if (types.get(name) in FLOAT_TYPES and shape is not None and len(shape) == 3
                and shape[2] == 6):
            return {"name": "end2end", "outputs": {"predictions": name}}
    if hw and values is not None:
        return _picodet(shapes, types, hw, values)
    return None


def _picodet(shapes: dict[str, list[Any]], types: dict[str, int], hw: tuple[int, int],
             values: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Per-stride score and box-distribution outputs (see
    :mod:`exporters.onnx_frontend.tasks`)."""
    dense = {n: s for n, s in shapes.items()
             if types.get(n) in FLOAT_TYPES and s is not None and len(s) == 3}
    for strides in _STRIDES:
        cells = [math.ceil(hw[0] / s) * math.ceil(hw[1] / s) for s in strides]
        scores, boxes = [], []
        for count in cells:
            level = [n for n, s in dense.items() if s[1] == count]
            probs = [n for n in level if 0.0 <= values[n].min() and values[n].max() <= 1.0]
            dists = [n for n in level if n not in probs and dense[n][2] % 4 == 0]
            if len(probs) != 1 or len(dists) != 1:
                break
            scores.append(probs[0])
            boxes.append(dists[0])
        else:
            bins = {dense[n][2] // 4 for n in boxes}
            classes = {dense[n][2] for n in scores}
            if len(bins) == 1 and len(classes) == 1:
                return {"name": "picodet", "outputs": {"scores": scores, "boxes": boxes},
                        "strides": list(strides), "reg_max": bins.pop() - 1,
                        "classes": classes.pop()}
    return None


def _raw_boxes(value: np.ndarray, hw: tuple[int, int]) -> bool:
    """Whether ``[1, A, 5+C]`` box centres are undecoded offsets: decoded centres spread over
    the image (up to its width), raw grid offsets stay within a few units of zero."""
    centres = np.abs(value.reshape(-1, value.shape[-1])[:, :2])
    return bool(np.isfinite(centres).all() and centres.max() < 0.1 * min(hw))


def dense_format(task: str, shapes: dict[str, list[Any]], types: dict[str, int],
                  values: dict[str, np.ndarray], name: str | None, output: str | None,
                  hw: tuple[int, int], given: bool = True) -> dict[str, Any] | None:
    """A segmenter's or text recognizer's format from the probed outputs at input size ``hw``
    (None if no output fits; ``given``: the user named the task). Integer outputs (an argmax
    mask) are refused with a message that says why."""
    floats = [n for n in shapes if types.get(n) in FLOAT_TYPES and (output in (None, n))]
    if task == "segment":
        for n in floats:
            shape = shapes[n]
            # a mask covers the image at a quarter of its size or more (raw detection heads'
            # per-stride maps are an eighth or less)
            if len(shape) == 4 and shape[2] > 1 and shape[3] > 1 and (
                    given or (4 * shape[2] >= hw[0] and 4 * shape[3] >= hw[1])):
                fmt = "binary" if shape[1] == 1 else "masks"
                if name not in (None, fmt):
                    need = "[N, 1, h, w]" if name == "binary" else "C > 1 classes"
                    raise OnnxExportError(f"format {name!r} contradicts output {n!r} of shape "
                                          f"{shape}: it needs {need}")
                return {"name": fmt, "outputs": {"masks": n}, "classes": int(shape[1]),
                        **_value_kind(values[n], 0, fmt == "masks")}
        ints = [f"{n!r} {shapes[n]}" for n in shapes if types.get(n) not in FLOAT_TYPES
                and len(shapes[n]) in (3, 4) and min(shapes[n][-2:]) > 1]
        if ints and (output is None or output in shapes):
            raise OnnxExportError(
                f"the segmentation output {', '.join(ints)} holds integer class ids (an argmax "
                "mask): it has no gradient. Export the model without its final ArgMax, so it "
                "outputs the class scores [N, C, h, w]")
        return None
    for n in floats:
        shape = shapes[n]
        if len(shape) != 3 or shape[2] < 2:
            continue
        layout = "TNV" if shape[1] == 1 and shape[0] > 1 else "NTV"
        return {"name": "ctc", "outputs": {"logits": n}, "layout": layout, "blank": 0,
                "classes": int(shape[2]), **_value_kind(values[n], 2, True)}
    return None


def _value_kind(value: np.ndarray, axis: int, exclusive: bool) -> dict[str, Any]:
    """Whether a probed output holds probabilities or scores, before the export looks for the
    activation in the graph: a softmax shows in the values (in [0, 1], summing to 1 over
    ``axis``, C > 1); anything else counts as scores (logits) unless the graph ends in a
    Sigmoid (values in [0, 1] prove nothing: an untrained model's zero-image logits are)."""
    v = value.astype(np.float64)
    if (exclusive and v.shape[axis] > 1 and v.size and np.isfinite(v).all()
            and v.min() >= 0.0 and v.max() <= 1.0
            and np.allclose(v.sum(axis=axis), 1.0, atol=1e-3)):
        return {"explained": "probabilities", "activation": "softmax"}
    return {"explained": "logits", "activation": "softmax" if exclusive else "sigmoid"}


def given_format(name: str, shapes: dict[str, list[Any]], types: dict[str, int],
                  hw: tuple[int, int]) -> dict[str, Any]:
    """A format the user named: its outputs by shape (rank 3 float for the dense formats)."""
    if name == "boxes_scores_labels":
        roles = _bsl(shapes, types)
        if roles is None:
            raise OnnxExportError(
                f"format boxes_scores_labels needs a [K, 4] float, a [K] float and a [K] int "
                f"output; the model has {listing(shapes, types)}")
        return {"name": name, "outputs": roles}
    if name == "picodet":
        raise OnnxExportError(
            "format picodet needs per-stride [N, A_s, C] scores in [0, 1] and [N, A_s, "
            f"4 * (reg_max + 1)] box outputs; the model has {listing(shapes, types)}")
    dense = [n for n, s in shapes.items() if types.get(n) in FLOAT_TYPES and s and len(s) == 3]
    if not dense:
        raise OnnxExportError(f"format {name!r} needs a rank-3 float output; the model has "
                              f"{listing(shapes, types)}")
    out = dense[0]
    d1, d2 = shapes[out][1:]
    fits = {"yolov8": 5 <= d1 < d2, "yolov5": 6 <= d2 < d1, "yolox": 6 <= d2 < d1,
            "end2end": d2 >= 6}[name]
    if not fits:
        raise OnnxExportError(
            f"format {name!r} contradicts output {out!r} of shape {shapes[out]} (probed at "
            f"{hw[0]}x{hw[1]}): {FORMATS[name].layout} expected")
    return {"name": name, "outputs": {"predictions": out}}


def class_count(fmt: dict[str, Any], shapes: dict[str, list[Any]]) -> int | None:
    """The class count a YOLO layout implies (None for the other formats)."""
    name = fmt["name"]
    if name == "yolov8":
        return int(shapes[fmt["outputs"]["predictions"]][1]) - 4
    if name in ("yolov5", "yolox"):
        return int(shapes[fmt["outputs"]["predictions"]][2]) - 5
    return None  # from the labels, or the probe's largest class id
