"""PyTorch autograd references for every CAM method, written in torch independently of numpy.

:func:`reference_cams` hooks the target layer, takes ``torch.autograd.grad`` of each target
logit with respect to its output and evaluates the method's formula with torch ops; methods
that run the model again (Ablation-CAM, Score-CAM) rerun the torch model itself. The formulas
here deliberately take other algebraic routes than ``explainer.methods`` where there is one
(Grad-CAM++ in its paper form, SVD instead of a Gram eigendecomposition for the eigen methods),
so a comparison checks the formula, not a copy of it.

Needs the ``torch`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from explainer.errors import MethodError

from .torch_layers import resolve_layer

__all__ = ["REFERENCE_METHODS", "reference_cams", "reference_gradcam"]

#: rows per rerun of the torch model (Ablation-CAM, Score-CAM)
RERUN_BATCH = 64


@dataclass
class _Target:
    """One target column: what a reference formula may use."""

    model: nn.Module
    layer: nn.Module
    inputs: torch.Tensor  # [N, 3, H, W]
    activation: torch.Tensor  # [N, C, h, w], detached
    gradient: torch.Tensor  # [N, C, h, w]
    class_ids: torch.Tensor  # [N]
    logits: torch.Tensor  # [N, classes], detached


def _channel_map(weights: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    return (weights[:, :, None, None] * activation).sum(dim=1)


def _gradcam(t: _Target) -> torch.Tensor:
    return _channel_map(t.gradient.mean(dim=(2, 3)), t.activation)


def _counterfactual(t: _Target) -> torch.Tensor:
    return _channel_map((-t.gradient).mean(dim=(2, 3)), t.activation)


def _gradcam_plusplus(t: _Target) -> torch.Tensor:
    g, a = t.gradient.double(), t.activation.double()
    numerator = g**2
    denominator = 2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3
    ok = (g != 0) & (denominator != 0)
    alpha = torch.where(ok, numerator / torch.where(ok, denominator, 1.0), 0.0)
    return _channel_map((alpha * torch.relu(g)).sum(dim=(2, 3)), a)


def _xgradcam(t: _Target) -> torch.Tensor:
    a = t.activation.double()
    total = a.sum(dim=(2, 3), keepdim=True)
    share = torch.where(total != 0, a / torch.where(total != 0, total, 1.0), 0.0)
    return _channel_map((share * t.gradient).sum(dim=(2, 3)), a)


def _hirescam(t: _Target) -> torch.Tensor:
    return (t.gradient * t.activation).sum(dim=1)


def _gradcam_elementwise(t: _Target) -> torch.Tensor:
    return torch.relu(t.gradient * t.activation).sum(dim=1)


def _layercam(t: _Target) -> torch.Tensor:
    return (torch.relu(t.gradient) * t.activation).sum(dim=1)


def _principal_projection(maps: torch.Tensor) -> torch.Tensor:
    """Per image: centered [hw, C] matrix projected on its first right singular vector (SVD),
    negated when its minimum outweighs its maximum."""
    out = []
    for m in maps.double():
        matrix = m.flatten(1).T
        centered = matrix - matrix.mean(dim=0)
        _, _, vh = torch.linalg.svd(centered, full_matrices=False)
        p = centered @ vh[0]
        out.append(-p if p.min().abs() > p.max().abs() else p)
    return torch.stack(out).reshape(maps.shape[0], *maps.shape[2:])


def _eigencam(t: _Target) -> torch.Tensor:
    return _principal_projection(t.activation)


def _eigengradcam(t: _Target) -> torch.Tensor:
    return _principal_projection(t.gradient * t.activation)


def _cam(t: _Target) -> torch.Tensor:
    linears = [m for m in t.model.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1].in_features != t.activation.shape[1]:
        raise MethodError("reference CAM needs a model ending in one nn.Linear over the channels")
    return _channel_map(linears[-1].weight.detach()[t.class_ids], t.activation)


def _rerun(t: _Target, inputs: torch.Tensor, replacement: torch.Tensor | None) -> torch.Tensor:
    """Logits of the model on ``inputs``, the layer's output replaced when given."""
    hook = None
    if replacement is not None:
        hook = t.layer.register_forward_hook(lambda m, i, o: replacement.clone())
    try:
        with torch.no_grad():
            return t.model(inputs)
    finally:
        if hook is not None:
            hook.remove()


def _ablationcam(t: _Target) -> torch.Tensor:
    n, c = t.activation.shape[:2]
    base = t.logits.gather(1, t.class_ids[:, None]).double()  # [N, 1]
    ablated = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        for start in range(0, c, RERUN_BATCH):
            idx = torch.arange(start, min(c, start + RERUN_BATCH))
            acts = t.activation[i].repeat(len(idx), 1, 1, 1)
            acts[torch.arange(len(idx)), idx] = 0
            logits = _rerun(t, t.inputs[i : i + 1].repeat(len(idx), 1, 1, 1), acts)
            ablated[i, idx] = logits[:, t.class_ids[i]].double()
    return _channel_map((base - ablated) / base, t.activation.double())


def _scorecam(t: _Target) -> torch.Tensor:
    n, c = t.activation.shape[:2]
    scores = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        up = F.interpolate(t.activation[i : i + 1], size=t.inputs.shape[-2:], mode="bilinear",
                           align_corners=False)[0]  # [C, H, W]
        low = up.amin(dim=(1, 2), keepdim=True)
        span = up.amax(dim=(1, 2), keepdim=True) - low
        masks = torch.where(span > 0, (up - low) / torch.where(span > 0, span, 1.0), 0.0)
        for start in range(0, c, RERUN_BATCH):
            masked = t.inputs[i : i + 1] * masks[start : start + RERUN_BATCH, None]
            scores[i, start : start + RERUN_BATCH] = _rerun(t, masked, None)[:, t.class_ids[i]]
    return _channel_map(torch.softmax(scores, dim=1), t.activation.double())


#: method name -> torch formula of the map before the ReLU
REFERENCE_METHODS: dict[str, Callable[[_Target], torch.Tensor]] = {
    "gradcam": _gradcam,
    "gradcam++": _gradcam_plusplus,
    "xgradcam": _xgradcam,
    "hirescam": _hirescam,
    "gradcam-elementwise": _gradcam_elementwise,
    "layercam": _layercam,
    "eigencam": _eigencam,
    "eigengradcam": _eigengradcam,
    "counterfactual": _counterfactual,
    "cam": _cam,
    "ablationcam": _ablationcam,
    "scorecam": _scorecam,
}


def reference_cams(
    model: nn.Module,
    target_layer: nn.Module | str,
    inputs: np.ndarray | torch.Tensor,
    class_ids: np.ndarray,
    method: str = "gradcam",
) -> tuple[np.ndarray, np.ndarray]:
    """CAMs of ``method`` by PyTorch autograd: ReLU of the method's map, unnormalized.

    The hooked tensor is used as it is: when a later in-place op (DenseNet's
    ``F.relu(features, inplace=True)``) modifies it, the gradient is taken w.r.t. the modified
    tensor, which is also what the exported graph outputs. Runs in the model's dtype: a float64
    copy of the model gives a float64 reference.

    Returns:
        (cams [B, K, h, w], logits [B, C]) as numpy arrays.
    """
    if method not in REFERENCE_METHODS:
        raise MethodError(f"no PyTorch reference for CAM method {method!r}; "
                          f"available: {sorted(REFERENCE_METHODS)}")
    model = model.eval()
    _, layer = resolve_layer(model, target_layer)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    x = torch.as_tensor(np.asarray(inputs)).to(dtype)
    store: dict[str, torch.Tensor] = {}
    hook = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        hook.remove()
    activation = store["a"]
    class_ids = torch.as_tensor(np.asarray(class_ids, dtype=np.int64))
    cams = []
    for k in range(class_ids.shape[1]):
        score = logits.gather(1, class_ids[:, k : k + 1]).sum()
        (grad,) = torch.autograd.grad(score, activation, retain_graph=True)
        target = _Target(model, layer, x, activation.detach(), grad, class_ids[:, k],
                         logits.detach())
        cams.append(torch.relu(REFERENCE_METHODS[method](target)).to(dtype).detach())
    return torch.stack(cams, dim=1).numpy(), logits.detach().numpy()


def reference_gradcam(
    model: nn.Module,
    target_layer: nn.Module | str,
    inputs: np.ndarray | torch.Tensor,
    class_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM by PyTorch autograd: ``reference_cams(..., method="gradcam")``."""
    return reference_cams(model, target_layer, inputs, class_ids, "gradcam")
