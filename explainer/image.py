"""Image loading, preprocessing (torchvision-style) and heatmap upsampling. numpy + Pillow only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
    "Geometry",
    "image_geometry",
    "load_image",
    "prepare_image",
    "prepare_with_geometry",
    "preprocess",
    "preprocess_with_geometry",
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


@dataclass(frozen=True)
class Geometry:
    """Where an image's pixels land in the model input: ``model = original * scale +
    offset`` on each axis (resize, crop and letterbox are all of this form).

    Attributes:
        scale: (x, y) scale factors.
        offset: (x, y) offsets in model-input pixels (negative for a crop, the padding for a
            letterbox).
        size: (width, height) of the original image.
    """

    scale: tuple[float, float]
    offset: tuple[float, float]
    size: tuple[int, int]

    def to_original(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """A box (x1, y1, x2, y2) in model-input pixels, in the original image's pixels
        (clipped to the image)."""
        (sx, sy), (ox, oy), (w, h) = self.scale, self.offset, self.size
        x1, y1, x2, y2 = ((box[0] - ox) / sx, (box[1] - oy) / sy, (box[2] - ox) / sx,
                          (box[3] - oy) / sy)
        return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w),
                min(max(y2, 0.0), h))


def _resized_size(size: tuple[int, int], resize: int | Sequence[int]) -> tuple[int, int]:
    w, h = size
    if isinstance(resize, int):
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = resize, int(resize * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    rh, rw = _pair(resize)
    return (rw, rh)


def _letterbox(size: tuple[int, int], pre: Preprocessing) -> tuple[tuple[int, int], tuple[int,
               int], tuple[int, int]]:
    """(resized (w, h), padding (left, top), canvas (w, h)) as Ultralytics' ``LetterBox``."""
    w, h = size
    if isinstance(pre.letterbox, int):
        ratio = pre.letterbox / max(w, h)
    else:
        ch, cw = _pair(pre.letterbox)
        ratio = min(ch / h, cw / w)
    new_w, new_h = max(1, int(round(w * ratio))), max(1, int(round(h * ratio)))
    if isinstance(pre.letterbox, int):  # pad only to a multiple of the stride
        cw = -(-new_w // pre.stride) * pre.stride
        ch = -(-new_h // pre.stride) * pre.stride
    if pre.letterbox_align == "topleft":
        return (new_w, new_h), (0, 0), (cw, ch)
    dw, dh = (cw - new_w) / 2, (ch - new_h) / 2
    left, top = int(round(dw - 0.1)), int(round(dh - 0.1))
    return (new_w, new_h), (left, top), (cw, ch)


def image_geometry(size: tuple[int, int], preprocessing: Preprocessing) -> Geometry:
    """The :class:`Geometry` of an image of ``size`` (width, height) under ``preprocessing``."""
    pre = preprocessing
    if pre.letterbox is not None:
        (new_w, new_h), (left, top), _ = _letterbox(size, pre)
        return Geometry((new_w / size[0], new_h / size[1]), (float(left), float(top)), size)
    new = _resized_size(size, pre.resize) if pre.resize is not None else size
    left = top = 0.0
    if pre.crop is not None:
        ch, cw = _pair(pre.crop)
        top, left = -float(round((new[1] - ch) / 2.0)), -float(round((new[0] - cw) / 2.0))
    return Geometry((new[0] / size[0], new[1] / size[1]), (left, top), size)


def prepare_image(
    image: ImageLike, preprocessing: Preprocessing, max_pixels: int | None = None
) -> Image.Image:
    """Load an image (see :func:`load_image`) and resize and center-crop (or letterbox) it as
    ``preprocessing`` says: the geometric part of preprocessing, i.e. the picture the model sees.

    Args:
        image: a path, PIL image or uint8 array.
        preprocessing: the resize and crop to apply.
        max_pixels: passed to :func:`load_image`.

    Raises:
        ImageError: the image cannot be loaded, or the crop is larger than the resized image.
    """
    return prepare_with_geometry(image, preprocessing, max_pixels)[0]


def prepare_with_geometry(
    image: ImageLike, preprocessing: Preprocessing, max_pixels: int | None = None
) -> tuple[Image.Image, Geometry]:
    """:func:`prepare_image`, and the :class:`Geometry` that maps model-input pixels back."""
    img = load_image(image, max_pixels=max_pixels)
    geometry = image_geometry(img.size, preprocessing)
    if preprocessing.letterbox is not None:
        resized, (left, top), canvas = _letterbox(img.size, preprocessing)
        if resized != img.size:
            img = img.resize(resized, Image.BILINEAR)
        padded = Image.new("RGB", canvas, (preprocessing.pad_value,) * 3)
        padded.paste(img, (left, top))
        return padded, geometry
    if preprocessing.resize is not None:
        size = _resized_size(img.size, preprocessing.resize)
        if size != img.size:
            img = img.resize(size, Image.BILINEAR)
    if preprocessing.crop is not None:
        ch, cw = _pair(preprocessing.crop)
        w, h = img.size
        if ch > h or cw > w:
            raise ImageError(f"center crop {ch}x{cw} is larger than the resized image {h}x{w}")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
    return img, geometry


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
    if preprocessing.channels == "BGR":
        arrays = [a[..., ::-1] for a in arrays]
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


def preprocess_with_geometry(
    images: ImageLike | Sequence[ImageLike],
    preprocessing: Preprocessing,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, list[Geometry]]:
    """:func:`preprocess`, and each image's :class:`Geometry` (model-input pixels back to the
    original image's)."""
    if isinstance(images, (str, os.PathLike, Image.Image)) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3)
    ):
        images = [images]
    prepared = [prepare_with_geometry(img, preprocessing, max_pixels) for img in images]
    batch = preprocess([p for p, _ in prepared], values_only(preprocessing))
    return batch, [g for _, g in prepared]


def values_only(preprocessing: Preprocessing) -> Preprocessing:
    """The preprocessing without its geometric part (for images already resized/letterboxed)."""
    return replace(preprocessing, resize=None, crop=None, letterbox=None)


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
