"""The Explainer: runs a bundle's two graphs on ONNX Runtime and turns them into CAMs.

The data path, in one place (:meth:`Explainer.explain`)::

    image -> preprocess -> features graph -> activation A
          -> (logits pass, only when targets depend on the prediction)
          -> head graph for every (image, target) pair (one-hot seeds) -> logits, dA
          -> CAM weights (methods.py) -> ReLU(sum_k w_k A^k) -> upsample, min-max -> heatmaps
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort

from .bundle import Bundle
from .errors import ExplainerError, InputError, ProviderError, UsageError
from .image import ImageLike, Preprocessing, normalize_maps, preprocess, upsample_bilinear
from .methods import ExplainerAccess, compute_cams, get_method
from .targets import one_hot_seeds, plan_targets

__all__ = ["Explainer", "Explanation", "ExplainerError", "ProviderError", "InputError"]

log = logging.getLogger(__name__)


@dataclass
class Explanation:
    """CAMs for a batch of B images and K target classes each.

    Attributes:
        heatmaps: [B, K, H, W] float32 in [0, 1] at input resolution (bilinear upsampling,
            per-map min-max).
        cams: [B, K, h, w] raw CAMs at activation resolution, before upsampling/normalizing.
        class_ids: [B, K] int64 explained classes.
        scores: [B, K] logits of those classes.
        probabilities: [B, K] softmax probabilities of those classes.
        labels: [B][K] class names when the bundle knows them, else None.
        logits: [B, C] all logits.
        method: the CAM method used.
    """

    heatmaps: np.ndarray
    cams: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray
    labels: list[list[str]] | None
    logits: np.ndarray
    method: str = "gradcam"

    def titles(self, index: int) -> list[str]:
        """Human titles ``"<label or class id> <probability>"`` for image ``index``."""
        names = self.labels[index] if self.labels else [str(c) for c in self.class_ids[index]]
        return [f"{n} {p:.3g}" for n, p in zip(names, self.probabilities[index])]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _resolve_providers(providers: str | Sequence[Any] | None) -> list[Any]:
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


class Explainer:
    """Explain images with a bundle on ONNX Runtime (CPU or CUDA).

    Static batch: when the bundle's input has a fixed batch size S (``manifest["input"]
    ["shape"][0]`` is an int, common in TensorFlow/Keras conversions), every graph run is split
    into chunks of S rows, the last one padded by repeating its last row and the padding dropped
    from the results. The model is left as it is (relaxing the batch dimension would break the
    Reshapes such models hard-code with it), so any batch size and any number of targets work.

    Input dtype: the batch must have the manifest's ``input.dtype``: float (cast to float32)
    for most models, uint8 for models that normalize inside the graph.

    Args:
        bundle: a :class:`Bundle` or the path of a bundle directory.
        providers: None or ``"cpu"`` for the CPU; ``"cuda"`` or an ONNX Runtime provider list
            for CUDA (the activation stays on the device between the two graphs).
        threads: intra-op threads of each session (None: ONNX Runtime's default). Spinning is
            off so the two sessions, run one after the other, do not fight for the cores.
        optimization: ONNX Runtime graph optimization level: "all", "extended", "basic", "none".
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike[str],
        providers: str | Sequence[Any] | None = None,
        threads: int | None = None,
        optimization: str = "all",
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(Path(bundle))
        manifest = self.bundle.manifest
        self.providers = _resolve_providers(providers)
        self.on_cuda = any(
            (p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in self.providers
        )
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if optimization not in levels:
            raise UsageError(
                f"optimization must be one of {sorted(levels)}, got {optimization!r}"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[optimization]
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        head = manifest["head"]
        self.num_classes: int = manifest["num_classes"]
        self.head_inputs: list[str] = list(head["inputs"])
        self.seed_name: str = head["seed"]
        self.logits_name: str = head["logits"]
        self.gradient_name: str = head["gradient"]
        self.target_layout: str = manifest["target"]["layout"]
        self.input_name: str = manifest["input"]["name"]
        self.input_layout: str = manifest["input"]["layout"]
        self.input_shape: list[Any] = manifest["input"]["shape"]
        self.input_dtype = np.dtype(manifest["input"].get("dtype") or "float32")
        batch = self.input_shape[0] if self.input_shape else None
        self.static_batch: int | None = batch if isinstance(batch, int) else None
        pre = manifest.get("preprocessing")
        self.preprocessing = Preprocessing.from_dict(pre) if pre else None
        self.labels = self.bundle.labels

        def session(model: onnx.ModelProto) -> ort.InferenceSession:
            return ort.InferenceSession(
                model.SerializeToString(), options, providers=self.providers
            )

        self._session = session
        self.features_session = session(self.bundle.features)
        self.head_session = session(self.bundle.head)

    @cached_property
    def logits_session(self) -> ort.InferenceSession:
        """The head pruned to its logits: the prediction pass for targets that depend on it.

        Built on first use, so explaining fixed classes never holds a second copy of the
        head's weights."""
        head = onnx.utils.Extractor(self.bundle.head)  # onnx's own dead-node removal
        return self._session(head.extract_model(self.head_inputs, [self.logits_name]))

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        target: str = "auto",
        providers: str | Sequence[Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        **export_kwargs: Any,
    ) -> Explainer:
        """Explain a deployed ONNX classifier directly (no torch needed)::

            explainer = Explainer.from_onnx("model.onnx")
            explanation = explainer.explain_images(["cat.jpg"], top_k=3)

        The bundle is built in memory by :func:`exporters.export_onnx`, through
        :func:`explainer.bridge.bundle_from_onnx` (the one place where the runtime meets the
        exporters). With ``cache_dir`` it is saved there under a key made of the file's SHA-256
        (external data included), the target and the export options, and loaded from there
        next time.

        Args:
            path: the ONNX file.
            target: ``"auto"``, a tensor name or a node name (see :func:`exporters.export_onnx`).
            providers: as for :class:`Explainer`.
            cache_dir: a directory for cached bundles, or None for no cache.
            threads: intra-op threads, as for :class:`Explainer`.
            **export_kwargs: more arguments of :func:`exporters.export_onnx` (``layout``,
                ``output``, ``labels``, ``preprocessing``...).
        """
        bridge = import_module("explainer.bridge")  # needs the exporters: loaded on demand
        bundle = bridge.bundle_from_onnx(path, target=target, cache_dir=cache_dir, **export_kwargs)
        return cls(bundle, providers=providers, threads=threads)

    # --- input ----------------------------------------------------------------------------------
    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Load and preprocess images with the bundle's preprocessing into a model batch."""
        if self.preprocessing is None:
            raise InputError(
                "this bundle records no preprocessing; pass preprocessing= when exporting, or "
                "preprocess the images yourself and call explain() with the array"
            )
        return preprocess(images, self.preprocessing)

    def check_input(self, x: Any) -> np.ndarray:
        """Validate a model input batch (rank, shape, dtype, finiteness) and return it
        contiguous, cast to float32 where the model takes floats.

        Raises:
            InputError: naming the input, the expected shape and what was given.
        """
        if not isinstance(x, np.ndarray):
            raise InputError(f"input must be a numpy array, got {type(x).__name__}")
        if x.ndim != len(self.input_shape):
            raise InputError(
                f"input {self.input_name!r} expects rank {len(self.input_shape)} "
                f"{self.input_shape} ({self.input_layout}), got shape {x.shape}"
            )
        for axis, (want, got) in enumerate(zip(self.input_shape, x.shape)):
            if isinstance(want, int) and axis > 0 and want != got:
                raise InputError(
                    f"input {self.input_name!r} expects shape {self.input_shape} "
                    f"({self.input_layout}), got {list(x.shape)} (axis {axis})"
                )
        if x.shape[0] == 0:
            raise InputError("input batch is empty")
        if self.input_dtype == np.uint8:
            if x.dtype != np.uint8:
                raise InputError(
                    f"input {self.input_name!r} is uint8 (the model normalizes inside the graph); "
                    f"pass 0..255 pixels as uint8, got {x.dtype} (Explainer.preprocess does this)"
                )
            return np.ascontiguousarray(x)
        if x.dtype != np.float32:
            if x.dtype.kind != "f":
                raise InputError(f"input must be float32, got {x.dtype}")
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise InputError("input contains NaN or infinite values")
        return np.ascontiguousarray(x)

    # --- graph runs -----------------------------------------------------------------------------
    def _run_features(self, x: np.ndarray) -> dict[str, Any]:
        if not self.on_cuda or self.static_batch is not None:
            values = self._run(self.features_session, {self.input_name: x}, self.head_inputs)
            return dict(zip(self.head_inputs, values, strict=True))
        # CUDA: the outputs stay on the device for the head runs
        binding = self.features_session.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        for name in self.head_inputs:
            binding.bind_output(name, "cuda")
        self.features_session.run_with_iobinding(binding)
        return dict(zip(self.head_inputs, binding.get_outputs()))

    def _run(self, session: ort.InferenceSession, feeds: dict[str, Any], outputs: list[str]):
        if self.static_batch is not None:
            return self._run_chunked(session, feeds, outputs)
        return self._run_once(session, feeds, outputs)

    def _run_once(self, session: ort.InferenceSession, feeds: dict[str, Any], outputs: list[str]):
        if not self.on_cuda:
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

    def _run_chunked(
        self, session: ort.InferenceSession, feeds: dict[str, Any], outputs: list[str]
    ) -> list[np.ndarray]:
        """Run a static-batch graph on any number of rows, in chunks of the static size."""
        size = self.static_batch
        feeds = {k: self._to_numpy(v) for k, v in feeds.items()}
        rows = next(iter(feeds.values())).shape[0]
        results: list[list[np.ndarray]] = [[] for _ in outputs]
        for start in range(0, rows, size):
            chunk = {}
            for name, value in feeds.items():
                part = value[start : start + size]
                if part.shape[0] < size:  # pad the last chunk with copies of its last row
                    pad = np.repeat(part[-1:], size - part.shape[0], axis=0)
                    part = np.concatenate([part, pad])
                chunk[name] = np.ascontiguousarray(part)
            values = self._run_once(session, chunk, outputs)
            for result, value in zip(results, values, strict=True):
                result.append(self._to_numpy(value))
        return [np.concatenate(parts)[:rows] for parts in results]

    @staticmethod
    def _to_numpy(value: Any) -> np.ndarray:
        return value.numpy() if isinstance(value, ort.OrtValue) else value

    def _gradients(self, features: dict[str, Any], class_ids: np.ndarray):
        """Head runs for class_ids [B, K]: returns (logits [B, C], gradients [B, K, ...])."""
        batch, k = class_ids.shape
        outputs = [self.logits_name, self.gradient_name]
        if k > 1 and len(features) == 1 and not self.on_cuda:
            # Only the activation crosses the cut: one run for all B*K (image, class) pairs.
            feeds = {name: np.repeat(value, k, axis=0) for name, value in features.items()}
            feeds[self.seed_name] = one_hot_seeds(class_ids, self.num_classes)  # image-major
            logits, gradient = self._run(self.head_session, feeds, outputs)
            return logits[::k], gradient.reshape(batch, k, *gradient.shape[1:])
        # Otherwise one run per target column: other cut tensors (e.g. indices computed from
        # the batch size) keep their batch, and on CUDA everything stays on the device.
        gradients = []
        for column in range(k):
            seed = one_hot_seeds(class_ids[:, column], self.num_classes)
            logits, gradient = self._run(
                self.head_session, {**features, self.seed_name: seed}, outputs
            )
            gradients.append(gradient)
        return logits, np.stack(gradients, axis=1)

    # --- the two graphs, one at a time (the self-check and other tools build on these) ------------
    def run_features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the features graph: the cut tensors (activation first) for an input batch."""
        features = self._run_features(self.check_input(x))
        return {name: self._to_numpy(value) for name, value in features.items()}

    def run_logits(self, features: dict[str, Any]) -> np.ndarray:
        """Logits [B, C] of the head for cut tensors as :meth:`run_features` returns them."""
        return self._run(self.logits_session, features, [self.logits_name])[0]

    def run_head(
        self, features: dict[str, Any], seeds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the gradient head: (logits [B, C], gradient of ``sum(seeds * logits)`` with
        respect to the activation) for cut tensors and seed rows [B, C]."""
        logits, gradient = self._run(
            self.head_session, {**features, self.seed_name: np.asarray(seeds, np.float32)},
            [self.logits_name, self.gradient_name],
        )
        return self._to_numpy(logits), self._to_numpy(gradient)

    # --- the data path --------------------------------------------------------------------------
    def explain(
        self,
        x: np.ndarray,
        targets: Any = None,
        top_k: int | None = None,
        method: str = "gradcam",
    ) -> Explanation:
        """Explain a batch.

        Args:
            x: batch in the model's input layout and dtype (float32, or uint8 for models that
                normalize inside the graph; see :meth:`preprocess`).
            targets: None (top-1), an int, a length-B sequence, a [B, K] array, or a string
                such as ``"top3+least"`` (see :mod:`explainer.targets`).
            top_k: explain the K most probable classes (same as ``targets="topK"``).
            method: CAM method name (see :data:`explainer.methods.METHODS`).

        Returns:
            An :class:`Explanation`.
        """
        get_method(method)  # an unknown method fails before any graph run
        x = self.check_input(x)
        batch = x.shape[0]
        plan = plan_targets(targets, top_k, batch, self.num_classes)
        features = self._run_features(x)  # once per batch, however many targets

        logits = None
        if plan.needs_logits:
            (logits,) = self._run(self.logits_session, features, [self.logits_name])
            class_ids = plan.resolve(logits)
        else:
            class_ids = plan.class_ids
        k = class_ids.shape[1]

        head_logits, gradient = self._gradients(features, class_ids)
        if logits is None:
            logits = head_logits
        activation = self._to_numpy(features[self.head_inputs[0]])
        if self.target_layout == "NHWC":
            activation = activation.transpose(0, 3, 1, 2)
            gradient = gradient.transpose(0, 1, 4, 2, 3)
        access = ExplainerAccess(self, x)  # graph runs for methods that need more than (A, dA)
        cams = np.stack(
            [compute_cams(activation, gradient[:, j], method, class_ids[:, j], access)
             for j in range(k)], axis=1)

        size = x.shape[2:4] if self.input_layout == "NCHW" else x.shape[1:3]
        heatmaps = normalize_maps(upsample_bilinear(cams, tuple(size)), copy=False)
        probabilities = _softmax(logits.astype(np.float64)).astype(np.float32)
        labels = None
        if self.labels is not None:
            labels = [[self.labels[c] for c in row] for row in class_ids]
        return Explanation(
            heatmaps=heatmaps,
            cams=cams,
            class_ids=class_ids,
            scores=np.take_along_axis(logits, class_ids, axis=1),
            probabilities=np.take_along_axis(probabilities, class_ids, axis=1),
            labels=labels,
            logits=logits,
            method=method,
        )

    def explain_images(
        self,
        images: ImageLike | Sequence[ImageLike],
        targets: Any = None,
        top_k: int | None = None,
        method: str = "gradcam",
    ) -> Explanation:
        """Preprocess image files / PIL images with the bundle's preprocessing and explain them
        (arguments as for :meth:`explain`)."""
        return self.explain(self.preprocess(images), targets=targets, top_k=top_k, method=method)
