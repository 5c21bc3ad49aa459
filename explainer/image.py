"""Image loading, preprocessing (torchvision-style) and heatmap upsampling. numpy + Pillow only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, _pair

__all__ = [
    "ImageError",
    "Preprocessing",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ALPHA_BACKGROUND",
    "load_image",
    "prepare_image",
    "preprocess",
    "upsample_bilinear",
    "normalize_maps",
]

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


def prepare_image(
    image: ImageLike, preprocessing: Preprocessing, max_pixels: int | None = None
) -> Image.Image:
    """Load an image (see :func:`load_image`) and resize and center-crop it as ``preprocessing``
    says: the geometric part of preprocessing, i.e. the picture the model sees.

    Args:
        image: a path, PIL image or uint8 array.
        preprocessing: the resize and crop to apply.
        max_pixels: passed to :func:`load_image`.

    Raises:
        ImageError: the image cannot be loaded, or the crop is larger than the resized image.
    """
    img = load_image(image, max_pixels=max_pixels)
    if preprocessing.resize is not None:
        if isinstance(preprocessing.resize, int):
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = preprocessing.resize, int(preprocessing.resize * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            rh, rw = _pair(preprocessing.resize)
            size = (rw, rh)
        if size != img.size:
            img = img.resize(size, Image.BILINEAR)
    if preprocessing.crop is not None:
        ch, cw = _pair(preprocessing.crop)
        w, h = img.size
        if ch > h or cw > w:
            raise ImageError(f"center crop {ch}x{cw} is larger than the resized image {h}x{w}")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
    return img


def preprocess(
    images: ImageLike | Sequence[ImageLike],
    preprocessing: Preprocessing,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Turn one image or a sequence of images into a float32 (or uint8) batch (NCHW or NHWC).

    Args:
        images: one path, PIL image or uint8 array, or a sequence of them.
        preprocessing: resize, crop, scale, mean/std, layout and dtype.
        max_pixels: largest ``width * height`` of an input image, passed to
            :func:`load_image` (None: Pillow's ``PIL.Image.MAX_IMAGE_PIXELS``).

    Raises:
        ImageError: an image cannot be loaded, or the images differ in size after
            preprocessing.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3)
    ):
        images = [images]
    arrays = [
        np.asarray(prepare_image(img, preprocessing, max_pixels), dtype=np.float32)
        for img in images
    ]
    if not arrays:
        raise ImageError("no images given")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ImageError(f"images have different sizes after preprocessing {sorted(shapes)}; "
                         "set Preprocessing.crop or a (h, w) resize")
    if preprocessing.dtype == "uint8":
        batch = np.stack(arrays).astype(np.uint8)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if preprocessing.layout == "NCHW"
                                    else batch)
    batch = np.stack(arrays) * np.float32(preprocessing.scale)
    batch = (batch - np.asarray(preprocessing.mean, np.float32)) / np.asarray(
        preprocessing.std, np.float32
    )
    if preprocessing.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32)


@lru_cache(maxsize=64)
def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and weight of hi for 1-D linear interpolation with half-pixel
    centers (align_corners=False, as torch.nn.functional.interpolate and cv2.resize)."""
    pos = np.clip((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def upsample_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize ``maps`` [..., h, w] to [..., H, W] (half-pixel centers).

    Gathers and lerps rather than multiplying by interpolation matrices: BLAS threads left
    spinning after a matmul would steal the cores from the next ONNX Runtime run.
    """
    maps = maps.astype(np.float32, copy=False)
    lo, hi, frac = _linear_taps(maps.shape[-1], size[1])
    columns = maps[..., lo] * (1 - frac) + maps[..., hi] * frac  # [..., h, W], small
    lo, hi, frac = _linear_taps(maps.shape[-2], size[0])
    frac = frac[:, None]
    out = np.ascontiguousarray(columns[..., lo, :])  # fancy indexing may leave odd strides
    out *= 1 - frac
    upper = columns[..., hi, :]
    upper *= frac
    out += upper
    return out


def normalize_maps(maps: np.ndarray, copy: bool = True) -> np.ndarray:
    """Per-map min-max scaling of [..., H, W] to [0, 1]; a constant map becomes all zeros.

    With ``copy=False`` a C-contiguous float32 input is scaled in place (and returned).
    """
    out = np.array(maps, dtype=np.float32, order="C", copy=True if copy else None)
    flat = out.reshape(-1, out.shape[-2] * out.shape[-1])  # a view: `out` is C-contiguous
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    flat -= low
    flat *= np.divide(1, span, out=np.zeros_like(span), where=span > 0)
    return out
