"""torchvision detectors for the detection tests: builders, ONNX export and a PyTorch reference.

Each builder returns a seeded, randomly initialised detector in eval mode (BatchNorm statistics
re-estimated on random inputs, see DESIGN.md) and an example image ``[3, size, size]``. The
post-processing thresholds are set so that random weights still give detections: a score
threshold of 0 and a handful of detections per image.

:func:`export` writes the whole detector, post-processing included (``TopK``, ``GatherND``,
``NonMaxSuppression`` inside an ``If``...), with the TorchScript exporter (``dynamo=False``), the
one that handles torchvision's detection models. Its outputs are named after the keys of the
detector's result dict (``boxes [K, 4]``, ``scores [K]``, ``labels [K]``; Faster R-CNN orders
them boxes, labels, scores).

:func:`reference` gives what the ONNX gradient is compared with: for detection ``k`` of the
image, ``torch.autograd`` gradients of its score with respect to the feature maps that enter
the detection head (the tensors ``model.backbone(images.tensors)`` returns, caught by a forward
hook: FPN levels for RetinaNet, FCOS and Faster R-CNN, backbone feature maps for SSDlite), and
those feature maps' values. :func:`head_inputs` finds the ONNX tensors holding the same values.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torchvision.models import detection

from exporters.graph import Graph

__all__ = [
    "DETECTORS",
    "Reference",
    "build",
    "export",
    "head_inputs",
    "output_names",
    "reference",
]

#: Side of the square example image (the detectors' transforms keep it at this size).
SIZE = 320
#: Detections kept per image (small: the tests seed one of them).
DETECTIONS = 5


@dataclass(frozen=True)
class Reference:
    """PyTorch's answer for one detection.

    Attributes:
        outputs: the detector's result for the image, in the order of its dict (numpy).
        features: the feature maps entering the detection head, ``[1, C, H, W]`` each.
        gradients: ``d scores[k] / d feature`` for each feature map (zeros where unused).
    """

    outputs: dict[str, np.ndarray]
    features: list[np.ndarray]
    gradients: list[np.ndarray]


def recalibrate(model: nn.Module, forward: Callable[[torch.Tensor], object],
                shape: tuple[int, ...], rounds: int = 2) -> None:
    """Re-estimate BatchNorm statistics by running ``forward`` in train mode on ``rounds``
    batches of 2 random inputs of ``shape`` (past the batch)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    generator = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(rounds):
            forward(torch.randn(2, *shape[1:], generator=generator))
    model.eval()


def _recalibrate(model: nn.Module, size: int, modules: Callable[[torch.Tensor], object]) -> None:
    """Re-estimate BatchNorm statistics by running ``modules`` (backbone, head) in train mode."""
    recalibrate(model, modules, (1, 3, size, size))


def _image(size: int, seed: int) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed + 1))


def build_ssdlite(seed: int = 0, size: int = SIZE) -> tuple[nn.Module, torch.Tensor]:
    """SSDlite320 MobileNetV3-Large (its transform resizes to 320x320 whatever ``size``)."""
    torch.manual_seed(seed)
    model = detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, score_thresh=0.0, topk_candidates=20,
        detections_per_img=DETECTIONS,
    )
    _recalibrate(model, 320, lambda x: model.head(list(model.backbone(x).values())))
    return model, _image(size, seed)


def _build_fpn(constructor: Callable[..., nn.Module], seed: int, size: int
               ) -> tuple[nn.Module, torch.Tensor]:
    """A one-stage ResNet-50 FPN detector of torchvision at ``size`` x ``size``."""
    torch.manual_seed(seed)
    model = constructor(
        weights=None, weights_backbone=None, min_size=size, max_size=size, score_thresh=0.0,
        topk_candidates=20, detections_per_img=DETECTIONS,
    )
    _recalibrate(model, size, model.backbone)
    return model, _image(size, seed)


def build_retinanet(seed: int = 0, size: int = SIZE) -> tuple[nn.Module, torch.Tensor]:
    """RetinaNet ResNet-50 FPN at ``size`` x ``size``."""
    return _build_fpn(detection.retinanet_resnet50_fpn, seed, size)


def build_fcos(seed: int = 0, size: int = SIZE) -> tuple[nn.Module, torch.Tensor]:
    """FCOS ResNet-50 FPN at ``size`` x ``size`` (its head uses GroupNorm)."""
    return _build_fpn(detection.fcos_resnet50_fpn, seed, size)


def build_fasterrcnn(seed: int = 0, size: int = SIZE) -> tuple[nn.Module, torch.Tensor]:
    """Faster R-CNN MobileNetV3-Large 320 FPN at ``size`` x ``size`` (RoIAlign inside)."""
    torch.manual_seed(seed)
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, min_size=size, max_size=size, box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
        box_detections_per_img=DETECTIONS,
    )
    _recalibrate(model, size, model.backbone)
    return model, _image(size, seed)


#: Builders by torchvision name.
DETECTORS: dict[str, Callable[..., tuple[nn.Module, torch.Tensor]]] = {
    "ssdlite320_mobilenet_v3_large": build_ssdlite,
    "retinanet_resnet50_fpn": build_retinanet,
    "fcos_resnet50_fpn": build_fcos,
    "fasterrcnn_mobilenet_v3_large_320_fpn": build_fasterrcnn,
}


def build(name: str, seed: int = 0, size: int = SIZE) -> tuple[nn.Module, torch.Tensor]:
    """The detector ``name`` of :data:`DETECTORS` and its example image."""
    return DETECTORS[name](seed=seed, size=size)


def output_names(model: nn.Module, image: torch.Tensor) -> list[str]:
    """Keys of the detector's result dict, in order (the names the export gives its outputs)."""
    with torch.no_grad():
        return list(model([image])[0])


def export(model: nn.Module, path: str | Path, size: int = SIZE, opset: int = 17) -> float:
    """Export ``model`` (one ``[3, size, size]`` image in, its result dict out) to ``path``.

    The outputs are named after the result dict's keys. Returns the export time in seconds.
    """
    image = _image(size, 0)
    names = output_names(model, image)
    start = time.perf_counter()
    torch.onnx.export(
        model, ([image],), str(path), dynamo=False, opset_version=opset,
        input_names=["image"], output_names=names,
    )
    return time.perf_counter() - start


def reference(model: nn.Module, image: torch.Tensor, k: int = 0,
              dtype: torch.dtype = torch.float32) -> Reference:
    """PyTorch gradients of ``scores[k]`` with respect to the head's input feature maps.

    ``dtype=torch.float64`` runs a float64 copy of the model (an arbiter for float32 noise).
    """
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
        image = image.to(dtype)
    store: dict[str, list[torch.Tensor]] = {}

    def hook(module: nn.Module, args: object, output: dict[str, torch.Tensor]) -> None:
        store["features"] = list(output.values())

    handle = model.backbone.register_forward_hook(hook)
    try:
        result = model([image])[0]
    finally:
        handle.remove()
    features = store["features"]
    score = result["scores"][k]
    grads = torch.autograd.grad(score, features, allow_unused=True)
    return Reference(
        outputs={key: value.detach().numpy() for key, value in result.items()},
        features=[f.detach().numpy() for f in features],
        gradients=[
            np.zeros(f.shape, dtype=f.detach().numpy().dtype) if g is None else g.numpy()
            for f, g in zip(features, grads, strict=True)
        ],
    )


def head_inputs(model: onnx.ModelProto, image: np.ndarray,
                features: Sequence[np.ndarray], atol: float = 1e-4) -> list[str]:
    """Names of the ONNX tensors holding ``features`` (the head's inputs), found by value.

    Candidates are the rank-4 float tensors of the graph (node outputs); each feature map takes
    the first candidate with its shape and values (within ``atol`` relative to its scale).
    """
    graph = Graph(model, infer=True)
    candidates = [
        o for node in model.graph.node if node.op_type not in ("Constant", "Identity")
        for o in node.output if o and graph.is_float(o) and graph.rank(o) == 4
    ]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in candidates)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(candidates, {model.graph.input[0].name: image})
    found = []
    for feature in features:
        scale = float(np.abs(feature).max()) or 1.0
        for name, value in zip(candidates, values, strict=True):
            if value.shape == feature.shape and np.abs(value - feature).max() <= atol * scale:
                found.append(name)
                break
        else:
            raise LookupError(f"no ONNX tensor holds the feature map of shape {feature.shape}")
    return found
