"""The small seeded torch CNN the metrics' reference tests give both sides (test helper; needs
torch): the peers run it in torch, onnxcam its exported bundle on ONNX Runtime."""

from __future__ import annotations

import torch

from exporters.torch import recalibrate_batchnorm


def reference_net(size: int) -> torch.nn.Module:
    """Two conv blocks (``features``), one more (``block``), average pooling and a 10-class
    ``fc``; seeded, BatchNorm recalibrated on ``size`` x ``size`` inputs, in eval mode."""
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential()
    net.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU())
    net.block = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU())
    net.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.fc = nn.Linear(32, 10)
    return recalibrate_batchnorm(net, input_shape=(8, 3, size, size)).eval()
