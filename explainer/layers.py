"""Maps per layer: one bundle may explain several layers at once (a layer sweep).

A sweep bundle (``export_torch(model, ["layer1", "layer2", "layer3", "layer4"])``) is cut at
its first layer; its head outputs the later layers' activations, and one backward pass gives
every layer's gradient (``manifest["layers"]``). Each layer gets its own CAMs and heatmaps
(:class:`LayerMaps`); the top-level heatmaps fuse them (:func:`fuse`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .activations import to_channels_first
from .errors import UsageError
from .maps import normalize_maps, upsample_bilinear

__all__ = ["FUSE_MODES", "Heatmaps", "LayerMaps", "check_fuse", "fuse", "heatmaps_of",
           "layer_maps"]

#: how :func:`fuse` combines the layers' normalized heatmaps
FUSE_MODES = ("mean", "max", None)


#: CAMs [N, h, w] and a size (H, W) -> heatmaps [N, H, W], upsampled and scaled per map
Heatmaps = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


@dataclass
class LayerMaps:
    """One layer's maps: raw CAMs [B, K, h, w] and heatmaps [B, K, H, W] in [0, 1]."""

    cams: np.ndarray
    heatmaps: np.ndarray


def layer_maps(
    layers: list[dict[str, Any]],
    activations: list[np.ndarray],
    gradients: list[np.ndarray],
    size: tuple[int, int],
    cams_of: Callable[[dict[str, Any], np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    heatmaps: Heatmaps | None = None,
) -> dict[str, LayerMaps]:
    """Each layer's CAMs and heatmaps at the input ``size``.

    Args:
        layers: manifest entries (``layer``, ``layout``, token fields), in sweep order.
        activations: each layer's activation [B, ...] in its layout.
        gradients: each layer's gradients [B, K, ...] in its layout.
        size: the input's (H, W).
        cams_of: (layer entry, its activation as given, activation [B, C, h, w], gradients
            [B, K, C, h, w]) -> CAMs [B, K, h, w].
        heatmaps: upsamples and scales CAMs [N, h, w] (:func:`heatmaps_of`'s ``upsample``).
    """
    maps = {}
    for layer, activation, gradient in zip(layers, activations, gradients, strict=True):
        channels_first, gradient = to_channels_first(activation, gradient, layer)
        cams = cams_of(layer, activation, channels_first, gradient)
        maps[layer["layer"]] = LayerMaps(cams, heatmaps_of(cams, size, heatmaps))
    return maps


def _numpy_heatmaps(rows: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return normalize_maps(upsample_bilinear(rows, size), copy=False)


def heatmaps_of(cams: np.ndarray, size: tuple[int, int], upsample: Heatmaps | None = None
                ) -> np.ndarray:
    """CAMs [..., h, w] upsampled to ``size`` and min-max scaled per map; a constant CAM (a
    layer a detection's score does not reach) is all zeros without being upsampled.
    ``upsample`` does it for CAMs [N, h, w] (default: numpy, :mod:`explainer.maps`)."""
    upsample = upsample or _numpy_heatmaps
    rows = cams.reshape(-1, *cams.shape[-2:])
    flat = rows.reshape(len(rows), -1)
    live = flat.max(axis=1, initial=-np.inf) > flat.min(axis=1, initial=np.inf)
    if live.all():
        return upsample(rows, size).reshape(*cams.shape[:-2], *size)
    out = np.zeros((*cams.shape[:-2], *size), np.float32)
    if live.any():
        out.reshape(-1, *size)[live] = upsample(rows[live], size)
    return out


def check_fuse(mode: str | None) -> None:
    """Raise :class:`UsageError` unless ``mode`` is one of :data:`FUSE_MODES`."""
    if mode not in FUSE_MODES:
        raise UsageError(f"unknown fuse mode {mode!r}; fuse must be one of 'mean', 'max' or None "
                         "(--fuse none on the command line: the first layer's maps)")


def fuse(maps: dict[str, LayerMaps], mode: str | None) -> np.ndarray:
    """The layers' normalized heatmaps combined: their ``"mean"`` or ``"max"``, renormalized
    per map; ``None`` gives the first layer's.

    Raises:
        UsageError: an unknown mode.
    """
    check_fuse(mode)
    stacked = [m.heatmaps for m in maps.values()]
    if mode is None or len(stacked) == 1:
        return stacked[0]
    combined = np.array(stacked[0], np.float32)  # in place: K maps at the input's size
    for other in stacked[1:]:
        (np.add if mode == "mean" else np.maximum)(combined, other, out=combined)
    return normalize_maps(combined, copy=False)  # the mean's 1/n goes with the scaling
