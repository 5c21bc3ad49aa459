"""ONNX Runtime session settings shared by the Explainer's sessions: providers and options."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .errors import ExplainerError, ProviderError, UsageError
from .session_build import copy_options, new_session
from .static_dims import fold_static_dims

__all__ = [
    "SessionPool", "SizedSessions", "resolve_providers", "run_chunked", "run_once",
    "session_options", "specialize", "symbolic_axes", "to_numpy",
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


def session_options(threads: int | None, optimization: str, spinning: bool,
                    spin_after: bool = True) -> ort.SessionOptions:
    """Session options: intra-op threads (None: ORT's default), optimization level ("all",
    "extended", "basic", "none") and thread spinning (ORT's default is on; sessions run one
    after the other need it off, or their spinning threads fight for the cores).
    ``spin_after=False`` stops a spinning session's threads when its run returns
    (``session.force_spinning_stop``): they spin between the run's own operators only, and
    leave the cores to the runs that follow (a detector's backward windows, behind a
    prediction pass whose threads kept spinning, took 5-10 ms longer)."""
    if optimization not in _LEVELS:
        raise UsageError(f"optimization must be one of {sorted(_LEVELS)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[optimization]
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif not spin_after:
        options.add_session_config_entry("session.force_spinning_stop", "1")
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
        sizes: how many input sizes keep a specialized session per model in
            :meth:`get_sized` (see :class:`SizedSessions`).
        spinning: the options of a session that runs most of the work of a call in one run
            (``get_sized(..., spinning=True)``), thread spinning on (the options otherwise).
    """

    def __init__(self, providers: list[Any], options: ort.SessionOptions,
                 sizes: int = 4, spinning: ort.SessionOptions | None = None) -> None:
        self.providers = providers
        self.options = options
        self.spinning = spinning or options
        self.sizes = sizes
        self._lock = threading.Lock()
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._sized: dict[str, SizedSessions] = {}
        self._threaded: dict[int, ort.SessionOptions] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self.closed = False

    def check_open(self) -> None:
        """Raise :class:`ExplainerError` once closed."""
        if self.closed:
            raise ExplainerError(
                "this Explainer is closed (close() was called or its with-block ended); create "
                "a new Explainer"
            )

    def get(self, key: str, model: Callable[[], onnx.ModelProto], threads: int | None = None
            ) -> ort.InferenceSession:
        """The session ``key``, created from ``model()`` on first use (with ``threads``
        intra-op threads where given)."""
        self.check_open()
        session = self._sessions.get(key)
        if session is None:
            with self._lock:
                self.check_open()
                session = self._sessions.get(key)
                if session is None:
                    options = self.options if threads is None else self._threaded.setdefault(
                        threads, copy_options(self.options, threads))
                    session = self._sessions[key] = new_session(model(), options,
                                                                self.providers)
        return session

    @property
    def workers(self) -> int:
        """How many single-thread runs :meth:`map` runs at once: the sessions' intra-op
        threads (ONNX Runtime's default: the cores)."""
        return self.options.intra_op_num_threads or os.cpu_count() or 1

    def map(self, run: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``run`` on every item, up to :attr:`workers` at once (runs of single-thread
        sessions), the results in order."""
        if self.workers < 2 or len(items) < 2:
            return [run(item) for item in items]
        with self._lock:
            self.check_open()
            if self._executor is None or self._executor_pid != os.getpid():  # a forked child
                self._executor = ThreadPoolExecutor(self.workers,
                                                    thread_name_prefix="onnxcam-run")
                self._executor_pid = os.getpid()
            executor = self._executor
        return list(executor.map(run, items))

    def get_sized(self, key: str, model: Callable[[], onnx.ModelProto], input_name: str,
                  shape: Sequence[int], spinning: bool = False) -> ort.InferenceSession:
        """The session ``key`` for an input ``input_name`` of ``shape``: specialized to its
        symbolic sizes (batch aside) where the model has any, the :attr:`sizes` most recently
        used kept (:class:`SizedSessions`); with :attr:`spinning`'s options where asked."""
        self.check_open()
        with self._lock:
            self.check_open()
            sized = self._sized.get(key)
            if sized is None:
                sized = self._sized[key] = SizedSessions(
                    model(), input_name, self.spinning if spinning else self.options,
                    self.providers, self.sizes)
        return sized.get(shape)

    def close(self) -> None:
        """Release every session (idempotent)."""
        with self._lock:
            self.closed = True
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None
            self._sessions.clear()
            for sized in self._sized.values():
                sized.close()
            self._sized.clear()


def symbolic_axes(model: onnx.ModelProto, input_name: str, skip_batch: bool = True) -> list[int]:
    """The axes of ``model``'s input ``input_name`` whose size is not fixed (symbolic or
    unknown), the batch axis 0 left out with ``skip_batch``."""
    value = next((v for v in model.graph.input if v.name == input_name), None)
    if value is None:
        raise UsageError(f"the model has no input {input_name!r}")
    dims = value.type.tensor_type.shape.dim
    return [axis for axis, dim in enumerate(dims)
            if not dim.HasField("dim_value") and (axis > 0 or not skip_batch)]


def specialize(model: onnx.ModelProto, input_name: str, sizes: dict[int, int],
               fold_prefix: str | None = None) -> onnx.ModelProto:
    """A copy of ``model`` whose input ``input_name`` has the static ``sizes`` (axis -> size).

    The copy drops the model's value infos (inner shapes written for symbolic sizes), so
    ONNX Runtime infers every inner shape from the static input and plans and optimizes the
    graph as it does for a model exported at that size. With ``fold_prefix``, the sizes that
    the nodes so named read off shapes are made constants where they are now static
    (:func:`explainer.static_dims.fold_static_dims`).
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    value = next(v for v in copy.graph.input if v.name == input_name)
    dims = value.type.tensor_type.shape.dim
    for axis, size in sizes.items():
        dims[axis].Clear()
        dims[axis].dim_value = int(size)
    if fold_prefix is not None:
        fold_static_dims(copy, fold_prefix)
    return copy


class SizedSessions:
    """Sessions of one model, each specialized to the input sizes it runs at.

    A model whose input accepts any height and width (symbolic dimensions) runs slower in
    ONNX Runtime than the same model exported at a fixed size: the memory plan and several
    graph optimizations need static shapes. This gives a size (the values of the input's
    symbolic axes, batch aside: every session accepts any batch) its own session once it has
    been met ``after`` times, built from a copy of the model with those sizes fixed
    (:func:`specialize`); at most ``limit`` of them are kept, the least recently used released
    first (each holds its own copy of the weights). Runs at other sizes (met fewer times, or
    every size with ``limit`` 0) use one session with the model's own symbolic sizes, so a
    stream of ever new sizes does not build a session per input. A model whose input has no
    symbolic axis besides the batch has that one session only.

    Args:
        model: the model.
        input_name: its image input.
        options: session options, shared by every session.
        providers: ONNX Runtime providers.
        limit: how many specialized sessions to keep; 0 turns specializing off.
        after: the run at a size that first uses its specialized session (1: the first).
        fold_prefix: the nodes whose shape reads a specialized copy makes constants
            (:func:`specialize`); None: none.
    """

    #: how many sizes met fewer than ``after`` times are remembered
    SEEN = 64

    def __init__(self, model: onnx.ModelProto, input_name: str, options: ort.SessionOptions,
                 providers: list[Any], limit: int = 4, after: int = 2,
                 fold_prefix: str | None = None) -> None:
        if limit < 0 or after < 1:
            raise UsageError(f"the specialized session limit must be >= 0 and after >= 1, got "
                             f"limit={limit}, after={after}")
        self.model, self.input_name = model, input_name
        self.options, self.providers = options, providers
        self.limit, self.after = int(limit), int(after)
        self.fold_prefix = fold_prefix
        self.axes = symbolic_axes(model, input_name) if limit else []
        self._lock = threading.Lock()
        self._sessions: OrderedDict[tuple[int, ...], ort.InferenceSession] = OrderedDict()
        self._seen: OrderedDict[tuple[int, ...], int] = OrderedDict()
        self._generic: ort.InferenceSession | None = None
        self._last: ort.InferenceSession | None = None

    def _build(self, model: onnx.ModelProto) -> ort.InferenceSession:
        return new_session(model, self.options, self.providers)

    def _generic_session(self) -> ort.InferenceSession:
        if self._generic is None:
            model = self.model
            if self.fold_prefix is not None and self.limit and not self.axes:
                model = specialize(model, self.input_name, {}, self.fold_prefix)  # fixed size
            self._generic = self._build(model)
        return self._generic

    def get(self, shape: Sequence[int]) -> ort.InferenceSession:
        """The session for an input of ``shape``."""
        key = tuple(int(shape[axis]) for axis in self.axes if axis < len(shape))
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                self._sessions.move_to_end(key)
            elif not self.axes or len(key) != len(self.axes):
                session = self._generic_session()
            else:
                count = self._seen.pop(key, 0) + 1
                if count < self.after:
                    self._seen[key] = count
                    while len(self._seen) > self.SEEN:
                        self._seen.popitem(last=False)
                    session = self._generic_session()
                else:
                    fixed = specialize(self.model, self.input_name,
                                       dict(zip(self.axes, key, strict=True)),
                                       self.fold_prefix)
                    session = self._sessions[key] = self._build(fixed)
                    while len(self._sessions) > self.limit:
                        self._sessions.popitem(last=False)
            self._last = session
            return session

    @property
    def last(self) -> ort.InferenceSession:
        """The session of the latest :meth:`get`; before any, the one with the model's own
        (symbolic) sizes."""
        with self._lock:
            return self._last or self._generic_session()

    @property
    def sizes(self) -> list[tuple[int, ...]]:
        """The sizes (the symbolic axes' values) with a specialized session, least recently
        used first."""
        with self._lock:
            return list(self._sessions)

    def close(self) -> None:
        """Release every session."""
        with self._lock:
            self._sessions.clear()
            self._seen.clear()
            self._generic = self._last = None
