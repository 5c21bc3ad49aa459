"""Maps per layer: one bundle may explain several layers at once (a layer sweep).

A sweep bundle (``export_torch(model, ["layer1", "layer2", "layer3", "layer4"])``) is cut at
its first layer; its head outputs the later layers' activations, and one backward pass gives
every layer's gradient (``manifest["layers"]``). Each layer gets its own CAMs and heatmaps
(:class:`LayerMaps`); the top-level heatmaps fuse them (:func:`fuse`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .activations import to_channels_first
from .errors import UsageError
from .maps import fused_heatmaps, normalize_maps

__all__ = ["FUSE_MODES", "Heatmaps", "LayerMaps", "check_fuse", "fuse", "heatmaps_of",
           "layer_maps"]

#: how :func:`fuse` combines the layers' normalized heatmaps
FUSE_MODES = ("mean", "max", None)


#: several layers' CAMs [N, h_l, w_l] and a size (H, W) -> heatmaps [N, H, W]: the mean of
#: the layers' upsampled, per-map min-max scaled CAMs, scaled again (one layer: its heatmaps)
Heatmaps = Callable[[list[np.ndarray], tuple[int, int]], np.ndarray]


class LayerMaps:
    """One layer's maps: raw CAMs [B, K, h, w] and heatmaps [B, K, H, W] in [0, 1].

    The heatmaps, where not given, are computed from the CAMs at ``size`` when first read
    (a sweep's fused heatmap needs only its layers' CAMs, :func:`fuse`).
    """

    def __init__(self, cams: np.ndarray, heatmaps: np.ndarray | None = None,
                 size: tuple[int, int] | None = None) -> None:
        if heatmaps is None and size is None:
            raise ValueError("LayerMaps takes the heatmaps or the size to compute them at")
        self.cams = cams
        self._heatmaps = heatmaps
        self.size = tuple(heatmaps.shape[-2:]) if heatmaps is not None else tuple(size)

    @property
    def heatmaps(self) -> np.ndarray:
        """Heatmaps [B, K, H, W] in [0, 1] (computed by numpy on first read)."""
        return self.heatmaps_by(None)

    @property
    def computed(self) -> bool:
        """Whether the heatmaps exist yet."""
        return self._heatmaps is not None

    def heatmaps_by(self, upsample: Heatmaps | None) -> np.ndarray:
        """The heatmaps, computed by ``upsample`` (None: numpy) if they do not exist yet."""
        if self._heatmaps is None:
            self._heatmaps = heatmaps_of([self.cams], self.size, upsample)
        return self._heatmaps

    def columns(self, k: int) -> LayerMaps:
        """The first ``k`` maps of every image (views)."""
        return LayerMaps(self.cams[:, :k],
                         self._heatmaps[:, :k] if self._heatmaps is not None else None,
                         self.size)

    def __repr__(self) -> str:
        return f"LayerMaps(cams {list(self.cams.shape)}, heatmaps at {list(self.size)})"


def layer_maps(
    layers: list[dict[str, Any]],
    activations: list[np.ndarray],
    gradients: list[np.ndarray],
    size: tuple[int, int],
    cams_of: Callable[[dict[str, Any], np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> dict[str, LayerMaps]:
    """Each layer's CAMs, with its heatmaps at the input ``size`` left to :func:`fuse` (or to
    their first read).

    Args:
        layers: manifest entries (``layer``, ``layout``, token fields), in sweep order.
        activations: each layer's activation [B, ...] in its layout.
        gradients: each layer's gradients [B, K, ...] in its layout.
        size: the input's (H, W).
        cams_of: (layer entry, its activation as given, activation [B, C, h, w], gradients
            [B, K, C, h, w]) -> CAMs [B, K, h, w].
    """
    maps = {}
    for layer, activation, gradient in zip(layers, activations, gradients, strict=True):
        channels_first, gradient = to_channels_first(activation, gradient, layer)
        cams = cams_of(layer, activation, channels_first, gradient)
        maps[layer["layer"]] = LayerMaps(cams, size=size)
    return maps


def heatmaps_of(layers: list[np.ndarray], size: tuple[int, int],
                upsample: Heatmaps | None = None) -> np.ndarray:
    """The heatmaps of one layer's CAMs [..., h, w], or the fused heatmaps of several layers'
    (the same leading shape): upsampled to ``size`` and min-max scaled per map, several
    layers' averaged and scaled again (:func:`explainer.maps.fused_heatmaps`). A map whose
    CAMs are constant in every layer (a layer a detection's score does not reach) is all zeros
    without being upsampled. ``upsample`` does it for CAMs [N, h_l, w_l] (default: numpy)."""
    upsample = upsample or fused_heatmaps
    lead = layers[0].shape[:-2]
    rows = [cams.reshape(-1, *cams.shape[-2:]) for cams in layers]
    live = np.zeros(len(rows[0]), bool)
    for r in rows:
        flat = r.reshape(len(r), -1)
        live |= flat.max(axis=1, initial=-np.inf) > flat.min(axis=1, initial=np.inf)
    if live.all():
        return upsample(rows, size).reshape(*lead, *size)
    out = np.zeros((*lead, *size), np.float32)
    if live.any():
        out.reshape(-1, *size)[live] = upsample([r[live] for r in rows], size)
    return out


def check_fuse(mode: str | None) -> None:
    """Raise :class:`UsageError` unless ``mode`` is one of :data:`FUSE_MODES`."""
    if mode not in FUSE_MODES:
        raise UsageError(f"unknown fuse mode {mode!r}; fuse must be one of 'mean', 'max' or None "
                         "(--fuse none on the command line: the first layer's maps)")


def fuse(maps: dict[str, LayerMaps], mode: str | None, upsample: Heatmaps | None = None
         ) -> np.ndarray:
    """The layers' normalized heatmaps combined: their ``"mean"`` or ``"max"``, renormalized
    per map; ``None`` gives the first layer's. Heatmaps not yet computed are computed by
    ``upsample`` (None: numpy); the mean of such layers is one fused resize of their CAMs
    (:func:`heatmaps_of`), without each layer's heatmaps.

    Raises:
        UsageError: an unknown mode.
    """
    check_fuse(mode)
    layers = list(maps.values())
    if mode is None or len(layers) == 1:
        return layers[0].heatmaps_by(upsample)
    if mode == "mean" and not any(m.computed for m in layers):
        return heatmaps_of([m.cams for m in layers], layers[0].size, upsample)
    stacked = [m.heatmaps_by(upsample) for m in layers]
    combined = np.array(stacked[0], np.float32)  # in place: K maps at the input's size
    for other in stacked[1:]:
        (np.add if mode == "mean" else np.maximum)(combined, other, out=combined)
    return normalize_maps(combined, copy=False)  # the mean's 1/n goes with the scaling
