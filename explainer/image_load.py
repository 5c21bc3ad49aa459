"""Image loading: files, PIL images and arrays decoded to 8-bit RGB, with a size limit checked
before any pixel is decoded. numpy + Pillow only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

__all__ = ["ALPHA_BACKGROUND", "ImageLike", "load_image"]

ALPHA_BACKGROUND = (255, 255, 255)
"""The color transparent pixels are composited over: white, as a viewer shows them."""

ImageLike = str | os.PathLike | Image.Image | np.ndarray


def _pillow_limit() -> int | None:
    """Pillow's decompression-bomb limit as it is now (read, never changed)."""
    return Image.MAX_IMAGE_PIXELS


def _check_size(name: str, size: tuple[int, int], max_pixels: int | None) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels."""
    limit = _pillow_limit() if max_pixels is None else max_pixels
    width, height = size
    if limit is not None and width * height > limit:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{limit:,} pixels (a possible decompression bomb); if the image is trusted, pass "
            f"a larger max_pixels= (onnxcam explain --max-pixels N)"
        )


def _gray_to_uint8(values: np.ndarray, top: float) -> np.ndarray:
    """Map gray values in ``[0, top]`` linearly onto 0..255 (clipped, rounded; NaN -> 0)."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=top, neginf=0.0)
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def _composite(rgba: np.ndarray) -> np.ndarray:
    """Alpha-composite an HxWx4 uint8 array over :data:`ALPHA_BACKGROUND`, giving HxWx3 uint8."""
    color = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:].astype(np.uint32)
    background = np.asarray(ALPHA_BACKGROUND, np.uint32)
    mixed = color * alpha + background * (255 - alpha)
    return ((mixed + 127) // 255).astype(np.uint8)  # nearest: x / 255 is never halfway


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any Pillow mode to 8-bit RGB (rules in :func:`load_image`)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        gray = _gray_to_uint8(np.asarray(img), 65535.0)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        gray = _gray_to_uint8(np.asarray(img), 1.0)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return Image.fromarray(_composite(np.asarray(img.convert("RGBA"))), "RGB")
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ImageError(f"image mode {mode!r} cannot be converted to RGB ({err})") from err


def _decode_file(path: Path, max_pixels: int | None) -> Image.Image:
    """Open, size-check, fully decode and orient an image file; every failure is ImageError."""
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: the file is empty (0 bytes)")
        # Image.open reads only the header: the size is checked before any pixel is decoded.
        with Image.open(path) as img:
            _check_size(str(path), img.size, max_pixels)
            img.load()  # decode now, inside the try: a truncated file fails here, not later
            return _finish(img, str(path))
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError(f"{path}: not an image file in a format Pillow reads ({err})") from err
    except ImportError as err:  # a plugin patched into Image.open (Ultralytics' HEIF) is missing
        raise ImageError(f"{path}: not an image file in a format Pillow reads (an image plugin "
                         f"tried for it is not installed: {err})") from err
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"{path}: {err} This is Pillow's own hard limit (twice PIL.Image.MAX_IMAGE_PIXELS, "
            "checked when the file is opened); for a trusted image raise "
            "PIL.Image.MAX_IMAGE_PIXELS as well as max_pixels="
        ) from err
    except MemoryError:
        raise
    except Exception as err:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ...
        raise ImageError(
            f"{path}: corrupt or truncated image data ({type(err).__name__}: {err})"
        ) from err


def _finish(img: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation and convert to RGB; always a new, loaded image."""
    oriented = ImageOps.exif_transpose(img)
    try:
        rgb = _to_rgb(oriented)
    except ImageError as err:
        raise ImageError(f"{name}: {err}") from err
    return rgb.copy() if rgb is img else rgb


def load_image(source: ImageLike, max_pixels: int | None = None) -> Image.Image:
    """Load an image file, PIL image or uint8 array as an 8-bit RGB PIL image.

    Every Pillow mode is decoded to the RGB pixels the picture shows:

    * ``RGB`` as is; ``L``, ``1``, ``P``, ``CMYK`` (JPEG included), ``YCbCr`` ... through
      Pillow's own conversion.
    * Transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, and ``P``/``L``/
      ``RGB`` images with a ``transparency`` entry, palette PNGs and GIFs included) is
      composited over :data:`ALPHA_BACKGROUND` (white), the way a viewer shows the picture on
      a white page: ``round((color * a + 255 * (255 - a)) / 255)``. The color stored under
      fully transparent pixels is ignored.
    * ``I;16``/``I;16B``/``I;16L`` (16-bit grayscale, e.g. a 16-bit PNG): 0..65535 maps
      linearly onto 0..255 (``round(v / 257)``), where Pillow's ``convert("RGB")`` would clip
      nearly every pixel to white.
    * ``I`` (32-bit integer): taken as 16-bit data, 0..65535, the range Pillow decodes 16-bit
      samples into; values outside are clipped.
    * ``F`` (32-bit float): taken as 0.0..1.0 (the float-image convention of scikit-image and
      OpenCV); values outside are clipped and NaN becomes black.

    The EXIF orientation of files and PIL images is applied (``ImageOps.exif_transpose``), so a
    sideways-stored camera JPEG comes out upright.

    Args:
        source: a path, a PIL image, or an HxW, HxWx3 or HxWx4 uint8 array (4 channels:
            RGBA, composited like a transparent image).
        max_pixels: largest ``width * height`` accepted. Checked from the file header before
            any pixel is decoded, so decompression bombs cost nothing. None (the default) uses
            Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` as it is at the call (89,478,485 pixels
            unless changed; no limit if it is None). Pillow itself still refuses files above
            twice its own limit when opening them; raise ``PIL.Image.MAX_IMAGE_PIXELS`` for
            those. Pillow's global state is never modified here.

    Raises:
        ImageError: the file is missing, empty, not an image, corrupt or truncated (Pillow's
            ``LOAD_TRUNCATED_IMAGES`` is left off: a truncated file is an error, never a
            half-decoded picture), larger than ``max_pixels``, or the array has the wrong
            shape or dtype. The message names the file and the problem.
    """
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "PIL image"
        _check_size(name, source.size, max_pixels)
        try:
            source.load()
            return _finish(source, name)
        except (ImageError, MemoryError):
            raise
        except Exception as err:
            raise ImageError(
                f"{name}: corrupt or truncated image data ({type(err).__name__}: {err})"
            ) from err
    if isinstance(source, np.ndarray):
        if (source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (3, 4))
                or source.dtype != np.uint8):
            raise ImageError(
                f"an image array must be HxW, HxWx3 or HxWx4 uint8, got shape {source.shape} "
                f"dtype {source.dtype}"
            )
        _check_size("image array", (source.shape[1], source.shape[0]), max_pixels)
        if source.ndim == 3 and source.shape[2] == 4:
            return Image.fromarray(_composite(source), "RGB")
        return Image.fromarray(np.ascontiguousarray(source)).convert("RGB")
    return _decode_file(Path(source), max_pixels)
