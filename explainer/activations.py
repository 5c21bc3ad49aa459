"""Activation layouts: what the CAM pipeline sees is always channels-first, ``[N, C, h, w]``.

A bundle's target records the layout of its activation:

* ``"NCHW"``: convolutional feature maps, as they are;
* ``"NHWC"``: channels-last maps (TensorFlow/Keras conversions, Swin), transposed;
* ``"NLC"``: transformer tokens ``[N, L, C]``; the first ``prefix_tokens`` tokens (class and
  distillation tokens) are dropped and the rest reshaped to the ``token_grid`` ``(h, w)``,
  row-major, as patch embeddings are laid out (pytorch-grad-cam's ``reshape_transform``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import BundleError

__all__ = ["LAYOUTS", "from_channels_first", "infer_token_grid", "to_channels_first"]

#: the activation layouts the runtime understands
LAYOUTS = ("NCHW", "NHWC", "NLC")


def infer_token_grid(
    tokens: int, image_size: Sequence[int] | None = None, max_prefix: int = 8
) -> tuple[tuple[int, int], int]:
    """The ``(h, w)`` grid and the number of prefix tokens of ``tokens`` transformer tokens.

    The fewest prefix tokens whose remainder forms a grid with the image's aspect ratio
    (square when the image size is unknown): 197 tokens at 224x224 are 1 class token and
    14 x 14 patches; 198 are 2 prefix tokens (DeiT's class and distillation tokens).

    Raises:
        BundleError: no grid fits; pass ``token_grid`` and ``prefix_tokens`` explicitly.
    """
    ratio = image_size[0] / image_size[1] if image_size else 1.0
    for prefix in range(0, min(max_prefix, tokens - 1) + 1):
        count = tokens - prefix
        h = int(round((count * ratio) ** 0.5))
        if h > 0 and count % h == 0 and abs(h / (count // h) - ratio) < 0.25 * ratio:
            if count // h > 1 or h > 1:
                return (h, count // h), prefix
    raise BundleError(
        f"cannot tell the token grid of {tokens} tokens; pass token_grid=(h, w) and "
        "prefix_tokens=n"
    )


def to_channels_first(
    activation: np.ndarray, gradient: np.ndarray, target: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Activation [N, ...] and gradients [N, K, ...] in the target's layout -> [N, C, h, w] and
    [N, K, C, h, w].

    Args:
        activation: the activation as the features graph gives it.
        gradient: its gradients for K targets, the target axis second.
        target: the manifest's ``target`` entry (``layout``, and for ``"NLC"``
            ``token_grid`` and ``prefix_tokens``).
    """
    layout = target["layout"]
    if layout == "NCHW":
        return activation, gradient
    if layout == "NHWC":
        return activation.transpose(0, 3, 1, 2), gradient.transpose(0, 1, 4, 2, 3)
    if layout != "NLC":
        raise BundleError(f"activation layout {layout!r} is not one of {LAYOUTS}")
    h, w = target["token_grid"]
    prefix = int(target.get("prefix_tokens", 0))
    if activation.shape[1] - prefix != h * w:
        raise BundleError(
            f"the activation has {activation.shape[1]} tokens; the bundle's grid {h}x{w} plus "
            f"{prefix} prefix token(s) needs {h * w + prefix}"
        )
    a = activation[:, prefix:].reshape(activation.shape[0], h, w, -1).transpose(0, 3, 1, 2)
    g = gradient[:, :, prefix:].reshape(*gradient.shape[:2], h, w, -1).transpose(0, 1, 4, 2, 3)
    return a, g


def from_channels_first(
    activation: np.ndarray, target: dict[str, Any], original: np.ndarray | None = None
) -> np.ndarray:
    """The inverse of :func:`to_channels_first` for an activation alone: [N, C, h, w] -> the
    target's layout.

    Args:
        activation: [N, C, h, w].
        target: the manifest entry of the layer (``layout``, token fields).
        original: for ``"NLC"`` with prefix tokens, the activation [N, L, C] whose prefix
            tokens (class, distillation) are kept as they were.

    Raises:
        BundleError: a token layout with prefix tokens and no ``original``.
    """
    layout = target["layout"]
    if layout == "NCHW":
        return activation
    if layout == "NHWC":
        return activation.transpose(0, 2, 3, 1)
    if layout != "NLC":
        raise BundleError(f"activation layout {layout!r} is not one of {LAYOUTS}")
    n, c = activation.shape[:2]
    tokens = activation.transpose(0, 2, 3, 1).reshape(n, -1, c)
    prefix = int(target.get("prefix_tokens", 0))
    if prefix == 0:
        return tokens
    if original is None:
        raise BundleError("replacing a token activation needs its prefix tokens (original=)")
    return np.concatenate([original[:, :prefix], tokens], axis=1)
