"""Image loading, preprocessing (torchvision-style) and heatmap upsampling. numpy + Pillow only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, _pair

__all__ = [
    "ImageError",
    "Preprocessing",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load_image",
    "prepare_image",
    "preprocess",
    "upsample_bilinear",
    "normalize_maps",
]

ImageLike = str | os.PathLike | Image.Image | np.ndarray


def _check_size(name: str, size: tuple[int, int], max_pixels: int | None) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels (None: Pillow's
    ``PIL.Image.MAX_IMAGE_PIXELS`` as it is now; never changed here)."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    width, height = size
    if limit is not None and width * height > limit:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{limit:,} pixels (a possible decompression bomb); if the image is trusted, pass "
            "a larger max_pixels= (onnxcam explain --max-pixels)"
        )


def load_image(source: ImageLike, max_pixels: int | None = None) -> Image.Image:
    """Open an image file (or pass a PIL image / HxWx3 uint8 array through) as RGB.

    Args:
        source: a path, a PIL image or an HxWx3 (or 4) uint8 array.
        max_pixels: largest ``width * height`` accepted, checked from the file header before
            any pixel is decoded (None: Pillow's ``PIL.Image.MAX_IMAGE_PIXELS``).

    Raises:
        ImageError: the file is missing or unreadable, or larger than ``max_pixels``.
    """
    if isinstance(source, Image.Image):
        _check_size("PIL image", source.size, max_pixels)
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] not in (3, 4) or source.dtype != np.uint8:
            raise ImageError(
                f"an image array must be HxWx3 (or 4) uint8, got shape {source.shape} "
                f"dtype {source.dtype}"
            )
        _check_size("image array", (source.shape[1], source.shape[0]), max_pixels)
        return Image.fromarray(source).convert("RGB")
    path = Path(source)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:  # reads the header only: size checked before decoding
            _check_size(str(path), img.size, max_pixels)
            return img.convert("RGB")
    except (ImageError, MemoryError):
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: cannot be read as an image ({err})") from err
    except Exception as err:  # Pillow's decoders also raise SyntaxError, ValueError, ...
        raise ImageError(f"{path}: corrupt image data ({type(err).__name__}: {err})") from err


def prepare_image(
    image: ImageLike, preprocessing: Preprocessing, max_pixels: int | None = None
) -> Image.Image:
    """Resize and center-crop an image (the geometric part of preprocessing); ``max_pixels``
    is passed to :func:`load_image`."""
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
    """Turn one image or a sequence of images into a float32 (or uint8) batch (NCHW or NHWC);
    ``max_pixels`` is passed to :func:`load_image`."""
    if isinstance(images, (str, os.PathLike, Image.Image)) or (
        isinstance(images, np.ndarray) and images.ndim == 3
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
