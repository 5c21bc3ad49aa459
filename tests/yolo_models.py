"""YOLO detector fixtures with torch autograd references (test helper; needs torch + ultralytics).

Two detector layouts, each with seeded random weights, an ONNX export and an autograd reference:

* Ultralytics YOLOv8n / YOLO11n (:func:`build_yolo`, :func:`export_yolo`, :func:`yolo_reference`,
  :func:`yolo_onnx_names`): exported by Ultralytics' own exporter, output ``[N, 4+C, A]``
  (centre-xywh in input pixels, then class probabilities after one ``Sigmoid`` whose input is the
  pre-sigmoid class logits ``[N, C, A]``). Anchors are ordered level by level (strides 8, 16,
  32), row-major within a level: see :func:`yolo_anchor_cell`.
* A small YOLOv5-layout model (:func:`build_yolov5_like`, :func:`export_yolov5_like`,
  :func:`yolov5_reference`, :func:`yolov5_onnx_names`): a few conv layers as backbone and PAN neck,
  and a faithful YOLOv5 ``Detect`` head (3 anchors per cell, strides 8/16/32), exported with
  ``torch.onnx``; output ``[N, A, 5+C]`` (centre-xywh in pixels, objectness, class probabilities,
  all after sigmoid). Anchors are ordered level, anchor, row, column: see
  :func:`yolov5_anchor_cell`.

Random-init Ultralytics models have vanishing activations (their BatchNorm running statistics
are the identity, and each layer shrinks the signal), so :func:`build_yolo` recalibrates the
BatchNorm statistics on random images and then folds them into the convolutions, so that the
torch model and its ONNX export hold the same weights. Importing this module sets
``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=False``, ``YOLO_VERBOSE=False`` and points
``YOLO_CONFIG_DIR`` at a temporary directory, unless they are already set.

Example::

    model = build_yolo("yolov8n.yaml")
    path = export_yolo(model, tmp_path / "yolov8n.onnx", 640)
    names = yolo_onnx_names(onnx.load(path))  # features {15: '/model.15/cv2/act/Mul_output_0', ..}
    ref = yolo_reference(model, torch.rand(1, 3, 640, 640), anchor=100, cls=3)
"""

from __future__ import annotations

import atexit
import copy
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if "YOLO_CONFIG_DIR" not in os.environ:  # Ultralytics writes its settings file there on import
    _CONFIG_DIR = tempfile.mkdtemp(prefix="onnxcam-yolo-")
    os.environ["YOLO_CONFIG_DIR"] = _CONFIG_DIR
    atexit.register(shutil.rmtree, _CONFIG_DIR, ignore_errors=True)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_VERBOSE", "False")
_OMP_THREADS = os.environ.get("OMP_NUM_THREADS")  # Ultralytics sets it to 1 on import

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from ultralytics.engine.exporter import Exporter  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import patches as _patches  # noqa: E402

# Importing Ultralytics replaces PIL.Image.open process-wide (a HEIF fallback that imports
# pi_heif) and sets OMP_NUM_THREADS; the other tests of the session keep Pillow's own and the
# environment they had.
Image.open = getattr(_patches, "_image_open", Image.open)
if _OMP_THREADS is None:
    os.environ.pop("OMP_NUM_THREADS", None)
else:
    os.environ["OMP_NUM_THREADS"] = _OMP_THREADS

__all__ = [
    "YOLOV5_ANCHORS",
    "YOLOV5_STRIDES",
    "DetectorNames",
    "YoloReference",
    "YoloV5Detect",
    "YoloV5Like",
    "YoloV5Reference",
    "build_yolo",
    "build_yolov5_like",
    "export_yolo",
    "export_yolov5_like",
    "yolo_anchor_cell",
    "yolo_onnx_names",
    "yolo_reference",
    "yolov5_anchor_cell",
    "yolov5_onnx_names",
    "yolov5_reference",
]

ImgSize = int | Sequence[int]

#: YOLOv5's default anchors (width, height in input pixels), one row of 3 per stride.
YOLOV5_ANCHORS = (
    (10, 13, 16, 30, 33, 23),
    (30, 61, 62, 45, 59, 119),
    (116, 90, 156, 198, 373, 326),
)
YOLOV5_STRIDES = (8, 16, 32)


def _hw(imgsz: ImgSize) -> tuple[int, int]:
    """``imgsz`` (an int or ``(height, width)``) as ``(height, width)``."""
    if isinstance(imgsz, int):
        return imgsz, imgsz
    height, width = imgsz
    return int(height), int(width)


@dataclass
class DetectorNames:
    """ONNX tensor names of an exported detector.

    Attributes:
        features: the tensors entering the Detect head, keyed like the references (layer index
            for Ultralytics models, level 0/1/2 for the YOLOv5-like model), strides 8, 16, 32.
        output: the graph output holding the detections.
        logits: the pre-sigmoid class logits ``[N, C, A]`` (Ultralytics); ``None`` for the
            YOLOv5-like model, whose sigmoid covers all 5+C channels at once.
    """

    features: dict[int, str]
    output: str
    logits: str | None = None


# --------------------------------------------------------------------------------------------
# Ultralytics YOLOv8 / YOLO11
# --------------------------------------------------------------------------------------------


@dataclass
class YoloReference:
    """Torch autograd for one anchor's pre-sigmoid class logit of image 0.

    Attributes:
        gradients: layer index -> d logit[0, cls, anchor] / d feature, shaped like the feature
            ``[N, C, H, W]`` (total derivative: for the stride-8 input it includes the paths
            through the later levels; rows of images other than 0 are zero).
        features: layer index -> the tensor entering the Detect head ``[N, C, H, W]``.
        logits: the pre-sigmoid class logits ``[N, nc, A]``.
        output: the model's output ``[N, 4+nc, A]`` (what the ONNX export returns).
    """

    gradients: dict[int, np.ndarray]
    features: dict[int, np.ndarray]
    logits: np.ndarray
    output: np.ndarray


def _recalibrate_batchnorm(model: nn.Module, batches: int, size: int) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them on random images.

    ``momentum=None`` makes the running statistics a plain average over the batches; the model
    runs in train mode under ``no_grad`` (no weight changes) and is left in eval mode.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(4, 3, size, size))
    model.eval()


def build_yolo(
    cfg: str = "yolov8n.yaml",
    seed: int = 0,
    nc: int = 80,
    *,
    calibration_batches: int = 4,
    calibration_size: int = 256,
    class_bias: float | None = None,
) -> DetectionModel:
    """An Ultralytics detection model built from its YAML with seeded random weights.

    BatchNorm statistics are re-estimated on random uniform images (the raw init makes
    activations vanish: their std drops to ~1e-5 by the neck) and then folded into the
    convolutions (``model.fuse()``), so Ultralytics' exporter finds nothing left to fuse and the
    ONNX file holds exactly these weights. By default the class biases keep Ultralytics' prior
    init (logits around -11 at stride 8, probabilities ~1e-5), with a logit spread (std) near 1.
    ONNX Runtime's float32 ``Sigmoid`` is inaccurate that far out (relative error up to ~2e-2
    for logits in [-12, -8), ~3e-4 in [-8, -4), 4e-6 in [-4, 0)), so tests on probabilities
    rather than logits should pass ``class_bias`` (e.g. -2.0).

    Args:
        cfg: a model YAML shipped with Ultralytics, e.g. ``"yolov8n.yaml"`` or ``"yolo11n.yaml"``.
        seed: seed of the weights and of the calibration images; the global torch RNG is left
            untouched.
        nc: number of classes.
        calibration_batches: random batches (4 images each) used to estimate BatchNorm statistics.
        calibration_size: their side in pixels (a multiple of 32).
        class_bias: when given, the bias of every class logit (all levels), replacing the prior.

    Returns:
        The model in eval mode, float32, on the CPU, with ``task="detect"``.

    Raises:
        RuntimeError: the activations entering the head or the class logits have no spread.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DetectionModel(cfg, nc=nc, verbose=False).float()
        _recalibrate_batchnorm(model, calibration_batches, calibration_size)
        model.fuse(verbose=False)
        model.task = "detect"
        if class_bias is not None:
            detect = model.model[-1]
            with torch.no_grad():
                for head in detect.cv3:
                    head[-1].bias[: detect.nc] = class_bias
        model.eval()
        probe = torch.rand(1, 3, calibration_size, calibration_size)
    ref = yolo_reference(model, probe, anchor=0, cls=0)
    spreads = {f"layer {i}": float(f.std()) for i, f in ref.features.items()}
    spreads["class logits"] = float(ref.logits.std())
    if min(spreads.values()) < 0.05:
        raise RuntimeError(f"{cfg}: vanishing activations after calibration: {spreads}")
    return model


def export_yolo(
    model: DetectionModel, path: str | Path, imgsz: ImgSize = 640, opset: int | None = None
) -> Path:
    """Export ``model`` to ONNX with Ultralytics' own exporter (``format="onnx"``).

    Dynamic batch, height and width (``dynamic=True``), no onnxslim (``simplify=False``), traced
    by the legacy ``torch.onnx`` exporter as Ultralytics does. The exporter works on a deep copy;
    ``model`` is unchanged.

    Args:
        model: a model from :func:`build_yolo` (already fused).
        path: the ``.onnx`` file to write (its folder must exist).
        imgsz: tracing size, an int or ``(height, width)``, multiples of 32.
        opset: ONNX opset; ``None`` lets Ultralytics choose (18 with torch 2.14).

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"expected a .onnx path, got {path}")
    height, width = _hw(imgsz)
    overrides = {
        "format": "onnx",
        "imgsz": [height, width],
        "dynamic": True,
        "simplify": False,
        "opset": opset,
        "batch": 1,
        "device": "cpu",
    }
    # The exporter names its file after model.pt_path (else the YAML, in the working directory).
    model.pt_path = str(path)
    try:
        threads = torch.get_num_threads()  # the exporter's device selection resets them
        try:
            written = Exporter(overrides=overrides)(model)
        finally:
            torch.set_num_threads(threads)
    finally:
        del model.pt_path
    if Path(written).resolve() != path.resolve():
        raise RuntimeError(f"Ultralytics wrote {written}, expected {path}")
    return path


def yolo_reference(
    model: DetectionModel, x: torch.Tensor, anchor: int, cls: int, *, double: bool = False
) -> YoloReference:
    """Autograd gradients of the pre-sigmoid class logit ``[0, cls, anchor]`` w.r.t. the Detect
    head's inputs (the outputs of the layers in ``model.model[-1].f``), captured by forward hooks.

    Args:
        model: an Ultralytics detection model in eval mode.
        x: images ``[N, 3, H, W]`` in [0, 1].
        anchor: anchor index in ``[0, A)`` (see :func:`yolo_anchor_cell`).
        cls: class index.
        double: run a float64 copy of the model (to arbitrate float32 discrepancies).

    Returns:
        The gradients, features, logits and output, as float32 or float64 numpy arrays.
    """
    dtype = torch.float64 if double else torch.float32
    if double:
        model = copy.deepcopy(model).double()
    detect = model.model[-1]
    features: dict[int, torch.Tensor] = {}
    hooks = [
        model.model[i].register_forward_hook(lambda _m, _a, out, i=i: features.__setitem__(i, out))
        for i in detect.f
    ]
    export = detect.export
    detect.export = False  # eval mode then returns (output, raw predictions with the logits)
    try:
        with torch.enable_grad():
            image = x.detach().to(dtype).clone().requires_grad_(True)
            output, preds = model(image)
            logits = preds["scores"]
            layers = list(detect.f)
            grads = torch.autograd.grad(logits[0, cls, anchor], [features[i] for i in layers])
    finally:
        detect.export = export
        for hook in hooks:
            hook.remove()
    return YoloReference(
        gradients={i: g.detach().numpy() for i, g in zip(layers, grads, strict=True)},
        features={i: features[i].detach().numpy() for i in layers},
        logits=logits.detach().numpy(),
        output=output.detach().numpy(),
    )


def yolo_anchor_cell(
    anchor: int, imgsz: ImgSize, strides: Sequence[int] = (8, 16, 32)
) -> tuple[int, int, int]:
    """``(level, row, column)`` of an Ultralytics anchor index for an input of size ``imgsz``."""
    height, width = _hw(imgsz)
    for level, stride in enumerate(strides):
        rows, cols = height // stride, width // stride
        if anchor < rows * cols:
            return level, anchor // cols, anchor % cols
        anchor -= rows * cols
    raise IndexError("anchor index out of range")


def _producer_layer(name: str) -> int | None:
    """The Ultralytics layer index in a node name ``/model.<i>/...`` (None when absent)."""
    match = re.match(r"/model\.(\d+)/", name)
    return int(match.group(1)) if match else None


def yolo_onnx_names(model: onnx.ModelProto) -> DetectorNames:
    """Names of the Detect-head inputs and the pre-sigmoid class logits in an Ultralytics export.

    The output is ``Concat(boxes, Sigmoid(logits))``; the Detect head is the layer that
    Concat belongs to; its inputs are the tensors that its Conv nodes read from other layers
    (``/model.<i>/cv2/act/Mul_output_0`` for YOLOv8n and YOLO11n).

    Raises:
        ValueError: the graph does not have that structure.
    """
    graph = model.graph
    producer = {o: node for node in graph.node for o in node.output}
    output = graph.output[0].name
    concat = producer.get(output)
    if concat is None or concat.op_type != "Concat":
        raise ValueError(f"output {output} is not produced by a Concat")
    sigmoids = [producer[i] for i in concat.input if i in producer]
    sigmoids = [n for n in sigmoids if n.op_type == "Sigmoid"]
    if len(sigmoids) != 1:
        raise ValueError("expected one Sigmoid input of the output Concat")
    head = _producer_layer(concat.name)
    if head is None:
        raise ValueError(f"node {concat.name} is not in an Ultralytics layer")
    features: dict[int, str] = {}
    for node in graph.node:
        if node.op_type != "Conv" or _producer_layer(node.name) != head:
            continue
        source = producer.get(node.input[0])
        layer = _producer_layer(source.name) if source is not None else None
        if layer is not None and layer != head:
            if features.get(layer, node.input[0]) != node.input[0]:
                raise ValueError(f"layer {layer} feeds the head through several tensors")
            features[layer] = node.input[0]
    return DetectorNames(dict(sorted(features.items())), output, sigmoids[0].input[0])


# --------------------------------------------------------------------------------------------
# YOLOv5 layout
# --------------------------------------------------------------------------------------------


class _ConvAct(nn.Module):
    """Conv2d (with bias, ``same`` padding) + SiLU, named like Ultralytics' ``Conv``."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class YoloV5Detect(nn.Module):
    """YOLOv5's ``Detect`` head (v6/v7 decoding), inference path only.

    Per level ``i``: a 1x1 conv to ``na*(5+nc)`` channels, viewed as ``[N, na, 5+nc, H, W]`` and
    permuted to ``[N, na, H, W, 5+nc]``; then the sigmoid of everything,
    ``xy = (2*s - 0.5 + grid) * stride``, ``wh = (2*s)**2 * anchor``, objectness and class
    probabilities unchanged; the levels are flattened and concatenated to ``[N, A, 5+nc]``. The
    grid is rebuilt from the input's shape at each call (symbolic H, W in an export).
    """

    def __init__(
        self,
        nc: int,
        channels: Sequence[int],
        anchors: Sequence[Sequence[float]] = YOLOV5_ANCHORS,
        strides: Sequence[int] = YOLOV5_STRIDES,
    ) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.strides = tuple(int(s) for s in strides)
        self.register_buffer(
            "anchor_grid", torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2)
        )
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)

    def initialize_biases(self, image_size: int = 640) -> None:
        """YOLOv5's prior: objectness ~8 objects per 640 image, class probability ~0.6/nc."""
        with torch.no_grad():
            for conv, stride in zip(self.m, self.strides, strict=True):
                bias = conv.bias.view(self.na, -1)
                bias[:, 4] += math.log(8 / (image_size / stride) ** 2)
                bias[:, 5:] += math.log(0.6 / (self.nc - 0.99))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        z = []
        for i in range(self.nl):
            p = self.m[i](x[i])
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            yv, xv = torch.meshgrid(
                torch.arange(ny, dtype=p.dtype), torch.arange(nx, dtype=p.dtype), indexing="ij"
            )
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
            anchor_grid = self.anchor_grid[i].to(p.dtype).view(1, self.na, 1, 1, 2)
            xy, wh, conf = p.sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + grid) * self.strides[i]
            wh = (wh * 2) ** 2 * anchor_grid
            z.append(torch.cat((xy, wh, conf), 4).view(bs, -1, self.no))
        return torch.cat(z, 1)


class YoloV5Like(nn.Module):
    """A small YOLOv5-layout detector: 5 strided convs (strides 2..32), a PAN neck, YOLOv5 Detect.

    The neck goes top-down (nearest 2x upsampling, concat) then bottom-up (strided convs), like
    YOLOv5's; its outputs ``out3``, ``out4``, ``out5`` (strides 8, 16, 32) enter the head. The
    Resize nodes of the upsampling are upstream of those three tensors, so the gradients from the
    head to them need only Conv/Sigmoid/Mul/Concat/shape ops.
    """

    def __init__(self, nc: int = 80, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = _ConvAct(3, w, 3, 2)
        self.b1 = _ConvAct(w, 2 * w, 3, 2)
        self.b2 = _ConvAct(2 * w, 2 * w, 3, 2)  # P3, stride 8
        self.b3 = _ConvAct(2 * w, 4 * w, 3, 2)  # P4, stride 16
        self.b4 = _ConvAct(4 * w, 4 * w, 3, 2)  # P5, stride 32
        self.lat5 = _ConvAct(4 * w, 2 * w, 1, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = _ConvAct(2 * w + 4 * w, 2 * w, 3, 1)
        self.lat4 = _ConvAct(2 * w, w, 1, 1)
        self.out3 = _ConvAct(w + 2 * w, 2 * w, 3, 1)
        self.down3 = _ConvAct(2 * w, w, 3, 2)
        self.out4 = _ConvAct(w + w, 4 * w, 3, 1)
        self.down4 = _ConvAct(4 * w, 2 * w, 3, 2)
        self.out5 = _ConvAct(2 * w + 2 * w, 4 * w, 3, 1)
        self.detect = YoloV5Detect(nc, (2 * w, 4 * w, 4 * w))

    def neck(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three tensors entering the head, strides 8, 16, 32."""
        p3 = self.b2(self.b1(self.stem(x)))
        p4 = self.b3(p3)
        p5 = self.b4(p4)
        l5 = self.lat5(p5)
        l4 = self.lat4(self.td4(torch.cat((self.up(l5), p4), 1)))
        o3 = self.out3(torch.cat((self.up(l4), p3), 1))
        o4 = self.out4(torch.cat((self.down3(o3), l4), 1))
        o5 = self.out5(torch.cat((self.down4(o4), l5), 1))
        return [o3, o4, o5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detect(self.neck(x))


@dataclass
class YoloV5Reference:
    """Torch autograd for one detection of image 0 of a YOLOv5-layout model.

    Attributes:
        conf_gradients: level -> d(obj * cls_prob) / d feature (YOLOv5's NMS score),
            shaped ``[N, C, H, W]``.
        cls_gradients: level -> d cls_prob / d feature.
        features: level -> the tensor entering the head ``[N, C, H, W]`` (strides 8, 16, 32).
        output: the model's output ``[N, A, 5+nc]``.
    """

    conf_gradients: dict[int, np.ndarray]
    cls_gradients: dict[int, np.ndarray]
    features: dict[int, np.ndarray]
    output: np.ndarray


def build_yolov5_like(
    seed: int = 0, nc: int = 80, width: int = 16, *, bias_prior: bool = True
) -> YoloV5Like:
    """A :class:`YoloV5Like` with seeded random weights, eval mode, float32.

    Each conv's weights are rescaled in forward order (LSUV) so that its output, bias excluded,
    has unit std on random images. The head's biases are zero, plus YOLOv5's prior when
    ``bias_prior`` (objectness ~1e-3 at stride 8, class probability ~0.007 for 80 classes; logits
    near -6, where ONNX Runtime's float32 Sigmoid has relative errors up to ~3e-4). The global
    torch RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = YoloV5Like(nc, width).eval()
        images = torch.rand(4, 3, 128, 128)
        for conv in [m for m in model.modules() if isinstance(m, nn.Conv2d)]:
            seen: list[torch.Tensor] = []
            hook = conv.register_forward_hook(lambda _m, _a, out, seen=seen: seen.append(out))
            with torch.no_grad():
                model(images)
                hook.remove()
                out = seen[0] - conv.bias.view(1, -1, 1, 1)
                conv.weight.mul_(1.0 / float(out.std()))
                if conv in model.detect.m:
                    conv.bias.zero_()
        if bias_prior:
            model.detect.initialize_biases()
    return model


def export_yolov5_like(
    model: YoloV5Like, path: str | Path, imgsz: ImgSize = 640, opset: int = 18
) -> Path:
    """Export with the legacy ``torch.onnx`` exporter (``dynamo=False``), as YOLOv5's export.py.

    Input ``images [batch, 3, height, width]``, output ``output0 [batch, anchors, 5+nc]``, all
    four dims symbolic; node names follow the module paths (``/out3/act/Mul``...).
    """
    path = Path(path)
    height, width = _hw(imgsz)
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, height, width),),
        str(path),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={
            "images": {0: "batch", 2: "height", 3: "width"},
            "output0": {0: "batch", 1: "anchors"},
        },
        opset_version=opset,
        dynamo=False,
    )
    return path


def yolov5_reference(
    model: YoloV5Like, x: torch.Tensor, anchor: int, cls: int, *, double: bool = False
) -> YoloV5Reference:
    """Autograd gradients of detection ``anchor`` of image 0 w.r.t. the head's three inputs: of
    its confidence ``obj * p_cls`` (``output[0, anchor, 4] * output[0, anchor, 5 + cls]``) and of
    the class probability ``output[0, anchor, 5 + cls]`` alone.

    Args:
        model: a :class:`YoloV5Like` in eval mode.
        x: images ``[N, 3, H, W]``.
        anchor: detection index in ``[0, A)`` (see :func:`yolov5_anchor_cell`).
        cls: class index.
        double: run a float64 copy of the model.
    """
    dtype = torch.float64 if double else torch.float32
    if double:
        model = copy.deepcopy(model).double()
    captured: list[torch.Tensor] = []
    hook = model.detect.register_forward_pre_hook(lambda _m, args: captured.extend(args[0]))
    try:
        with torch.enable_grad():
            image = x.detach().to(dtype).clone().requires_grad_(True)
            output = model(image)
            prob = output[0, anchor, 5 + cls]
            conf = output[0, anchor, 4] * prob
            conf_grads = torch.autograd.grad(conf, captured, retain_graph=True)
            cls_grads = torch.autograd.grad(prob, captured)
    finally:
        hook.remove()
    return YoloV5Reference(
        conf_gradients={k: g.detach().numpy() for k, g in enumerate(conf_grads)},
        cls_gradients={k: g.detach().numpy() for k, g in enumerate(cls_grads)},
        features={k: f.detach().numpy() for k, f in enumerate(captured)},
        output=output.detach().numpy(),
    )


def yolov5_anchor_cell(
    anchor: int, imgsz: ImgSize, strides: Sequence[int] = YOLOV5_STRIDES, na: int = 3
) -> tuple[int, int, int, int]:
    """``(level, anchor box, row, column)`` of a YOLOv5 detection index for an input ``imgsz``."""
    height, width = _hw(imgsz)
    for level, stride in enumerate(strides):
        rows, cols = height // stride, width // stride
        if anchor < na * rows * cols:
            box, cell = divmod(anchor, rows * cols)
            return level, box, cell // cols, cell % cols
        anchor -= na * rows * cols
    raise IndexError("anchor index out of range")


def yolov5_onnx_names(model: onnx.ModelProto) -> DetectorNames:
    """Names of the three tensors entering the head (the inputs of ``/detect/m.<i>/Conv``)."""
    features = {}
    for node in model.graph.node:
        match = re.fullmatch(r"/detect/m\.(\d+)/Conv", node.name)
        if match and node.op_type == "Conv":
            features[int(match.group(1))] = node.input[0]
    if sorted(features) != [0, 1, 2]:
        raise ValueError(f"head convolutions not found: {features}")
    return DetectorNames(dict(sorted(features.items())), model.graph.output[0].name)
