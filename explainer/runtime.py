"""The Explainer: runs a bundle's graphs on ONNX Runtime and turns them into CAMs.

The data path, in one place (:meth:`Explainer.explain`)::

    image -> preprocess -> features graph -> activation A
          -> (logits pass, only when targets depend on the prediction)
          -> head graph for every (image, target) pair (one-hot seeds) -> logits, dA
          -> CAM weights (methods.py) -> ReLU(sum_k w_k A^k) -> upsample, min-max -> heatmaps

A schema-2 bundle also carries that whole path as one ONNX graph (``explanation.onnx``); where
it can express the method (the methods closed-form in the activation and its gradient:
``Explainer.graph.methods``), ``explain`` is one run of it
(:mod:`explainer.explanation_graph`). The two graphs and numpy remain the path for other
methods, schema-1 bundles, static-batch models and heads that read more than the activation.

Detectors, segmenters and text recognizers take the same path with their own targets: the
prediction pass gives the head's outputs, a planner (:mod:`explainer.tasks`) decodes them into
each image's targets and one seed over the explained tensor per target, and the gradient head
runs for every (image, target) pair as above.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .bundle import Bundle, extract
from .detection import check_renormalize
from .errors import ExplainerError, InputError, MethodError, ProviderError, TargetError
from .explanation import (
    Explanation,
    contrast_ids,
    renormalized_in_boxes,
    softmax,
    stack_explanations,
    task_explanation,
)
from .explanation_graph import ExplanationGraph
from .image import Geometry, ImageLike, Preprocessing, preprocess, preprocess_with_geometry
from .layers import LayerMaps, layer_maps
from .layers import fuse as fuse_maps
from .methods import ExplainerAccess, compute_cams, get_method
from .methods.access import Scorer
from .pixels import PIXEL_METHODS, pixel_maps
from .preprocessing import check_batch
from .seeds import embedding_score, embedding_seed
from .sessions import (
    SessionPool,
    resolve_providers,
    run_chunked,
    run_once,
    session_options,
    to_numpy,
)
from .targets import GraphTargets, TargetPlan, check_score, plan_targets, seed_rows
from .tasks import graph_classes, planner

__all__ = ["Explainer", "Explanation", "ExplainerError", "ProviderError", "InputError"]

log = logging.getLogger(__name__)


class Explainer:
    """Explain images with a bundle on ONNX Runtime (CPU or CUDA).

    Static batch: when the bundle's input has a fixed batch size S (``manifest["input"]
    ["shape"][0]`` is an int, common in TensorFlow/Keras conversions), every graph run is split
    into chunks of S rows, the last one padded by repeating its last row and the padding dropped
    from the results. The model is left as it is (relaxing the batch dimension would break the
    Reshapes such models hard-code with it), so any batch size and any number of targets work.

    Input dtype: the batch must have the manifest's ``input.dtype``: float (cast to float32)
    for most models, uint8 for models that normalize inside the graph.

    Two paths give the same :class:`Explanation`:

    * the explanation graph (schema-2 bundles, the methods in ``graph.methods``, dynamic
      batch, only the activation across the cut): one session run per call, ONNX Runtime's
      default thread spinning;
    * the two graphs (everything else): the features graph, the logits pass, the gradient head
      and numpy CAMs; spinning is off there so the sessions, run one after the other, do not
      fight for the cores. Their sessions are created on first use.

    Threads and resources: one Explainer may be shared by many threads (ONNX Runtime sessions
    run concurrently; nothing in :meth:`explain` mutates the Explainer), and gives the same
    results as sequential calls. :meth:`close` (or leaving a ``with Explainer(...) as e:``
    block) releases the sessions; later calls raise :class:`ExplainerError`.

    Args:
        bundle: a :class:`Bundle` or the path of a bundle directory.
        providers: None or ``"cpu"`` for the CPU; ``"cuda"`` or an ONNX Runtime provider list
            for CUDA (the input and outputs are bound once with IO binding; on the two-graph
            path the activation stays on the device between the graphs).
        threads: intra-op threads of each session (None: ONNX Runtime's default).
        optimization: ONNX Runtime graph optimization level: "all", "extended", "basic", "none".
        explanation_graph: use the bundle's explanation graph where it can express the method
            (False: always the two graphs).
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike[str],
        providers: str | Sequence[Any] | None = None,
        threads: int | None = None,
        optimization: str = "all",
        explanation_graph: bool = True,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(Path(bundle))
        manifest = self.bundle.manifest
        self.providers = resolve_providers(providers)
        self.on_cuda = any(
            (p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in self.providers
        )
        options = session_options(threads, optimization, spinning=False)
        head = manifest["head"]
        self.num_classes: int = manifest["num_classes"]
        self.head_inputs: list[str] = list(head["inputs"])
        self.seed_name: str = head["seed"]
        self.logits_name: str = head["logits"]
        self.gradient_name: str = head["gradient"]
        #: ``"classify"`` or ``"detect"`` (see :mod:`explainer.detection`)
        self.task: str = manifest.get("task", "classify")
        #: model outputs the head returns besides the explained tensor (a detector's)
        self.head_outputs: list[str] = list(head.get("outputs", []))
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
        #: what the head's ``logits`` hold: ``"logit"``, or ``"probability"`` (a softmax's
        #: output whose logits the export could not find: shown as they are, and explained)
        self.output_score: str = head.get("score", "logit")

        self._pool = SessionPool(self.providers, options)  # the two graphs' sessions
        self.graph: ExplanationGraph | None = None
        if (explanation_graph and self.bundle.explanation is not None and not self.static_batch
                and self.target_layout in ("NCHW", "NHWC")):
            self.graph = ExplanationGraph(
                self.bundle.explanation, manifest["explanation"],
                session_options(threads, optimization, spinning=True), self.providers,
                self.on_cuda,
            )

    @property
    def features_session(self) -> ort.InferenceSession:
        """The features graph's session (created on first use)."""
        return self._pool.get("features", lambda: self.bundle.features)

    @property
    def head_session(self) -> ort.InferenceSession:
        """The gradient head's session (created on first use)."""
        return self._pool.get("head", lambda: self.bundle.head)

    @property
    def logits_session(self) -> ort.InferenceSession:
        """The head pruned to its logits: the prediction pass for targets that depend on it.

        Built on first use (once, even when several threads ask at the same time), so
        explaining fixed classes never holds a second copy of the head's weights."""
        return self._logits_from(self.head_inputs)

    @property
    def outputs_session(self) -> ort.InferenceSession:
        """The head pruned to the explained tensor and the model outputs it keeps (a
        detector's prediction pass), created on first use."""
        return self._logits_from(self.head_inputs, [self.logits_name, *self.head_outputs])

    def _logits_from(self, inputs: list[str], outputs: list[str] | None = None
                     ) -> ort.InferenceSession:
        """The session of the head pruned to its logits, read from ``inputs`` (the head's own
        inputs, or a later layer's tensor inside it), created on first use.

        Raises:
            MethodError: the logits also depend on head tensors not in ``inputs`` (a skip
                connection passes a layer by).
        """
        wanted = outputs or [self.logits_name]

        def pruned() -> onnx.ModelProto:
            part, bypass = extract(self.bundle.head, list(inputs), list(wanted))
            if bypass:
                raise MethodError(
                    f"the logits do not depend on layer tensor(s) {list(inputs)} alone (the "
                    f"head also reads {bypass} past them); this method replaces the layer's "
                    "activation, so use it on a layer every path to the logits goes through"
                )
            return part

        key = "logits" if inputs == self.head_inputs else f"logits:{','.join(inputs)}"
        return self._pool.get(key if outputs is None else f"{key}>{','.join(wanted)}", pruned)

    @property
    def default_method(self) -> str:
        """The CAM method :meth:`explain` uses when none is given: ``"gradcam"`` for a
        classifier; ``"layercam"`` for detectors, segmenters and text recognizers, whose
        scores' gradients are local to an anchor, a region or a character's timesteps
        (spatially pooled, as Grad-CAM pools them, they wash out)."""
        return "gradcam" if self.task == "classify" else "layercam"

    # --- lifetime -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._pool.closed

    def close(self) -> None:
        """Release the ONNX Runtime sessions (and their memory). Idempotent; calls made after
        it raise :class:`ExplainerError`. Do not close while other threads are explaining."""
        self._pool.close()
        self.graph = None

    def __enter__(self) -> Explainer:
        self._check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        self._pool.check_open()

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
    def preprocess(
        self, images: ImageLike | Sequence[ImageLike], max_pixels: int | None = None
    ) -> np.ndarray:
        """Load and preprocess images with the bundle's preprocessing into a model batch
        (``max_pixels``: see :func:`explainer.image.load_image`)."""
        if self.preprocessing is None:
            raise InputError(
                "this bundle records no preprocessing; pass preprocessing= when exporting, or "
                "preprocess the images yourself and call explain() with the array"
            )
        return preprocess(images, self.preprocessing, max_pixels=max_pixels)

    def check_input(self, x: Any) -> np.ndarray:
        """Validate a model input batch (rank, shape, dtype, finiteness) and return it
        contiguous, cast to float32 where the model takes floats.

        Raises:
            InputError: naming the input, the expected shape and what was given.
        """
        entry = self.bundle.manifest["input"]
        return check_batch(x, entry["name"], self.input_shape, self.input_layout, self.input_dtype)

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
        """One graph run (in chunks of the static batch where the model has one)."""
        if self.static_batch is not None:
            return run_chunked(session, feeds, outputs, self.static_batch, self.on_cuda)
        return run_once(session, feeds, outputs, self.on_cuda)

    _to_numpy = staticmethod(to_numpy)

    def _gradients(
        self, features: dict[str, Any], seeds: np.ndarray, extra: list[str]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Head runs for seed rows [B, K, ...] (the explained tensor's shape past its batch):
        (logits [B, ...], {name: [B, K, ...]}) for the gradient and the ``extra`` outputs."""
        batch, k = seeds.shape[:2]
        outputs = [self.logits_name, self.gradient_name, *extra]
        if k > 1 and not self.on_cuda and all(
                getattr(v, "ndim", 0) and v.shape[0] == batch and v.dtype.kind == "f"
                for v in features.values()):
            # Every cut tensor is a float batch: one run for all B*K (image, target) pairs.
            feeds = {name: np.repeat(value, k, axis=0) for name, value in features.items()}
            feeds[self.seed_name] = seeds.reshape(batch * k, *seeds.shape[2:])  # image-major
            logits, *values = self._run(self.head_session, feeds, outputs)
            return logits[::k], {
                name: v.reshape(batch, k, *v.shape[1:]) for name, v in zip(outputs[1:], values)
            }
        # Otherwise one run per target column: other cut tensors (e.g. indices computed from
        # the batch size) keep their batch, and on CUDA everything stays on the device.
        columns = []
        for column in range(k):
            seed = np.ascontiguousarray(seeds[:, column])
            logits, *values = self._run(
                self.head_session, {**features, self.seed_name: seed}, outputs
            )
            columns.append([self._to_numpy(v) for v in values])
        return logits, {name: np.stack([c[i] for c in columns], axis=1)
                        for i, name in enumerate(outputs[1:])}

    # --- the two graphs, one at a time (the self-check and other tools build on these) ------------
    def run_features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the features graph: the cut tensors (activation first) for an input batch."""
        self._check_open()
        features = self._run_features(self.check_input(x))
        return {name: self._to_numpy(value) for name, value in features.items()}

    def run_logits(self, features: dict[str, Any]) -> np.ndarray:
        """Logits [B, C] of the head for cut tensors as :meth:`run_features` returns them."""
        self._check_open()
        return self._run(self.logits_session, features, [self.logits_name])[0]

    def run_layer_logits(self, tensor: str, activation: np.ndarray) -> np.ndarray:
        """Logits [B, C] of the head run from ``tensor``, a later layer of a layer sweep (a
        tensor inside the head), set to ``activation``: the head from that tensor on,
        extracted on first use.

        Raises:
            MethodError: the logits do not depend on the head's inputs through ``tensor``
                alone (a skip connection passes it by).
        """
        self._check_open()
        session = self._logits_from([tensor])
        return self._run(session, {tensor: activation}, [self.logits_name])[0]

    def run_input_gradient(self, x: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """The guided gradient of ``sum(seeds * logits)`` w.r.t. the input rows ``x`` (the
        bundle's input-gradient graph; see :mod:`explainer.pixels`)."""
        entry = self.bundle.manifest["input_gradient"]
        session = self._pool.get("input_gradient", lambda: self.bundle.input_gradient)
        feeds = {entry["input"]: self.check_input(x), entry["seed"]: np.asarray(seeds, np.float32)}
        return self._to_numpy(self._run(session, feeds, [entry["gradient"]])[0])

    def run_head(
        self, features: dict[str, Any], seeds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the gradient head: (logits [B, C], gradient of ``sum(seeds * logits)`` with
        respect to the activation) for cut tensors and seed rows [B, C]."""
        self._check_open()
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
        method: str | None = None,
        *,
        contrast: Any = None,
        score: str = "logit",
        fuse: str | None = "mean",
        seeds: dict[str, Any] | None = None,
        **detect: Any,
    ) -> Explanation:
        """Explain a batch.

        Args:
            x: batch in the model's input layout and dtype (float32, or uint8 for models that
                normalize inside the graph; see :meth:`preprocess`).
            targets: None (top-1), an int, a length-B sequence, a [B, K] array, or a string
                such as ``"top3+least"``; class names stand for class ids (see
                :mod:`explainer.targets`). ``{"embedding": vector}`` explains the dot product
                of the explained output (an embedding [B, D]) with a reference vector of D
                values (``score="cosine"``: the cosine similarity). Detectors, segmenters and
                text recognizers take their own targets (see :mod:`explainer.tasks`).
            top_k: explain the K most probable classes (same as ``targets="topK"``).
            method: CAM method name (see :data:`explainer.methods.METHODS`); None for the
                bundle's :attr:`default_method`.
            contrast: classes in the forms of ``targets`` (one per image, or one per target):
                explain the score of each target minus the score of its contrast class.
            score: ``"logit"`` (default) or ``"probability"``: explain the softmax
                probability instead of the logit; for an embedding target ``"dot"``
                (the default) or ``"cosine"``.
            fuse: for a layer-sweep bundle, how the top-level heatmaps combine the layers'
                (``"mean"`` or ``"max"`` of the normalized maps, or None for the first
                layer's); each layer's maps are in ``Explanation.layers``.
            seeds: ``{output name: array}``: explain ``sum(seed * output)`` for any bundle
                (a regression output, one pixel of a depth map): the array has the explained
                output's shape past the batch (the same seed for every image), or ``[B,
                ...]``, or ``[B, K, ...]`` for K maps per image. The name is the explained
                tensor (``manifest["head"]["logits"]``) or the model output it stands for.
            **detect: for a detector: ``conf`` (confidence threshold, default 0.25), ``iou``
                (NMS IoU threshold, default 0.45), ``geometry`` (one
                :class:`~explainer.image.Geometry` per image, to give each detection its box
                in the original image), ``renormalize`` (``"boxes"``: each map zero outside its
                detection's box and min-max scaled inside it, as pytorch-grad-cam's
                ``renormalize_cam_in_bounding_boxes``; the raw ``cams`` are kept). A detector's
                ``targets`` are detections, classes or
                boxes (see :mod:`explainer.detection`): default ``"detections"``; ``top_k``
                explains the K best detections. For a segmenter: ``threshold`` (a binary map's,
                default 0.5), ``geometry``, ``renormalize``; its targets are classes over their
                masks, regions, masks or boxes (see :mod:`explainer.segmentation`). A text
                recognizer's targets are its decoded characters or string (see
                :mod:`explainer.sequence`).

        Returns:
            An :class:`Explanation`.
        """
        self._check_open()
        method = method or self.default_method
        if seeds is not None or (isinstance(targets, dict) and "embedding" in targets):
            if detect or contrast is not None or top_k is not None:
                given = [*detect, *(["contrast"] if contrast is not None else []),
                         *(["top_k"] if top_k is not None else [])]
                raise TargetError(f"{given} do not apply to seeds= or an embedding target")
            return self._explain_seeded(self.check_input(x), targets, seeds, method, score,
                                        fuse)
        if self.task != "classify":
            x = self.check_input(x)
            if self.static_batch == 1 and x.shape[0] > 1:  # outputs sized per image
                geometry = detect.pop("geometry", None)
                return stack_explanations([self._explain_task(
                    x[b : b + 1], targets, top_k, method, score, fuse, **detect,
                    geometry=None if geometry is None else geometry[b : b + 1])
                    for b in range(x.shape[0])])
            return self._explain_task(x, targets, top_k, method, score, fuse, **detect)
        if detect:
            raise TargetError(f"{sorted(detect)} apply to detectors; this bundle's task is "
                              f"{self.task!r}")
        if method not in PIXEL_METHODS:
            get_method(method)  # an unknown method fails before any graph run
        x = self.check_input(x)
        if method in PIXEL_METHODS:  # Grad-CAM first, then the guided input gradient
            cam = self.explain(x, targets, top_k, "gradcam", contrast=contrast, score=score,
                               fuse=fuse)
            return replace(cam, method=method, pixels=pixel_maps(self, x, cam, method))
        batch = x.shape[0]
        plan = plan_targets(targets, top_k, batch, self.num_classes, self.labels)
        against = None if contrast is None else plan_targets(
            contrast, None, batch, self.num_classes, self.labels)
        check_score(score)
        given = self.output_score == "probability"
        score = "probability" if given else score  # no logits to explain: the probabilities
        plain = against is None and (score == "logit" or given)
        if plain and self.graph is not None and method in self.graph.methods:
            return self._explain_in_graph(x, plan, method)  # all of the below, in one run

        features = self._run_features(x)  # once per batch, however many targets
        logits = None
        if plan.needs_logits or not plain:
            (logits,) = self._run(self.logits_session, features, [self.logits_name])
        class_ids = plan.resolve(logits) if plan.needs_logits else plan.class_ids
        against_ids = contrast_ids(against, logits, class_ids)
        seeds = seed_rows(class_ids, self.num_classes, against_ids,
                          None if score == "logit" or given else softmax(logits.astype(np.float64)))
        head_logits, maps = self._layer_maps(x, features, class_ids,
                                             seeds.reshape(*class_ids.shape, -1), method)
        first = next(iter(maps.values()))
        return Explanation.of(
            head_logits if logits is None else logits, class_ids, self.labels, given,
            heatmaps=fuse_maps(maps, fuse), cams=first.cams, method=method,
            contrast_ids=against_ids, score=score, layers=maps if len(maps) > 1 else None,
        )

    def _layer_maps(
        self, x: np.ndarray, features: dict[str, Any], class_ids: np.ndarray, seeds: np.ndarray,
        method: str, scorer: Scorer | None = None,
    ) -> tuple[np.ndarray, dict[str, LayerMaps]]:
        """The gradient head for every (image, target) pair (seeds [B, K, ...]), then each
        layer's CAMs and heatmaps (one layer, or every layer of a sweep): (head logits, maps by
        layer). ``scorer`` scores the targets for the methods that run the model again (None:
        the logit of class ``class_ids``)."""
        batch, k = class_ids.shape
        # a layer sweep's later layers: their activations and gradients are head outputs
        layers = self.bundle.manifest.get("layers") or [
            {**self.bundle.manifest["target"], "gradient": self.gradient_name}]
        extra = [n for layer in layers[1:] for n in (layer["gradient"], layer["tensor"])
                 if n not in self.head_inputs]  # a cut tensor's activation is a features output
        logits, outputs = self._gradients(features, seeds, extra)
        activations = [self._to_numpy(features[self.head_inputs[0]])]
        activations += [self._to_numpy(features[layer["tensor"]])
                        if layer["tensor"] in self.head_inputs else outputs[layer["tensor"]][:, 0]
                        for layer in layers[1:]]

        def cams_of(layer: dict[str, Any], given: np.ndarray, activation: np.ndarray,
                    gradient: np.ndarray) -> np.ndarray:
            access = ExplainerAccess(self, x, layer, given, features=features,
                                     scorer=scorer)  # runs for methods needing more
            return np.stack([compute_cams(activation, gradient[:, j], method, class_ids[:, j],
                                          access) for j in range(k)], axis=1)

        gradients = [outputs[layer["gradient"]] for layer in layers]
        return logits, layer_maps(layers, activations, gradients, self._input_size(x), cams_of)

    def _explain_task(
        self, x: np.ndarray, targets: Any, top_k: int | None, method: str, score: str,
        fuse: str | None, geometry: Sequence[Geometry] | None = None, **options: Any,
    ) -> Explanation:
        """:meth:`explain` for a detector, segmenter or text recognizer: read the outputs,
        choose each image's targets (:mod:`explainer.tasks`), one seed over the explained
        tensor per target, then the same per-layer maps."""
        get_method(method)
        check_score(score)
        renormalize = options.pop("renormalize", None)
        check_renormalize(renormalize)
        plan = planner(self.task, self.bundle.manifest["format"], self.labels,
                       self.num_classes, targets, score, top_k=top_k, **options)
        classes = graph_classes(plan) if not renormalize else None
        if (classes is not None and self.graph is not None and method in self.graph.methods
                and score == "logit"):
            return self._segment_in_graph(x, plan, classes, method, geometry)
        features = self._run_features(x)
        names = [self.logits_name, *self.head_outputs]
        values = dict(zip(names, (self._to_numpy(v) for v in self._run(
            self.outputs_session, features, names))))
        explained = values[self.logits_name]
        batch, size = x.shape[0], self._input_size(x)
        shapes = [list(v.shape) for v in values.values()]
        if any(v.ndim == 0 or v.shape[0] != batch for v in values.values()):
            raise ExplainerError(f"the model's outputs {shapes} have no batch axis of "
                                 f"{batch}; export it with a batch axis on every output")
        planned = [plan.plan({n: v[b] for n, v in values.items()}, explained[b], size)
                   for b in range(batch)]
        plans = [p for p, _ in planned]
        k = max(map(len, plans), default=0)
        notes = [plan.nothing(b) for b, p in enumerate(plans) if not p] + plan.notes()
        seeds = np.zeros((batch, max(k, 1), *explained.shape[1:]), np.float32)
        scores = np.full((batch, k), np.nan, np.float32)
        for b, row in enumerate(plans):
            for j, target in enumerate(row):
                seeds[b, j] = plan.seed(explained[b], target)
            if row:
                scores[b, : len(row)] = plan.scores(  # the image's row for each target, not copied
                    np.broadcast_to(explained[b], (len(row), *explained.shape[1:])), row)

        def scorer(out: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
            return plan.scores(out, [plans[r][i] if i < len(plans[r]) else None
                                     for r, i in zip(rows, ids)])

        ids = np.tile(np.arange(seeds.shape[1]), (batch, 1))
        _, maps = self._layer_maps(x, features, ids, seeds, method, scorer) if k else (None, {})
        items = [[self._placed(plan.item(t), b, geometry) for t in row]
                 for b, row in enumerate(plans)]
        transcripts = [t for _, t in planned] if self.task == "sequence" else None
        explanation = task_explanation(self.task, items, scores, maps, score, method, fuse,
                                       (batch, *size), notes, transcripts)
        if renormalize:
            return renormalized_in_boxes(explanation)
        return explanation

    def _segment_in_graph(self, x: np.ndarray, plan: Any, classes: list[int], method: str,
                          geometry: Sequence[Geometry] | None) -> Explanation:
        """:meth:`explain` of a segmenter's classes as one run of its explanation graph (the
        mask of each class held constant inside the graph); a class an image does not
        predict gets no column, as in the two-graph path."""
        out = self.graph.run(x, GraphTargets(0, 0, np.array([classes], np.int64)), method)
        batch, size = x.shape[0], self._input_size(x)
        items, columns = [], []
        for b in range(batch):
            targets = plan.plan({}, out["logits"][b], size)[0]
            items.append([self._placed(t.item, b, geometry) for t in targets])
            columns.append([classes.index(t.item.class_id) for t in targets])
        k = max(map(len, columns), default=0)
        maps = {}
        if k:
            picked = {key: np.zeros((batch, k, *out[key].shape[2:]), np.float32)
                      for key in ("cams", "heatmaps")}
            for b, row in enumerate(columns):
                for key in picked:
                    picked[key][b, : len(row)] = out[key][b, row]
            layer = self.bundle.manifest["target"]["layer"]
            maps = {layer: LayerMaps(picked["cams"], picked["heatmaps"])}
        scores = np.full((batch, k), np.nan, np.float32)
        for b, row in enumerate(columns):
            scores[b, : len(row)] = out["scores"][b, row]
        notes = [plan.nothing(b) for b, row in enumerate(columns) if not row]
        return task_explanation(self.task, items, scores, maps, "logit", method, None,
                                (batch, *size), notes)

    def _explain_seeded(self, x: np.ndarray, targets: Any, seeds: dict[str, Any] | None,
                        method: str, score: str, fuse: str | None) -> Explanation:
        """:meth:`explain` for ``seeds=`` or an ``{"embedding": vector}`` target: one given
        (or computed) seed over the explained tensor per map."""
        get_method(method)
        features = self._run_features(x)
        (explained,) = self._run(self.outputs_session, features, [self.logits_name])
        explained = self._to_numpy(explained)
        batch = x.shape[0]
        if seeds is not None:
            if targets is not None:
                raise TargetError("give either targets or seeds=, not both")
            rows = self._seed_rows(seeds, explained)
            score = "seed"
        else:
            vector = targets["embedding"]
            score = "dot" if score == "logit" else score
            rows = np.stack([embedding_seed(explained[b], vector, score)
                             for b in range(batch)])[:, None]
        k = rows.shape[1]

        def scored(out: np.ndarray, r: np.ndarray, ids: np.ndarray) -> np.ndarray:
            if seeds is None:
                return np.array([embedding_score(o, targets["embedding"], score) for o in out])
            return np.array([float((rows[b, j] * o).sum()) for o, b, j in zip(out, r, ids)])

        ids = np.tile(np.arange(k), (batch, 1))
        _, maps = self._layer_maps(x, features, ids, rows, method, scored)
        values = scored(np.repeat(explained, k, axis=0), np.repeat(np.arange(batch), k),
                        np.tile(np.arange(k), batch)).reshape(batch, k).astype(np.float32)
        first = next(iter(maps.values()))
        return Explanation(
            heatmaps=fuse_maps(maps, fuse), cams=first.cams, class_ids=np.full((batch, k), -1),
            scores=values, probabilities=np.full((batch, k), np.nan, np.float32),
            labels=None, logits=explained if explained.ndim == 2 else None, method=method,
            score=score, layers=maps if len(maps) > 1 else None, task=self.task,
        )

    def _seed_rows(self, seeds: dict[str, Any], explained: np.ndarray) -> np.ndarray:
        """``seeds=`` as rows [B, K, ...] over the explained tensor.

        Raises:
            TargetError: another output named, or a seed of the wrong shape.
        """
        output = (self.bundle.manifest.get("export") or {}).get("output")
        names = {self.logits_name, *(output if isinstance(output, list) else [output])} - {None}
        if not isinstance(seeds, dict) or len(seeds) != 1 or next(iter(seeds)) not in names:
            raise TargetError(f"seeds= takes one array by output name; this bundle "
                              f"differentiates {self.logits_name!r} (the model output "
                              f"{sorted(names - {self.logits_name}) or [self.logits_name]}), "
                              f"got {list(seeds) if isinstance(seeds, dict) else seeds!r}")
        seed = np.asarray(next(iter(seeds.values())), dtype=np.float32)
        shape = explained.shape
        if seed.shape == shape[1:]:
            seed = np.broadcast_to(seed, shape)
        if seed.shape == shape:
            seed = seed[:, None]
        if seed.shape[:1] + seed.shape[2:] != shape or seed.ndim != len(shape) + 1:
            raise TargetError(f"a seed for {next(iter(seeds))!r} must have shape "
                              f"{list(shape[1:])}, {list(shape)} or [B, K, "
                              f"{', '.join(map(str, shape[1:]))}], got {list(seed.shape)}")
        if not np.isfinite(seed).all():
            raise TargetError("the seed has NaN or infinite values")
        return np.ascontiguousarray(seed)

    def _input_size(self, x: np.ndarray) -> tuple[int, int]:
        return tuple(x.shape[2:4] if self.input_layout == "NCHW" else x.shape[1:3])

    @staticmethod
    def _placed(item: Any, b: int, geometry: Sequence[Geometry] | None) -> Any:
        """The detection, region or character with its box in the original image, where the
        geometry is known."""
        if geometry is None:
            return item
        return replace(item, image_box=geometry[b].to_original(item.box))

    def _explain_in_graph(self, x: np.ndarray, plan: TargetPlan, method: str) -> Explanation:
        """:meth:`explain` as one run of the bundle's explanation graph."""
        out = self.graph.run(x, plan.graph_targets(), method)
        labels = None
        if self.labels is not None:
            labels = [[self.labels[c] for c in row] for row in out["target_ids"]]
        return Explanation(  # scores and probabilities as the graph computed them
            heatmaps=out["heatmaps"], cams=out["cams"], class_ids=out["target_ids"],
            scores=out["scores"], probabilities=out["probabilities"], labels=labels,
            logits=out["logits"], method=method,
            score="probability" if self.output_score == "probability" else "logit",
        )

    def explain_images(
        self,
        images: ImageLike | Sequence[ImageLike],
        targets: Any = None,
        top_k: int | None = None,
        method: str | None = None,
        **options: Any,
    ) -> Explanation:
        """Preprocess image files / PIL images with the bundle's preprocessing and explain them
        (arguments as for :meth:`explain`, ``contrast=`` and ``score=`` included). A detector's
        detections also get their boxes in the original images' pixels (``image_box``)."""
        if self.task != "classify" and self.preprocessing is not None:
            x, geometry = preprocess_with_geometry(images, self.preprocessing)
            options.setdefault("geometry", geometry)
        else:
            x = self.preprocess(images)
        return self.explain(x, targets=targets, top_k=top_k, method=method, **options)
