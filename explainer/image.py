"""Image loading, preprocessing (torchvision-style) and heatmap upsampling. numpy + Pillow only.

The names live in :mod:`explainer.image_load` (decoding files, PIL images and arrays),
:mod:`explainer.image_geometry` (resize, crop, letterbox, the model batch) and
:mod:`explainer.maps` (heatmap resampling and scaling); they are all importable from here.
"""

from __future__ import annotations

from .errors import ImageError
from .image_geometry import (
    Geometry,
    image_geometry,
    prepare_image,
    prepare_with_geometry,
    preprocess,
    preprocess_with_geometry,
    values_only,
)
from .image_load import ALPHA_BACKGROUND, ImageLike, load_image
from .maps import normalize_maps, upsample_bilinear
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

__all__ = [
    "ImageError",
    "Preprocessing",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ALPHA_BACKGROUND",
    "Geometry",
    "ImageLike",
    "image_geometry",
    "load_image",
    "prepare_image",
    "prepare_with_geometry",
    "preprocess",
    "preprocess_with_geometry",
    "upsample_bilinear",
    "normalize_maps",
    "values_only",
]
