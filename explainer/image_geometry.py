"""The geometric part of preprocessing (resize, center crop, letterbox) and its
:class:`Geometry`, and the preprocessing of images into a model batch. numpy + Pillow only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .errors import ImageError
from .image_load import ImageLike, load_image
from .preprocessing import Preprocessing, _pair

__all__ = [
    "Geometry",
    "image_geometry",
    "prepare_image",
    "prepare_with_geometry",
    "preprocess",
    "preprocess_with_geometry",
    "values_only",
]


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
