"""ONNX Runtime session settings of an :class:`~explainer.Explainer`: providers and options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnxruntime as ort

from .errors import ProviderError, UsageError

__all__ = ["OPTIMIZATION_LEVELS", "resolve_providers", "session_options"]

#: names accepted for ``optimization`` -> ONNX Runtime graph optimization level
OPTIMIZATION_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def resolve_providers(providers: str | Sequence[Any] | None) -> list[Any]:
    """ONNX Runtime provider list for None/"cpu", "cuda" or an explicit list.

    Raises:
        ProviderError: an unknown shorthand, or a provider this ONNX Runtime build lacks.
    """
    available = ort.get_available_providers()
    if providers is None or providers == "cpu":
        return ["CPUExecutionProvider"]
    if providers == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if isinstance(providers, str):
        raise ProviderError(f"unknown provider shorthand {providers!r}; use 'cpu', 'cuda' or a "
                            "list of ONNX Runtime provider names")
    providers = list(providers)
    for entry in providers:
        name = entry[0] if isinstance(entry, tuple) else entry
        if name not in available:
            hint = (
                " Install the GPU build: pip install 'onnxcam[gpu]' (onnxruntime-gpu replaces "
                "onnxruntime; never install both) and check that CUDA 12/13 and cuDNN 9 are found."
                if name == "CUDAExecutionProvider"
                else ""
            )
            raise ProviderError(
                f"execution provider {name!r} is not available in this ONNX Runtime build "
                f"(available: {available}).{hint}"
            )
    return providers


def session_options(optimization: str = "all", threads: int | None = None) -> ort.SessionOptions:
    """Session options: the optimization level, ``threads`` intra-op threads (None: ONNX
    Runtime's default) and spinning off, so sessions run one after the other do not fight for
    the cores.

    Raises:
        UsageError: an unknown optimization level.
    """
    if optimization not in OPTIMIZATION_LEVELS:
        raise UsageError(
            f"optimization must be one of {sorted(OPTIMIZATION_LEVELS)}, got {optimization!r}"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return options
