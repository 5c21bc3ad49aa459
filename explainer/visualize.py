"""Render class-activation heatmaps as colour images (numpy + Pillow only).

Heatmap conventions used throughout this module:

* A heatmap is a 2-D ``(H, W)`` array of real numbers meant to lie in ``[0, 1]``
  (as produced by :class:`explainer.Explainer`). Values outside ``[0, 1]`` are
  **clipped** (so tiny round-off overshoots are harmless); NaN or infinite values raise
  :class:`VisualizeError` (a ``ValueError``), as does any array that is not 2-D.
* When a heatmap's size differs from the image's, it is resized bilinearly to the image
  size before colouring.

Colormaps (:data:`COLORMAPS`, :func:`colormap`) are the piecewise-linear tables of
:mod:`explainer.colormaps`, re-exported here.

Pixel-space maps (``Explanation.pixels`` of the guided methods, signed gradients ``(C, H, W)``)
are drawn by :func:`pixel_image`: one scale per map, shared by its channels, with zero at mid
grey (see there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .colormaps import COLORMAPS, apply_colormap, check_heatmap, colormap
from .errors import VisualizeError

__all__ = ["COLORMAPS", "ITEM_DRAWERS", "colormap", "draw_boxes", "figure", "item_boxes",
           "overlay", "pixel_image", "save_figure"]

logger = logging.getLogger(__name__)

ImageLike = Image.Image | np.ndarray


def _to_rgb_array(image: ImageLike) -> np.ndarray:
    """Return an image as an (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        raise VisualizeError(
            f"image must be a PIL.Image.Image or a numpy array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise VisualizeError(f"image array must have dtype uint8 (0..255), got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[:, :, :3]
    else:
        raise VisualizeError(
            f"image array must have shape (H, W, 3), (H, W, 4) or (H, W), got {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise VisualizeError(f"image must be non-empty, got shape {image.shape}")
    return np.ascontiguousarray(image)


def _resize_heatmap(heatmap: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a 2-D float heatmap to ``size_hw`` = (H, W)."""
    if heatmap.shape == size_hw:
        return heatmap
    img = Image.fromarray(heatmap.astype(np.float32))
    img = img.resize((size_hw[1], size_hw[0]), resample=Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)


def overlay(
    image: ImageLike,
    heatmap: np.ndarray,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Image.Image:
    """Blend a colour-mapped heatmap over an image.

    ``out = (1 - alpha) * image + alpha * colormap(heatmap)``, per pixel.

    Args:
        image: A PIL image (any mode; converted to RGB) or a uint8 array of shape
            ``(H, W, 3)``, ``(H, W, 4)`` (alpha dropped) or ``(H, W)`` (grey).
        heatmap: 2-D array of values in ``[0, 1]`` (clipped otherwise). Resized bilinearly
            to the image size when the sizes differ.
        alpha: Weight of the heatmap colour, in ``[0, 1]``.
        colormap: Colormap name, see :data:`COLORMAPS`.

    Returns:
        An RGB ``PIL.Image.Image`` with the image's size.

    Raises:
        VisualizeError: Bad image type/dtype/shape, bad heatmap, ``alpha`` outside ``[0, 1]``,
            or unknown colormap name.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise VisualizeError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _to_rgb_array(image)
    values = check_heatmap(heatmap)
    values = _resize_heatmap(values, rgb.shape[:2])
    colours = apply_colormap(values, colormap)
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colours.astype(np.float64)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def pixel_image(pixels: np.ndarray) -> Image.Image:
    """Draw a pixel-space map (a guided gradient ``(C, H, W)``, channels first) as an image.

    The convention: zero is mid grey and the map is scaled by its largest absolute value,
    taken over all its channels and positions (one scale per map, so the channels keep their
    relative sizes and the colours their hue)::

        value = round(127.5 + 127.5 * g / max|g|)   # in [0, 255]; g = 0 gives 128

    An all-zero map is uniform grey. Three channels give an RGB image (in the model input's
    channel order), one channel a greyscale image; other channel counts are averaged into a
    greyscale image.

    Args:
        pixels: ``(C, H, W)`` real array, e.g. ``explanation.pixels[i, k]``.

    Returns:
        A ``PIL.Image.Image`` of size ``(W, H)``, mode ``"RGB"`` or ``"L"``.

    Raises:
        VisualizeError: ``pixels`` is not a non-empty 3-D real array, or holds NaN/inf.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 3 or 0 in arr.shape or arr.dtype.kind not in "biuf":
        raise VisualizeError(
            f"pixels must be a non-empty (C, H, W) real array, got shape {arr.shape} and "
            f"dtype {arr.dtype}"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise VisualizeError("pixels contain NaN or infinite values")
    if arr.shape[0] not in (1, 3):
        arr = arr.mean(axis=0, keepdims=True)
    peak = np.abs(arr).max()
    scaled = arr / peak if peak > 0 else np.zeros_like(arr)
    values = np.clip(np.rint(127.5 + 127.5 * scaled), 0, 255).astype(np.uint8)
    if values.shape[0] == 1:
        return Image.fromarray(values[0])  # mode "L"
    return Image.fromarray(np.ascontiguousarray(values.transpose(1, 2, 0)))  # mode "RGB"


def _load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, max_width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``max_width`` pixels."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    ellipsis = "..."
    while text and draw.textlength(text + ellipsis, font=font) > max_width:
        text = text[:-1]
    return text + ellipsis if text else ""


def _fit_into_tile(img: Image.Image, tile: int | tuple[int, int],
                   background: tuple[int, int, int]) -> Image.Image:
    """Scale ``img`` (keeping aspect ratio) into a ``tile`` x ``tile`` square (or a
    ``(width, height)`` cell), centred."""
    cell_w, cell_h = (tile, tile) if isinstance(tile, int) else tile
    w, h = img.size
    scale = min(cell_w / w, cell_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=Image.Resampling.BILINEAR)
    if (new_w, new_h) == (cell_w, cell_h):
        return img
    canvas = Image.new("RGB", (cell_w, cell_h), background)
    canvas.paste(img, ((cell_w - new_w) // 2, (cell_h - new_h) // 2))
    return canvas


def _figure_arguments(
    heatmaps: Sequence[np.ndarray] | np.ndarray,
    titles: Sequence[str] | None,
    tile: int,
    padding: int,
    font_size: int | None,
    allow_empty: bool = False,
) -> tuple[list[np.ndarray], list[str], int]:
    """Validate :func:`figure`'s arguments: (heatmaps, titles, font size)."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 16:
        raise VisualizeError(f"tile must be an int >= 16, got {tile!r}")
    if padding < 0:
        raise VisualizeError(f"padding must be >= 0, got {padding}")
    if isinstance(heatmaps, np.ndarray):
        if heatmaps.ndim == 2:
            raise VisualizeError(
                f"heatmaps must be a sequence of 2-D arrays or a 3-D (K, H, W) array, "
                f"got a single 2-D array of shape {heatmaps.shape}; wrap it in a list"
            )
        if heatmaps.ndim != 3:
            raise VisualizeError(
                f"heatmaps array must be 3-D (K, H, W), got shape {heatmaps.shape}"
            )
    maps = list(heatmaps)
    if not maps and not allow_empty:
        raise VisualizeError("heatmaps must contain at least one heatmap")
    if titles is None:
        titles = [""] * len(maps)
    elif isinstance(titles, str):
        raise VisualizeError("titles must be a sequence of str, not a single str")
    titles = list(titles)
    if len(titles) != len(maps):
        raise VisualizeError(f"got {len(maps)} heatmaps but {len(titles)} titles")
    size = max(10, tile // 16) if font_size is None else font_size
    if size < 1:
        raise VisualizeError(f"font_size must be >= 1, got {font_size}")

    return maps, titles, size


#: images at least this many times wider than high (text lines) are laid out in a column
WIDE_ASPECT = 3.0


def figure(
    image: ImageLike,
    heatmaps: Sequence[np.ndarray] | np.ndarray,
    titles: Sequence[str] | None = None,
    image_title: str = "input",
    tile: int = 224,
    alpha: float = 0.5,
    colormap: str = "jet",
    padding: int = 4,
    font_size: int | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
) -> Image.Image:
    """Lay out the input image and one heatmap overlay per heatmap in a single row.

    Each cell is ``tile`` x ``tile`` pixels (images are scaled to fit, keeping their aspect
    ratio, on a white background) with its title drawn above it in Pillow's default font.
    Titles too wide for a tile are shortened with ``"..."``. An image :data:`WIDE_ASPECT`
    times wider than high (a text line) gets ``4 * tile`` wide cells, one per row.

    Args:
        image: The input image (PIL image or uint8 array, see :func:`overlay`).
        heatmaps: A sequence of 2-D heatmaps, or a 3-D ``(K, H, W)`` array; each is
            overlaid on ``image`` at the image's resolution, then scaled into its tile.
        titles: One title per heatmap, or ``None`` for empty titles.
        image_title: Title of the first (plain image) tile.
        tile: Side length of each square cell in pixels (>= 16).
        alpha: Heatmap weight, see :func:`overlay`.
        colormap: Colormap name, see :data:`COLORMAPS`.
        padding: Pixels of white space between and around tiles (>= 0).
        font_size: Title font size in pixels; default ``max(10, tile // 16)``.
        boxes: one box ``(x1, y1, x2, y2)`` in the image's pixels per heatmap (a detection's),
            drawn on its overlay; the input tile shows them all, numbered.

    Returns:
        An RGB ``PIL.Image.Image`` of width ``(K + 1) * tile + (K + 2) * padding`` (a wide
        image's: ``4 * tile + 2 * padding``).

    Raises:
        VisualizeError: No heatmaps, heatmap count differs from title count, a bad heatmap
            or image, or an invalid ``tile``/``padding``/``font_size``.
    """
    maps, titles, size = _figure_arguments(heatmaps, titles, tile, padding, font_size,
                                           allow_empty=boxes is not None)
    if boxes is not None and len(boxes) != len(maps):
        raise VisualizeError(f"got {len(maps)} heatmaps but {len(boxes)} boxes")
    rgb = _to_rgb_array(image)
    white = (255, 255, 255)
    # a wide image (a text line) gets wide cells stacked in a column
    aspect = rgb.shape[1] / rgb.shape[0]
    wide = aspect >= WIDE_ASPECT
    cell = (4 * tile, max(16, min(tile, round(4 * tile / aspect)))) if wide else (tile, tile)
    width_px = max(2, round(max(rgb.shape[1] / cell[0], rgb.shape[0] / cell[1]) * 2))
    shown = Image.fromarray(rgb)
    if boxes is not None:
        shown = draw_boxes(shown, boxes, [str(j + 1) for j in range(len(boxes))], width_px)
    cells = [_fit_into_tile(shown, cell, white)]
    for i, hm in enumerate(maps):
        check_heatmap(hm, what=f"heatmaps[{i}]")
        panel = overlay(rgb, hm, alpha=alpha, colormap=colormap)
        if boxes is not None:
            panel = draw_boxes(panel, [boxes[i]], None, width_px)
        cells.append(_fit_into_tile(panel, cell, white))

    font = _load_font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    all_titles = [image_title, *titles]
    boxes = [probe.textbbox((0, 0), t or "Ag", font=font) for t in all_titles]
    text_h = max(b[3] for b in boxes)
    strip = text_h + 2 * max(2, padding)

    k = len(cells)
    if wide:  # one row per cell, its title above it
        width, height = cell[0] + 2 * padding, k * (strip + cell[1]) + padding
    else:
        width, height = k * tile + (k + 1) * padding, strip + tile + padding
    canvas = Image.new("RGB", (width, height), white)
    draw = ImageDraw.Draw(canvas)
    for j, (image_cell, title) in enumerate(zip(cells, all_titles, strict=True)):
        x0, y0 = (padding, j * (strip + cell[1])) if wide else (padding + j * (tile + padding), 0)
        canvas.paste(image_cell, (x0, y0 + strip))
        text = _fit_text(draw, str(title), font, cell[0])
        if text:
            tw = draw.textlength(text, font=font)
            draw.text((x0 + (cell[0] - tw) / 2, y0 + max(2, padding)), text, fill=(0, 0, 0),
                      font=font)
    return canvas


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]],
               labels: Sequence[str] | None = None, width: int = 2) -> Image.Image:
    """A copy of ``image`` with each box ``(x1, y1, x2, y2)`` outlined (white over black, visible
    on any map), and its label at its top left. A box given corner-swapped (a model's negative
    width or height) is drawn over the span it covers; a non-finite one is skipped."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = _load_font(max(10, width * 6))
    for j, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) for v in box)
        if not all(np.isfinite((x1, y1, x2, y2))):
            continue
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        draw.rectangle((x1, y1, x2, y2), outline=(0, 0, 0), width=width + 2)
        draw.rectangle((x1, y1, x2, y2), outline=(255, 255, 255), width=width)
        if labels:
            tx = min(max(x1, 0.0), out.width - 1) + width + 1
            ty = min(max(y1, 0.0), out.height - 1) + width
            draw.text((tx, ty), labels[j], fill=(255, 255, 255), font=font,
                      stroke_width=max(1, width // 2), stroke_fill=(0, 0, 0))
    return out


#: how a figure shows a task's explained items, by its ``drawer``
#: (:attr:`explainer.tasks.TaskSpec.drawer`): one image's items -> the boxes drawn on their
#: maps, or None. A text recognizer's character boxes are left off: they would hide the map.
ITEM_DRAWERS: dict[str, Callable[[Sequence], list | None]] = {
    "classes": lambda items: None,
    "boxes": lambda items: [item.box for item in items],
    "text": lambda items: None,
}


def item_boxes(drawer: str, items: Sequence | None) -> list | None:
    """The boxes :func:`figure` draws for one image's explained ``items`` of a task whose
    :attr:`~explainer.tasks.TaskSpec.drawer` is ``drawer``, or None where it draws none."""
    return None if items is None else ITEM_DRAWERS[drawer](items)


def save_figure(
    path: str | PathLike[str],
    image: ImageLike,
    heatmaps: Sequence[np.ndarray] | np.ndarray,
    titles: Sequence[str] | None = None,
    **kwargs,
) -> Path:
    """Build a :func:`figure` and save it, creating parent directories as needed.

    Args:
        path: Output file; the format follows the suffix (e.g. ``.png``).
        image: The input image, see :func:`figure`.
        heatmaps: Heatmaps, see :func:`figure`.
        titles: Titles, see :func:`figure`.
        **kwargs: Further keyword arguments for :func:`figure`.

    Returns:
        The output path.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure(image, heatmaps, titles, **kwargs).save(out)
    logger.info("saved figure to %s", out)
    return out
