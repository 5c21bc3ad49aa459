"""Segmenters, text recognizers and an image encoder for the dense-task validation tests:
builders, ONNX export and a PyTorch autograd reference at the tensor the bundle is cut at.

Each builder returns a :class:`Case`: a seeded, randomly initialised model in eval mode
(BatchNorm statistics re-estimated on random inputs, as :mod:`detection_models` does), the
function that gives the tensor the export explains (``logits``: the scores before a final
Sigmoid/Softmax/LogSoftmax, which the export looks through) and an example input.

* torchvision's ``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large`` and
  ``fcn_resnet50`` (their ``out`` map ``[N, C, H, W]``);
* Hugging Face's ``SegformerForSemanticSegmentation`` from a tiny config (``logits``
  ``[N, C, H/4, W/4]``);
* a DBNet-style text detector: conv backbone, a neck adding two scales, a module ``head``
  ending in a Sigmoid (``[N, 1, H, W]``);
* a CRNN text recognizer: a CNN collapsing the height to 1, a bidirectional LSTM or GRU, a
  Linear and a log-softmax (``[T, N, V]``);
* a CLIP-like image encoder: a small CNN, global pooling and a linear projection (``[N, D]``).

:func:`export` writes a model with the TorchScript exporter (``dynamo=False``; torchvision's
segmenters export their result dict as the outputs ``out`` (and ``aux``)).

:func:`references` gives what the ONNX gradient is compared with. The cut tensors are found
by value: every float tensor a module of the model reads or returns is caught by forward hooks,
and each ONNX tensor named in the manifest (its value from a run of the original ONNX file with
that tensor added as an output, :func:`onnx_values`) takes the first caught tensor of its shape
and values (:func:`locate` on the float32 model; :func:`references` on a float64 copy, kept on
the :class:`Case`). ``torch.autograd.grad`` of each score (a function of the explained tensor)
with respect to those tensors gives the gradients, total derivatives as a hook in torch gives
them. The in-place activations of the torch models are switched off (an in-place ReLU would
overwrite the caught tensor).

:func:`components` (8-connected regions) and :func:`ctc_greedy` (greedy CTC decoding) say what
the targets are independently of the runtime; :func:`choose_threshold` picks a DBNet
threshold that gives a few regions on the example image.
"""

from __future__ import annotations

import copy
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from detection_models import recalibrate
from torch import nn

__all__ = [
    "SEGMENTERS",
    "Case",
    "Reference",
    "build_clip_like",
    "build_crnn",
    "build_dbnet",
    "build_segformer",
    "build_torchvision",
    "choose_threshold",
    "components",
    "ctc_greedy",
    "export",
    "gradcam",
    "layercam",
    "locate",
    "module_inputs",
    "onnx_values",
    "reference",
    "references",
    "relative_error",
]

#: torchvision's segmenters the tests build, with a seed whose random weights predict several
#: classes on the example image (DeepLabV3's seed 0 predicts one class everywhere)
SEGMENTERS = {"deeplabv3_mobilenet_v3_large": 1, "lraspp_mobilenet_v3_large": 0,
              "fcn_resnet50": 0}


@dataclass
class Case:
    """A model to export and explain.

    Attributes:
        model: the module torch.onnx exports (eval mode).
        logits: ``(model, x) -> the explained tensor`` (the scores before the output's final
            activation, or the output itself), through the same modules as the forward.
        image: an example input ``[1, 3, H, W]`` (float32).
        output_names: the names the export gives the outputs (None: torch.onnx's).
    """

    model: nn.Module
    logits: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    image: torch.Tensor
    output_names: list[str] | None = None
    #: copies of ``model`` in other dtypes (made on first use)
    copies: dict[torch.dtype, nn.Module] = field(default_factory=dict)

    def model_in(self, dtype: torch.dtype) -> nn.Module:
        """The model in ``dtype`` (a copy, kept)."""
        if dtype == torch.float32:
            return self.model
        if dtype not in self.copies:
            self.copies[dtype] = copy.deepcopy(self.model).to(dtype)
        return self.copies[dtype]


@dataclass(frozen=True)
class Reference:
    """torch's answer for one score.

    Attributes:
        logits: the explained tensor (float64, numpy).
        score: the score's value.
        features: the caught tensors matching the ONNX tensors, in their order (float64).
        gradients: ``d score / d feature`` for each (zeros where unused).
    """

    logits: np.ndarray
    score: float
    features: list[np.ndarray]
    gradients: list[np.ndarray]


# --- CAM formulas ----------------------------------------------------------------------------
def layercam(gradient: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """LayerCAM of one image: ``ReLU(sum_k ReLU(g^k) A^k)`` from ``[C, h, w]`` arrays."""
    return np.maximum((np.maximum(gradient, 0) * activation).sum(axis=0), 0)


def gradcam(gradient: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """Grad-CAM of one image: ``ReLU(sum_k mean(g^k) A^k)`` from ``[C, h, w]`` arrays."""
    return np.maximum((gradient.mean(axis=(1, 2))[:, None, None] * activation).sum(axis=0), 0)


def relative_error(ours: np.ndarray, expected: np.ndarray) -> float:
    """Relative L2 distance; the largest absolute value of ``ours`` where ``expected`` is 0."""
    scale = float(np.linalg.norm(expected))
    if scale == 0.0:
        return float(np.abs(ours).max(initial=0.0))
    return float(np.linalg.norm(ours.astype(np.float64) - expected) / scale)


# --- builders --------------------------------------------------------------------------------
def _no_inplace(model: nn.Module) -> None:
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False


def _recalibrate(model: nn.Module, shape: tuple[int, ...], forward: Callable[[torch.Tensor], Any]
                 ) -> None:
    """Re-estimate BatchNorm statistics by running ``forward`` in train mode on random inputs
    (random weights with the default statistics give degenerate maps); as the detector models'
    :func:`detection_models.recalibrate`, at any input shape."""
    recalibrate(model, forward, shape, rounds=1)


def _image(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed + 1))


def build_torchvision(name: str, seed: int | None = None, size: int = 64, classes: int = 4
                      ) -> Case:
    """One of :data:`SEGMENTERS` with ``classes`` classes (``seed``: its seed there), its
    ``out`` map explained."""
    from torchvision.models import segmentation

    seed = SEGMENTERS[name] if seed is None else seed
    torch.manual_seed(seed)
    model = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=classes)
    _no_inplace(model)
    _recalibrate(model, (1, 3, size, size), model)
    return Case(model, lambda m, x: m(x)["out"], _image((1, 3, size, size), seed))


def build_segformer(seed: int = 0, size: int = 64, classes: int = 3) -> Case:
    """A two-stage Segformer (hidden sizes 8, 16); its ``logits`` are ``[N, C, H/4, W/4]``."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
        hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
        mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=classes,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0,
        classifier_dropout_prob=0.0,
    )
    model = SegformerForSemanticSegmentation(config)
    with torch.no_grad():  # logits in a trained model's range: with HF's initialisation all
        # of them lie in [0, 1] on the export's zero-image probe, read as probabilities
        model.decode_head.classifier.weight.mul_(50.0)
        model.decode_head.classifier.bias.copy_(torch.tensor([0.5, -1.0, 0.0])[:classes])
    _no_inplace(model)
    _recalibrate(model, (1, 3, size, size), model)
    return Case(model, lambda m, x: m(x).logits, _image((1, 3, size, size), seed), ["logits"])


class _ConvBnRelu(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class DBNet(nn.Module):
    """DBNet-style text detector: a backbone with maps at strides 4 and 8, a neck that adds
    the upsampled stride-8 map to the stride-4 one (FPN-like), and the probability head
    (``head``): Conv3x3-BN-ReLU-ConvTranspose-BN-ReLU-ConvTranspose-Sigmoid, ``[N, 1, H, W]``.
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(_ConvBnRelu(3, width, 2), _ConvBnRelu(width, width, 2))
        self.stage = _ConvBnRelu(width, 2 * width, 2)
        self.lateral4 = nn.Conv2d(width, width, 1)
        self.lateral8 = nn.Conv2d(2 * width, width, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, width, 2, 2), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 2, 2), nn.Sigmoid(),
        )

    def neck(self, x: torch.Tensor) -> torch.Tensor:
        c4 = self.stem(x)
        c8 = self.stage(c4)
        return self.lateral4(c4) + self.up(self.lateral8(c8))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The scores before the head's Sigmoid."""
        return self.head[:-1](self.neck(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(x))


def bars(size: int = 64, seed: int = 0) -> torch.Tensor:
    """A dark noisy image ``[1, 3, size, size]`` with three bright horizontal bars (text
    lines)."""
    image = 0.1 * _image((1, 3, size, size), seed)
    for top, left, right in ((size // 8, size // 8, size // 2),
                             (size // 2, size // 4, 7 * size // 8),
                             (3 * size // 4, size // 16, 5 * size // 8)):
        image[..., top : top + size // 10, left:right] = 1.0
    return image


def build_dbnet(seed: int = 0, size: int = 64) -> Case:
    """:class:`DBNet` and an image of bright bars (:func:`bars`)."""
    torch.manual_seed(seed)
    model = DBNet()
    with torch.no_grad():  # a smooth map, not a random 2x2 checkerboard: each transposed
        for i in (3, 6):  # convolution spreads a pixel evenly over its 2 x 2 block
            w = model.head[i].weight
            w.copy_(w.mean(dim=(2, 3), keepdim=True).expand_as(w))
        model.head[6].weight.mul_(-8.0)  # high on the bars (random weights: low there)
    _recalibrate(model, (1, 3, size, size), model)
    return Case(model, lambda m, x: m.logits(x), bars(size, seed), ["probabilities"])


class CRNN(nn.Module):
    """CNN (height 16 -> 1, width /4) -> ``[T, N, C]`` -> bidirectional LSTM/GRU -> Linear ->
    log-softmax over V, as CTC log-probabilities ``[T, N, V]``."""

    def __init__(self, rnn: str = "LSTM", width: int = 8, hidden: int = 6, vocabulary: int = 6
                 ) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            _ConvBnRelu(3, width), nn.MaxPool2d(2),  # 8 x W/2
            _ConvBnRelu(width, width), nn.MaxPool2d(2),  # 4 x W/4
            _ConvBnRelu(width, width), nn.MaxPool2d((4, 1)),  # 1 x W/4
        )
        self.rnn = getattr(nn, rnn)(width, hidden, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, vocabulary)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The per-timestep scores ``[T, N, V]`` before the log-softmax."""
        f = self.cnn(x).squeeze(2).permute(2, 0, 1)  # [T, N, C]
        y, _ = self.rnn(f)
        return self.fc(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits(x), dim=-1)


def glyphs(height: int = 16, width: int = 64, seed: int = 0) -> torch.Tensor:
    """A text-line-like image ``[1, 3, height, width]``: a dark background and, in every other
    cell of 8 columns, a random pattern of bright strokes (a glyph)."""
    generator = torch.Generator().manual_seed(seed + 1)
    image = 0.05 * torch.rand(1, 3, height, width, generator=generator)
    for left in range(0, width, 16):
        strokes = torch.rand(height // 2, 3, generator=generator) > 0.5
        block = strokes.repeat_interleave(2, 0).repeat_interleave(2, 1).float()
        image[0, :, :, left + 1 : left + 7] = torch.maximum(image[0, :, :, left + 1 : left + 7],
                                                            block)
    return image


def build_crnn(rnn: str = "LSTM", seed: int = 0, height: int = 16, width: int = 64) -> Case:
    """:class:`CRNN` with an LSTM or a GRU (V = 7: the blank and 6 characters); an image of
    ``height x width`` (T = width / 4 timesteps)."""
    torch.manual_seed(seed)
    model = CRNN(rnn, vocabulary=7)
    with torch.no_grad():  # a spread of characters along the line: with the random biases
        for name, p in [*model.rnn.named_parameters(), *model.fc.named_parameters()]:
            if name.startswith("bias"):  # one class wins at every timestep
                p.zero_()
        for name, p in model.rnn.named_parameters():
            if name.startswith("weight_ih"):
                p.mul_(3.0)
        model.fc.weight.mul_(8.0)
    _recalibrate(model, (1, 3, height, width), model)
    return Case(model, lambda m, x: m.logits(x), glyphs(height, width, seed), ["log_probs"])


class ClipLike(nn.Module):
    """A CLIP-like image encoder: convs, global average pooling, a linear projection to a
    ``[N, D]`` embedding."""

    def __init__(self, width: int = 8, dim: int = 8) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_ConvBnRelu(3, width, 2), _ConvBnRelu(width, 2 * width, 2),
                                   _ConvBnRelu(2 * width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(2 * width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.trunk(x)).flatten(1))


def build_clip_like(seed: int = 0, size: int = 32, dim: int = 8) -> Case:
    """:class:`ClipLike` with a ``dim``-dimensional embedding."""
    torch.manual_seed(seed)
    model = ClipLike(dim=dim)
    _recalibrate(model, (1, 3, size, size), model)
    return Case(model, lambda m, x: m(x), _image((1, 3, size, size), seed), ["embedding"])


# --- export ----------------------------------------------------------------------------------
def export(case: Case, path: str | Path, opset: int = 17) -> Path:
    """Export ``case.model`` at its example input's size (TorchScript exporter); the input is
    named ``image``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(case.model, (case.image,), str(path), dynamo=False,
                          opset_version=opset, input_names=["image"],
                          output_names=case.output_names)
    return Path(path)


def onnx_values(path: str | Path, x: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
    """The values of tensors ``names`` of the ONNX file for input ``x`` (added as outputs)."""
    model = onnx.load(str(path))
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names
                              if n not in present)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(list(names), {model.graph.input[0].name: x})


# --- the reference ---------------------------------------------------------------------------
def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _caught(case: Case, model: nn.Module, x: torch.Tensor
            ) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """(the explained tensor, every float tensor a module read or returned, in call order)."""
    caught: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        def before(m: nn.Module, args: Any, name: str = name) -> None:
            caught.extend((f"{name or 'model'}:in", t) for t in _tensors(args))

        def after(m: nn.Module, args: Any, out: Any, name: str = name) -> None:
            caught.extend((f"{name or 'model'}:out", t) for t in _tensors(out))

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        logits = case.logits(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, [(n, t) for n, t in caught if t.is_floating_point()]


def module_inputs(case: Case, name: str, x: torch.Tensor) -> list[np.ndarray]:
    """The float tensors module ``name`` of ``case.model`` reads in the forward of ``x``."""
    store: list[torch.Tensor] = []
    module = case.model.get_submodule(name)
    handle = module.register_forward_pre_hook(lambda m, args: store.extend(_tensors(args)))
    try:
        with torch.no_grad():
            case.logits(case.model, x)
    finally:
        handle.remove()
    return [t.numpy() for t in store if t.is_floating_point()]


def locate(case: Case, x: torch.Tensor, values: Sequence[np.ndarray], atol: float = 1e-4
           ) -> list[tuple[int, str]]:
    """For each ONNX tensor value, (index, module:in/out) of the first tensor caught in the
    float32 forward with its shape and values (within ``atol`` of its largest magnitude)."""
    with torch.no_grad():
        _, caught = _caught(case, case.model, x)
    return _match(caught, values, atol)


def _match(caught: list[tuple[str, torch.Tensor]], values: Sequence[np.ndarray],
           atol: float = 1e-4) -> list[tuple[int, str]]:
    found = []
    for value in values:
        scale = float(np.abs(value).max()) or 1.0
        for index, (name, tensor) in enumerate(caught):
            if tuple(tensor.shape) != value.shape:
                continue
            t = tensor.detach().numpy()
            if np.abs(t - value).max() <= atol * scale:
                found.append((index, name))
                break
        else:
            raise LookupError(f"no tensor of the torch model holds the ONNX value of shape "
                              f"{value.shape}")
    return found


def references(case: Case, x: torch.Tensor,
               scores: Sequence[Callable[[torch.Tensor], torch.Tensor]],
               values: Sequence[np.ndarray], dtype: torch.dtype = torch.float64
               ) -> list[Reference]:
    """torch autograd of each ``score(explained tensor)`` with respect to the tensors of the
    model holding ``values`` (ONNX tensors' values for ``x``), in ``dtype`` (one forward).

    ``score`` receives the explained tensor (batch axis included) in ``dtype``.
    """
    logits, caught = _caught(case, case.model_in(dtype), x.to(dtype))
    features = [caught[i][1] for i, _ in _match(caught, values)]
    out = []
    for score in scores:
        s = score(logits)
        grads = torch.autograd.grad(s, features, allow_unused=True, retain_graph=True)
        out.append(Reference(
            logits=logits.detach().numpy(), score=float(s.detach()),
            features=[f.detach().numpy() for f in features],
            gradients=[np.zeros(f.shape) if g is None else g.numpy()
                       for f, g in zip(features, grads, strict=True)],
        ))
    return out


def reference(case: Case, x: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor],
              values: Sequence[np.ndarray], dtype: torch.dtype = torch.float64) -> Reference:
    """:func:`references` for one score."""
    return references(case, x, [score], values, dtype)[0]


# --- what the targets are, computed independently of the runtime ------------------------------
def choose_threshold(probabilities: np.ndarray, min_area: int = 4, most: int = 8,
                     margin: float = 1e-5) -> float:
    """A threshold on a ``[h, w]`` probability map, from its median up, that gives 2 to
    ``most`` connected regions of ``min_area`` pixels or more, halfway between two
    probabilities at least ``2 * margin`` apart (float32 and float64 agree on every pixel's
    side of it).

    Raises:
        ValueError: no threshold gives that.
    """
    values = np.unique(probabilities.ravel().astype(np.float64))
    median = float(np.median(probabilities))
    for i in np.nonzero(np.diff(values) > 2 * margin)[0]:
        t = float(values[i] + values[i + 1]) / 2
        if t < median:
            continue
        regions = [r for r in components(probabilities > t) if r.sum() >= min_area]
        if 2 <= len(regions) <= most:
            return t
    raise ValueError(f"no threshold gives 2 to {most} regions of {min_area} pixels or more")


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a 2-D boolean mask (a breadth-first fill), each as a
    boolean mask, in the order of their first pixel (row-major)."""
    seen = np.zeros(mask.shape, bool)
    found = []
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        region = np.zeros(mask.shape, bool)
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            i, j = queue.popleft()
            region[i, j] = True
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a, b = i + di, j + dj
                    if 0 <= a < h and 0 <= b < w and mask[a, b] and not seen[a, b]:
                        seen[a, b] = True
                        queue.append((a, b))
        found.append(region)
    return found


def ctc_greedy(logits: np.ndarray, blank: int = 0) -> list[tuple[int, list[int]]]:
    """Greedy CTC decoding of ``[T, V]`` scores: (class, timesteps) of each character (the
    best class per timestep, repeats merged, blanks dropped)."""
    best = logits.argmax(axis=-1)
    chars: list[tuple[int, list[int]]] = []
    previous = blank
    for t, v in enumerate(best.tolist()):
        if v != blank:
            if v == previous:
                chars[-1][1].append(t)
            else:
                chars.append((v, [t]))
        previous = v
    return chars
