"""Layers of a PyTorch model: resolve a target layer, and tap layers' outputs for the export.

A leaf of the PyTorch front end (torch and the exporters' errors only), shared by the export
(:mod:`exporters.torch`) and the autograd references (:mod:`exporters.torch_reference`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import ExportError

__all__ = ["TappedModel", "resolve_layer"]


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    """Return ``(dotted path, module)`` for a module or a dotted path such as ``"layer4"``."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise ExportError("target_layer is not a submodule of the model")
    try:
        return layer, model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ExportError(
            f"model has no submodule {layer!r}; its top-level children are {names}"
        ) from None

class TappedModel(nn.Module):
    """Returns (logits, activation of each tapped layer) so the export names those tensors."""

    def __init__(self, model: nn.Module, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.layers = list(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        store: dict[int, torch.Tensor] = {}
        hooks = [
            layer.register_forward_hook(lambda m, i, o, k=k: store.__setitem__(k, o))
            for k, layer in enumerate(self.layers)
        ]
        try:
            logits = self.model(x)
        finally:
            for hook in hooks:
                hook.remove()
        for k, layer in enumerate(self.layers):
            if not isinstance(store.get(k), torch.Tensor):
                raise ExportError(f"layer {layer.__class__.__name__} did not output one tensor")
        return (logits, *(store[k] for k in range(len(self.layers))))
