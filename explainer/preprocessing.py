"""How images become model inputs: the :class:`Preprocessing` recorded in a bundle's manifest.

Plain data (no Pillow), so the exporters can record it without loading the image stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ImageError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

def _pair(value: int | Sequence[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes a model input, like torchvision's Resize/CenterCrop/ToTensor/
    Normalize.

    Attributes:
        resize: an int resizes the shorter side to that length keeping the aspect ratio
            (torchvision ``Resize(int)``); a pair ``(h, w)`` resizes to exactly that size;
            None keeps the size.
        crop: center crop ``(h, w)`` (or an int for a square) after resizing; None for none.
        scale: pixels (0..255) are multiplied by this before normalizing (1/255 = ToTensor).
        mean: per-channel mean subtracted after scaling.
        std: per-channel standard deviation divided by after subtracting the mean.
        layout: ``"NCHW"`` or ``"NHWC"`` for the produced batch.
        dtype: ``"float32"`` (scaled and normalized as above) or ``"uint8"``: raw 0..255
            pixels, ``scale``/``mean``/``std`` ignored, for models that normalize inside the
            graph (Cast from uint8, Div by 255, Sub mean).
    """

    resize: int | tuple[int, int] | None = 256
    crop: int | tuple[int, int] | None = 224
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    layout: str = "NCHW"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "uint8"):
            raise ImageError(
                f"preprocessing dtype must be 'float32' or 'uint8', got {self.dtype!r}"
            )
        if self.layout not in ("NCHW", "NHWC"):
            raise ImageError(f"preprocessing layout must be 'NCHW' or 'NHWC', got {self.layout!r}")
        if len(self.mean) != len(self.std) or any(s == 0 for s in self.std):
            raise ImageError(f"mean {self.mean} and std {self.std} must have equal length and "
                             "non-zero std")

    @property
    def size(self) -> tuple[int, int] | None:
        """The (height, width) of a preprocessed image when it is fixed."""
        if self.crop is not None:
            return _pair(self.crop)
        if self.resize is not None and not isinstance(self.resize, int):
            return _pair(self.resize)
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the bundle manifest)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        for key in ("resize", "crop"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)
