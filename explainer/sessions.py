"""ONNX Runtime session settings shared by the Explainer's sessions: providers and options."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .errors import ExplainerError, ProviderError, UsageError

__all__ = [
    "SessionPool", "resolve_providers", "run_chunked", "run_once", "session_options", "to_numpy",
]

_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def resolve_providers(providers: str | Sequence[Any] | None) -> list[Any]:
    """``None``/``"cpu"``, ``"cuda"`` or an ORT provider list -> an ORT provider list.

    Raises:
        ProviderError: an unknown shorthand, or a provider this ONNX Runtime build lacks
            (for CUDA: says what to install).
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


def session_options(threads: int | None, optimization: str, spinning: bool) -> ort.SessionOptions:
    """Session options: intra-op threads (None: ORT's default), optimization level ("all",
    "extended", "basic", "none") and thread spinning (ORT's default is on; sessions run one
    after the other need it off, or their spinning threads fight for the cores)."""
    if optimization not in _LEVELS:
        raise UsageError(f"optimization must be one of {sorted(_LEVELS)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[optimization]
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return options


def to_numpy(value: Any) -> np.ndarray:
    """A session output as numpy (``OrtValue``s on a device are copied to the host)."""
    return value.numpy() if isinstance(value, ort.OrtValue) else value


def run_once(session: ort.InferenceSession, feeds: dict[str, Any], outputs: list[str],
             on_cuda: bool) -> list[Any]:
    """One run; on CUDA through IO binding (``OrtValue`` feeds stay on the device)."""
    if not on_cuda:
        return session.run(outputs, feeds)
    binding = session.io_binding()
    for name, value in feeds.items():
        if isinstance(value, ort.OrtValue):
            binding.bind_ortvalue_input(name, value)
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in outputs:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def run_chunked(session: ort.InferenceSession, feeds: dict[str, Any], outputs: list[str],
                size: int, on_cuda: bool) -> list[np.ndarray]:
    """Run a static-batch graph on any number of rows, in chunks of the static ``size``, the
    last one padded with copies of its last row (the padding is dropped from the results)."""
    feeds = {k: to_numpy(v) for k, v in feeds.items()}
    rows = next(iter(feeds.values())).shape[0]
    results: list[list[np.ndarray]] = [[] for _ in outputs]
    for start in range(0, rows, size):
        chunk = {}
        for name, value in feeds.items():
            if value.ndim == 0 or value.shape[0] != rows:  # not per row (a scale, a size)
                chunk[name] = value
                continue
            part = value[start : start + size]
            if part.shape[0] < size:
                pad = np.repeat(part[-1:], size - part.shape[0], axis=0)
                part = np.concatenate([part, pad])
            chunk[name] = np.ascontiguousarray(part)
        values = run_once(session, chunk, outputs, on_cuda)
        for result, value in zip(results, values, strict=True):
            result.append(to_numpy(value))
    return [parts[-1] if parts[-1].ndim == 0 else np.concatenate(parts)[:rows]
            for parts in results]


class SessionPool:
    """The ONNX Runtime sessions of one Explainer: each created on first use (once, even when
    several threads ask at the same time), all released by :meth:`close`.

    Args:
        providers: the provider list (:func:`resolve_providers`).
        options: the session options (:func:`session_options`).
    """

    def __init__(self, providers: list[Any], options: ort.SessionOptions) -> None:
        self.providers = providers
        self.options = options
        self._lock = threading.Lock()
        self._sessions: dict[str, ort.InferenceSession] = {}
        self.closed = False

    def check_open(self) -> None:
        """Raise :class:`ExplainerError` once closed."""
        if self.closed:
            raise ExplainerError(
                "this Explainer is closed (close() was called or its with-block ended); create "
                "a new Explainer"
            )

    def get(self, key: str, model: Callable[[], onnx.ModelProto]) -> ort.InferenceSession:
        """The session ``key``, created from ``model()`` on first use."""
        self.check_open()
        session = self._sessions.get(key)
        if session is None:
            with self._lock:
                self.check_open()
                session = self._sessions.get(key)
                if session is None:
                    session = self._sessions[key] = ort.InferenceSession(
                        model().SerializeToString(), self.options, providers=self.providers)
        return session

    def close(self) -> None:
        """Release every session (idempotent)."""
        with self._lock:
            self.closed = True
            self._sessions.clear()
