"""How images become model inputs: the :class:`Preprocessing` recorded in a bundle's manifest.

Plain data (no Pillow), so the exporters can record it without loading the image stack.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .errors import ImageError, InputError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing", "check_batch",
           "complete_preprocessing"]

log = logging.getLogger(__name__)

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
        letterbox: detectors' resize (Ultralytics' ``LetterBox``) instead of ``resize`` and
            ``crop``: the image is scaled to fit, keeping its aspect ratio, and padded with
            ``pad_value`` equally on both sides. A pair ``(h, w)`` pads to exactly that size;
            an int scales the longer side to it and pads each side only up to a multiple of
            ``stride`` (for models that take any size).
        pad_value: the grey level of the letterbox padding (Ultralytics: 114).
        stride: the multiple an int ``letterbox`` pads the image size to.
        letterbox_align: ``"center"`` (Ultralytics: padding split between both sides) or
            ``"topleft"`` (YOLOX: the image at the top left, padding right and below).
        channels: ``"RGB"`` or ``"BGR"`` (models converted from OpenCV or Caffe pipelines).
    """

    resize: int | tuple[int, int] | None = 256
    crop: int | tuple[int, int] | None = 224
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    layout: str = "NCHW"
    dtype: str = "float32"
    letterbox: int | tuple[int, int] | None = None
    pad_value: int = 114
    stride: int = 32
    letterbox_align: str = "center"
    channels: str = "RGB"

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
        if self.channels not in ("RGB", "BGR"):
            raise ImageError(f"preprocessing channels must be 'RGB' or 'BGR', got "
                             f"{self.channels!r}")
        if self.letterbox_align not in ("center", "topleft"):
            raise ImageError(f"letterbox_align must be 'center' or 'topleft', got "
                             f"{self.letterbox_align!r}")
        if self.letterbox is not None:
            if self.resize is not None or self.crop is not None:
                raise ImageError("letterbox replaces resize and crop; set resize and crop to "
                                 f"None (got resize={self.resize}, crop={self.crop})")
            sizes = _pair(self.letterbox)
            if min(sizes) < 1 or self.stride < 1 or not 0 <= self.pad_value <= 255:
                raise ImageError(f"letterbox {self.letterbox}, stride {self.stride} and pad "
                                 f"value {self.pad_value} must be positive (pad value 0..255)")

    @property
    def size(self) -> tuple[int, int] | None:
        """The (height, width) of a preprocessed image when it is fixed."""
        if self.letterbox is not None:
            return None if isinstance(self.letterbox, int) else _pair(self.letterbox)
        if self.crop is not None:
            return _pair(self.crop)
        if self.resize is not None and not isinstance(self.resize, int):
            return _pair(self.resize)
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the bundle manifest)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Preprocessing | None = None) -> Preprocessing:
        """Inverse of :meth:`to_dict`. Keys ``data`` leaves out come from ``base`` when given
        (else the defaults above); a ``letterbox`` it sets clears ``base``'s resize and crop,
        and a resize or crop it sets clears ``base``'s letterbox."""
        data = dict(data)
        if base is not None:
            fill = base.to_dict()
            if data.get("letterbox") is not None:
                fill.update(resize=None, crop=None)
            elif "resize" in data or "crop" in data:
                fill["letterbox"] = None
            data = {**fill, **data}
        for key in ("resize", "crop", "letterbox"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


#: keys that only say how pixels are ordered and typed: a preprocessing given as just these
#: still takes its sizes and normalization from the model's default
_ORDER_KEYS = frozenset({"channels", "layout", "dtype"})


def complete_preprocessing(
    given: Preprocessing | dict[str, Any] | None,
    layout: str,
    guess: Callable[[], Preprocessing | None],
) -> tuple[Preprocessing | None, bool]:
    """The preprocessing a bundle records for a model input of ``layout`` (NCHW or NHWC).

    Args:
        given: None (the model's default, ``guess()``), a dict (a JSON ``--preprocessing``:
            the keys it leaves out come from ``guess()``, or the defaults of
            :class:`Preprocessing` where the model has none; ``"layout"`` left out is the
            model's), or a :class:`Preprocessing` (as it is).
        layout: the model input's layout. The batch must have it: a preprocessing that says
            otherwise is given it, with a warning.
        guess: the model's default preprocessing (None where none fits, e.g. 1-channel inputs).

    Returns:
        (the preprocessing or None, whether its sizes and normalization were guessed: nothing
        given, or a dict of only ``channels``/``layout``/``dtype``).
    """
    if given is None:
        pre = guess()
        return pre, pre is not None
    if isinstance(given, Preprocessing):
        pre, guessed = given, False
    else:
        data = dict(given)
        guessed = not set(data) - _ORDER_KEYS
        data.setdefault("layout", layout)
        pre = Preprocessing.from_dict(data, base=guess())
    if pre.layout != layout:
        log.warning("the preprocessing says layout %s but the model input is %s; the batch is "
                    "made %s (pass input_layout= / --input-layout if the input is %s)",
                    pre.layout, layout, layout, pre.layout)
        pre = replace(pre, layout=layout)
    return pre, guessed


def check_batch(
    x: Any, name: str, shape: Sequence[Any], layout: str, dtype: np.dtype
) -> np.ndarray:
    """Validate a model input batch against the model input ``name`` (its ``shape``: ints
    where the model fixes a size, names where it does not; ``layout``; ``dtype``) and return it
    contiguous, cast to float32 where the model takes floats.

    Raises:
        InputError: naming the input, the expected shape and what was given.
    """
    if not isinstance(x, np.ndarray):
        raise InputError(f"input must be a numpy array, got {type(x).__name__}")
    if x.ndim != len(shape):
        raise InputError(
            f"input {name!r} expects rank {len(shape)} "
            f"{shape} ({layout}), got shape {x.shape}"
        )
    for axis, (want, got) in enumerate(zip(shape, x.shape)):
        if isinstance(want, int) and axis > 0 and want != got:
            raise InputError(
                f"input {name!r} expects shape {shape} "
                f"({layout}), got {list(x.shape)} (axis {axis})"
            )
    if x.shape[0] == 0:
        raise InputError("input batch is empty")
    if dtype == np.uint8:
        if x.dtype != np.uint8:
            raise InputError(
                f"input {name!r} is uint8 (the model normalizes inside the graph); "
                f"pass 0..255 pixels as uint8, got {x.dtype} (Explainer.preprocess does this)"
            )
        return np.ascontiguousarray(x)
    if x.dtype != np.float32:
        if x.dtype.kind != "f":
            raise InputError(f"input must be float32, got {x.dtype}")
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError("input contains NaN or infinite values")
    return np.ascontiguousarray(x)
