"""Size-dependent padding: find where a PyTorch model computes its padding from the input size.

TensorFlow "SAME" padding written in Python makes torch.export with a symbolic height and width
slow; :func:`size_dependent_padding` finds it by running the model at two sizes.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ["size_dependent_padding"]

log = logging.getLogger(__name__)

#: torch functions whose padding argument can be computed from the input size in Python:
#: name -> (positional index, keyword) of that argument
_PADDING_ARGUMENTS = {
    "pad": (1, "pad"), "constant_pad_nd": (1, "pad"),
    "conv1d": (4, "padding"), "conv2d": (4, "padding"), "conv3d": (4, "padding"),
}


class _PaddingRecorder(torch.overrides.TorchFunctionMode):
    """Records the padding of every pad and convolution call, with the module that made it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, Any]] = []  # (module path, function, padding)
        self._path: list[str] = []
        self._hooks = []
        for name, module in model.named_modules():
            self._hooks.append(module.register_forward_pre_hook(self._enter(name)))
            self._hooks.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(module: nn.Module, args: Any) -> None:
            self._path.append(name)

        return hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._path:  # a hook returning a value would replace the module's output
            self._path.pop()

    def remove(self) -> None:
        """Remove the module hooks."""
        for hook in self._hooks:
            hook.remove()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        where = _PADDING_ARGUMENTS.get(getattr(func, "__name__", ""))
        if where is not None:
            index, keyword = where
            padding = args[index] if len(args) > index else kwargs.get(keyword)
            if not isinstance(padding, str):  # "same"/"valid" are static
                module = self._path[-1] if self._path else ""
                self.calls.append((module, func.__name__, _plain(padding)))
        return func(*args, **kwargs)


def _plain(value: Any) -> Any:
    """Ints, tuples and lists of them as plain Python values (tensors as lists)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def size_dependent_padding(model: nn.Module, example: torch.Tensor) -> str | None:
    """Say where ``model`` computes padding from its input's height and width in Python.

    TensorFlow "SAME" padding written that way (timm's ``Conv2dSame``/``pad_same``, EfficientNet
    ports' ``Conv2dDynamicSamePadding``: ``F.pad`` with amounts from ``x.shape[-2:]``) makes
    torch.export with symbolic height and width reason about nested ceilings of the sizes with
    sympy, which takes minutes (timm ``tf_efficientnet_b0`` on 2 cores: 209 s against 7 s at
    a static size, the check included) or does not end. The check runs the model twice in
    eager mode, at the example's height and width and one pixel more, and compares the padding
    arguments of every ``F.pad``, ``torch.constant_pad_nd`` and ``F.conv*d`` call (their order
    and values): padding fixed at construction time is the same at both sizes. It costs two
    forward passes of one image.

    Args:
        model: the model (in eval mode).
        example: an NCHW example input.

    Returns:
        A sentence naming the modules whose padding changes with the size, or None (also
        when the model does not run at the second size: it then fixes its size itself).
    """
    if example.ndim != 4:
        return None
    first = example[:1]
    # the same picture one pixel taller and wider (the last row and column repeated)
    second = torch.cat([first, first[:, :, -1:]], dim=2)
    second = torch.cat([second, second[:, :, :, -1:]], dim=3)
    runs = []
    for x in (first, second):
        recorder = _PaddingRecorder(model)
        try:
            with torch.no_grad(), recorder:
                model(x)
        except Exception as err:  # a model that takes one size only: nothing to detect
            log.debug("size check: %s does not run at %s: %s", type(model).__name__,
                      list(x.shape), err)
            return None
        finally:
            recorder.remove()
        runs.append(recorder.calls)
    sizes = [f"{x.shape[2]}x{x.shape[3]}" for x in (first, second)]
    if len(runs[0]) != len(runs[1]):
        return (f"the number of pad/convolution calls changes with the input size "
                f"({len(runs[0])} at {sizes[0]}, {len(runs[1])} at {sizes[1]})")
    changed = [(a, b) for a, b in zip(*runs, strict=True) if a != b]
    if not changed:
        return None
    (_, function, before), (_, _, after) = changed[0]
    modules = list(dict.fromkeys(a[0] or "<root>" for a, _ in changed))  # in call order
    named = ", ".join(repr(m) for m in modules[:3]) + (
        f" and {len(modules) - 3} more" if len(modules) > 3 else "")
    return (f"padding computed from the input size in Python ({len(changed)} of {len(runs[0])} "
            f"pad/convolution calls, in {named}; e.g. {function} padding {before} at "
            f"{sizes[0]}, {after} at {sizes[1]}): symbolic height and width would take minutes "
            f"of sympy reasoning in torch.export")
