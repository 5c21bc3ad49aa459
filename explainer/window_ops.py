"""What one node does to a detection's window, read from its attributes and constants (for
:mod:`explainer.window_reach`): how far a stride-1 convolution spreads nonzero positions, where
a transposed convolution's result lands, the zeros a ``Pad`` adds before a map, and which
constants are the same at every position."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

__all__ = ["broadcast", "conv_growth", "landed", "pad_begin", "transposed"]


def broadcast(value: np.ndarray | None) -> bool:
    """Whether a constant is the same at every position of a map [N, C, H, W] it is
    broadcast against (its last two dims are 1, or it has fewer)."""
    return value is not None and value.ndim <= 4 and all(d == 1 for d in value.shape[-2:])


def conv_growth(attrs: dict[str, Any]) -> list[int] | None:
    """How far a 2-D stride-1 ``Conv`` that keeps its input's size spreads nonzero positions,
    per side and axis (its larger pad); None for any other Conv."""
    kernel = list(attrs.get("kernel_shape", []))
    if len(kernel) != 2 or any(s != 1 for s in attrs.get("strides", [1, 1])):
        return None
    dilations = list(attrs.get("dilations", [1, 1]))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return [d * (k - 1) - d * (k - 1) // 2 for d, k in zip(dilations, kernel, strict=True)]
    if auto not in ("NOTSET", ""):
        return None  # VALID shrinks the map
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if any(pads[i] + pads[i + 2] != d * (k - 1)
           for i, (d, k) in enumerate(zip(dilations, kernel, strict=True))):
        return None
    return [max(pads[i], pads[i + 2]) for i in range(2)]


def transposed(attrs: dict[str, Any], scale: int | None
                ) -> tuple[int, int, list[int], list[int] | None] | None:
    """A 2-D ``ConvTranspose`` with equal strides s (the backward of a strided convolution):
    (its input's scale, s, the kernel's extent (k-1)*d per axis, its begin pads where its
    output is s times its input's size, or None where it has no pads and a ``Pad`` and a
    ``Slice`` after it cut it to size); None for any other."""
    kernel = list(attrs.get("kernel_shape", []))
    strides = list(attrs.get("strides", [1, 1]))
    auto = attrs.get("auto_pad", b"NOTSET")
    if (scale is None or len(kernel) != 2 or len(set(strides)) != 1 or "output_shape" in attrs
            or (auto.decode() if isinstance(auto, bytes) else auto) != "NOTSET"):
        return None
    stride = strides[0]
    extent = [d * (k - 1) for d, k in zip(attrs.get("dilations", [1, 1]), kernel, strict=True)]
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    extra = list(attrs.get("output_padding", [0, 0]))
    if all(e + 1 - pads[i] - pads[i + 2] + extra[i] == stride for i, e in enumerate(extent)):
        return scale, stride, extent, pads[:2]
    if any(pads) or any(extra):
        return None
    return scale, stride, extent, None


def landed(stride: int, bounds: list[tuple[int, int]], extent: list[int], offset: list[int]
            ) -> list[tuple[int, int]]:
    """The reach of a transposed convolution's result, its element i at ``i + offset`` of
    the full transposed convolution (no pads) of a tensor of reach ``bounds``: an input
    position o gives s*o .. s*o + extent."""
    return [(max(stride * before + off, 0), max(stride * after - stride + 1 + e - off, 0))
            for (before, after), e, off in zip(bounds, extent, offset, strict=True)]


def pad_begin(node: onnx.NodeProto, names: list[str], consts: dict[str, np.ndarray]
               ) -> list[int] | None:
    """The zeros a constant ``Pad`` of a 4-D tensor adds before each spatial axis (none on
    the batch and channel axes); None for any other Pad."""
    mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"),
                b"constant")
    if mode not in (b"constant", "constant") or len(names) < 2 or names[1] not in consts:
        return None
    if len(names) > 2 and (names[2] not in consts or np.any(consts[names[2]])) or len(names) > 3:
        return None
    pads = [int(p) for p in consts[names[1]]]
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None
    return pads[2:4]
