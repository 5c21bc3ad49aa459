"""Colormaps: piecewise-linear tables that colour a heatmap (numpy only).

A heatmap is a 2-D ``(H, W)`` array of real numbers meant to lie in ``[0, 1]``; values outside
are clipped, NaN or infinite values raise :class:`VisualizeError` (a ``ValueError``), as does
any array that is not 2-D.

Colormaps are interpolated with :func:`numpy.interp`: ``"jet"`` uses matplotlib's exact segment
data; ``"viridis"``, ``"inferno"`` and ``"turbo"`` are approximations from 17 evenly spaced
anchors of matplotlib's tables (within about 7/255 of the originals); ``"gray"`` is the
identity ramp.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import VisualizeError

__all__ = ["COLORMAPS", "apply_colormap", "check_heatmap", "colormap"]

# Anchor tables: each is (positions, rgb) with positions ascending in [0, 1] and rgb in
# [0, 1]; a channel is np.interp(value, positions, rgb[:, channel]).
_EVEN17 = np.linspace(0.0, 1.0, 17)

# matplotlib's "jet" segment data, per channel (x, y) pairs.
_JET_SEGMENTS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)

_VIRIDIS = (
    (0.2670, 0.0049, 0.3294), (0.2823, 0.0950, 0.4173), (0.2788, 0.1755, 0.4834),
    (0.2590, 0.2515, 0.5247), (0.2297, 0.3224, 0.5457), (0.1994, 0.3876, 0.5546),
    (0.1727, 0.4488, 0.5579), (0.1490, 0.5081, 0.5573), (0.1276, 0.5669, 0.5506),
    (0.1206, 0.6258, 0.5335), (0.1579, 0.6838, 0.5017), (0.2461, 0.7389, 0.4520),
    (0.3692, 0.7889, 0.3829), (0.5160, 0.8312, 0.2943), (0.6785, 0.8637, 0.1895),
    (0.8456, 0.8873, 0.0997), (0.9932, 0.9062, 0.1439),
)  # fmt: skip

_INFERNO = (
    (0.0015, 0.0005, 0.0139), (0.0423, 0.0281, 0.1411), (0.1293, 0.0473, 0.2908),
    (0.2383, 0.0366, 0.3964), (0.3415, 0.0623, 0.4294), (0.4412, 0.0993, 0.4316),
    (0.5409, 0.1347, 0.4151), (0.6401, 0.1714, 0.3811), (0.7357, 0.2159, 0.3302),
    (0.8224, 0.2752, 0.2661), (0.8943, 0.3534, 0.1936), (0.9470, 0.4492, 0.1153),
    (0.9784, 0.5579, 0.0349), (0.9879, 0.6753, 0.0653), (0.9746, 0.7977, 0.2063),
    (0.9476, 0.9174, 0.4107), (0.9884, 0.9984, 0.6449),
)  # fmt: skip

_TURBO = (
    (0.1900, 0.0718, 0.2322), (0.2511, 0.2524, 0.6337), (0.2763, 0.4212, 0.8912),
    (0.2586, 0.5796, 0.9988), (0.1584, 0.7355, 0.9231), (0.0927, 0.8655, 0.7623),
    (0.1966, 0.9490, 0.5947), (0.4278, 0.9942, 0.3857), (0.6436, 0.9900, 0.2336),
    (0.8047, 0.9245, 0.2046), (0.9330, 0.8124, 0.2267), (0.9931, 0.6741, 0.2035),
    (0.9836, 0.4929, 0.1285), (0.9211, 0.3149, 0.0548), (0.8161, 0.1846, 0.0181),
    (0.6645, 0.0844, 0.0042), (0.4796, 0.0158, 0.0106),
)  # fmt: skip


def _channels_from_table(table: Sequence[Sequence[float]]) -> list[tuple[np.ndarray, np.ndarray]]:
    rgb = np.asarray(table, dtype=np.float64)
    return [(_EVEN17, rgb[:, c]) for c in range(3)]


def _channels_from_segments(
    segments: Sequence[Sequence[tuple[float, float]]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for seg in segments:
        arr = np.asarray(seg, dtype=np.float64)
        out.append((arr[:, 0], arr[:, 1]))
    return out


_TABLES: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {
    "jet": _channels_from_segments(_JET_SEGMENTS),
    "viridis": _channels_from_table(_VIRIDIS),
    "inferno": _channels_from_table(_INFERNO),
    "turbo": _channels_from_table(_TURBO),
    "gray": [(np.array([0.0, 1.0]), np.array([0.0, 1.0]))] * 3,
}

#: Names accepted by :func:`colormap` (and the ``colormap`` argument elsewhere).
COLORMAPS: tuple[str, ...] = tuple(_TABLES)


def check_heatmap(heatmap: np.ndarray, what: str = "heatmap") -> np.ndarray:
    """Validate a heatmap and return it as a clipped float64 array.

    Raises:
        VisualizeError: naming ``what``: not 2-D, empty, not real numbers, NaN or infinite.
    """
    arr = np.asarray(heatmap)
    if arr.ndim != 2:
        raise VisualizeError(f"{what} must be a 2-D (H, W) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise VisualizeError(f"{what} must be non-empty, got shape {arr.shape}")
    if not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    ):
        raise VisualizeError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise VisualizeError(f"{what} contains NaN or infinite values")
    return np.clip(arr, 0.0, 1.0)


def apply_colormap(values: np.ndarray, name: str) -> np.ndarray:
    """Colour an already validated, clipped 2-D heatmap (see :func:`check_heatmap`) as
    ``(H, W, 3)`` uint8.

    Raises:
        VisualizeError: ``name`` is not one of :data:`COLORMAPS`.
    """
    table = _TABLES.get(name)
    if table is None:
        raise VisualizeError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    rgb = np.stack([np.interp(values, xs, ys) for xs, ys in table], axis=-1)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def colormap(heatmap: np.ndarray, name: str = "jet") -> np.ndarray:
    """Map a heatmap to RGB colours.

    Args:
        heatmap: 2-D ``(H, W)`` array of values in ``[0, 1]``; values outside are clipped.
        name: Colormap name, one of :data:`COLORMAPS` (``"jet"``, ``"viridis"``,
            ``"inferno"``, ``"turbo"``, ``"gray"``).

    Returns:
        ``(H, W, 3)`` uint8 RGB array.

    Raises:
        VisualizeError: ``heatmap`` is not 2-D, is empty, or holds NaN/inf or non-numeric
            values; or ``name`` is not a known colormap.
    """
    return apply_colormap(check_heatmap(heatmap), name)
