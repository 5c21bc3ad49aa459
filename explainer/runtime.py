"""The Explainer: runs a bundle's graphs on ONNX Runtime and turns them into CAMs.

The data path, in one place (:meth:`Explainer.explain`)::

    image -> preprocess -> features graph -> activation A
          -> (logits pass, only when targets depend on the prediction)
          -> head graph for every (image, target) pair (one-hot seeds) -> logits, dA
          -> CAM weights (methods.py) -> ReLU(sum_k w_k A^k) -> upsample, min-max -> heatmaps

A schema-2 bundle also carries that whole path as one ONNX graph (``explanation.onnx``); where
it can express the method (the methods closed-form in the activation and its gradient:
``Explainer.graph.methods``), ``explain`` is one run of it
(:mod:`explainer.graph_runner`). The two graphs and numpy remain the path for other
methods, schema-1 bundles, static-batch models and heads that read more than the activation.

Detectors, segmenters and text recognizers take the same path with their own targets: the
prediction pass gives the head's outputs, a planner (:mod:`explainer.tasks`) decodes them into
each image's targets and one seed over the explained tensor per target, and the gradient head
runs for every (image, target) pair as above (:mod:`explainer.task_runs`).

The graph runs themselves (sessions, static-batch chunking, IO binding) are the
:class:`~explainer.runner.Runner`'s (:attr:`Explainer.runner`); the manifest is read through
its typed view (:attr:`Explainer.spec`, :class:`explainer.manifest.Manifest`).
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

from .bundle import Bundle
from .errors import ExplainerError, InputError, ProviderError, TargetError
from .explanation import Explanation, contrast_ids, softmax, stack_explanations
from .graph_runner import ExplanationGraph
from .image import ImageLike, preprocess, preprocess_with_geometry
from .layers import fuse as fuse_maps
from .manifest import Manifest
from .methods import get_method
from .pixels import PIXEL_METHODS, pixel_maps
from .preprocessing import Preprocessing
from .runner import Runner
from .sessions import resolve_providers, session_options
from .targets import TargetPlan, check_score, plan_targets, seed_rows
from .task_runs import explain_seeded, explain_task, layer_cams

__all__ = ["Explainer", "Explanation", "ExplainerError", "ProviderError", "InputError"]

log = logging.getLogger(__name__)


class Explainer:
    """Explain images with a bundle on ONNX Runtime (CPU or CUDA).

    Static batch: when the bundle's input has a fixed batch size S (``spec.input.shape[0]``
    is an int, common in TensorFlow/Keras conversions), every graph run is split into chunks
    of S rows, the last one padded by repeating its last row and the padding dropped from the
    results. The model is left as it is (relaxing the batch dimension would break the Reshapes
    such models hard-code with it), so any batch size and any number of targets work.

    Input dtype: the batch must have the manifest's ``input.dtype``: float (cast to float32)
    for most models, uint8 for models that normalize inside the graph.

    Two paths give the same :class:`Explanation`:

    * the explanation graph (schema-2 bundles, the methods in ``graph.methods``, dynamic
      batch, only the activation across the cut): one session run per call, ONNX Runtime's
      default thread spinning;
    * the two graphs (everything else): the features graph, the logits pass, the gradient head
      and numpy CAMs; spinning is off there so the sessions, run one after the other, do not
      fight for the cores, except for a split head's composed prediction (the features and
      the head's forward in one run: most of the call's work, as plain inference), whose
      threads spin during its run and stop when it returns. Their
      sessions (:attr:`runner`) are created on first use.

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

    Attributes:
        bundle: the :class:`Bundle` explained.
        spec: its manifest, typed and validated (:class:`explainer.manifest.Manifest`).
        providers: the ONNX Runtime provider list the sessions use.
        runner: the graph runs of the two-graph path and of the self-checks
            (:class:`explainer.runner.Runner`: ``run_features``, ``run_logits``,
            ``run_head``, ``run_input_gradient``, the sessions, ``on_cuda``).
        graph: the explanation graph's runner, or None where it is not used.
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
        self.spec: Manifest = self.bundle.spec
        self.providers = resolve_providers(providers)
        self.runner = Runner(self.bundle, self.spec, self.providers,
                             session_options(threads, optimization, spinning=False),
                             session_options(threads, optimization, spinning=True,
                                             spin_after=False))
        self.graph: ExplanationGraph | None = None
        spec = self.spec
        if (explanation_graph and spec.explanation is not None
                and spec.input.static_batch is None and spec.target.layout in ("NCHW", "NHWC")):
            self.graph = ExplanationGraph(
                self.bundle.explanation, spec.explanation.entry,
                session_options(threads, optimization, spinning=True), self.providers,
                self.runner.on_cuda,
            )

    # --- what the bundle explains ---------------------------------------------------------------
    @property
    def task(self) -> str:
        """``"classify"``, ``"detect"``, ``"segment"`` or ``"sequence"`` (see
        :mod:`explainer.tasks`)."""
        return self.spec.task

    @property
    def num_classes(self) -> int:
        """The number of classes (the explained tensor's class axis)."""
        return self.spec.num_classes

    @property
    def labels(self) -> list[str] | None:
        """Class names, or None."""
        return self.spec.labels

    @property
    def preprocessing(self) -> Preprocessing | None:
        """How :meth:`preprocess` turns images into the model input, or None when the bundle
        records none."""
        return self.spec.preprocessing

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
        return self.runner.closed

    def close(self) -> None:
        """Release the ONNX Runtime sessions (and their memory). Idempotent; calls made after
        it raise :class:`ExplainerError`. Do not close while other threads are explaining."""
        self.runner.close()
        self.graph = None

    def __enter__(self) -> Explainer:
        self.runner.check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
                tensor (``spec.head.logits``) or the model output it stands for.
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
        runner = self.runner
        runner.check_open()
        method = method or self.default_method
        if seeds is not None or (isinstance(targets, dict) and "embedding" in targets):
            if detect or contrast is not None or top_k is not None:
                given = [*detect, *(["contrast"] if contrast is not None else []),
                         *(["top_k"] if top_k is not None else [])]
                raise TargetError(f"{given} do not apply to seeds= or an embedding target")
            return explain_seeded(runner, runner.check_input(x), targets, seeds, method, score,
                                  fuse)
        if self.task != "classify":
            x = runner.check_input(x)
            if self.spec.input.static_batch == 1 and x.shape[0] > 1:  # outputs sized per image
                geometry = detect.pop("geometry", None)
                return stack_explanations([explain_task(
                    runner, self.graph, x[b : b + 1], targets, top_k, method, score, fuse,
                    **detect, geometry=None if geometry is None else geometry[b : b + 1])
                    for b in range(x.shape[0])])
            return explain_task(runner, self.graph, x, targets, top_k, method, score, fuse,
                                **detect)
        if detect:
            raise TargetError(f"{sorted(detect)} apply to detectors; this bundle's task is "
                              f"{self.task!r}")
        if method not in PIXEL_METHODS:
            get_method(method)  # an unknown method fails before any graph run
        x = runner.check_input(x)
        if method in PIXEL_METHODS:  # Grad-CAM first, then the guided input gradient
            cam = self.explain(x, targets, top_k, "gradcam", contrast=contrast, score=score,
                               fuse=fuse)
            return replace(cam, method=method, pixels=pixel_maps(runner, x, cam, method))
        batch = x.shape[0]
        plan = plan_targets(targets, top_k, batch, self.num_classes, self.labels)
        against = None if contrast is None else plan_targets(
            contrast, None, batch, self.num_classes, self.labels)
        check_score(score)
        given = self.spec.head.score == "probability"
        score = "probability" if given else score  # no logits to explain: the probabilities
        plain = against is None and (score == "logit" or given)
        if plain and self.graph is not None and method in self.graph.methods:
            return self._explain_in_graph(x, plan, method)  # all of the below, in one run

        features = runner.features(x)  # once per batch, however many targets
        logits = None
        if plan.needs_logits or not plain:
            (logits,) = runner.run(runner.logits_session, features, [self.spec.head.logits])
        class_ids = plan.resolve(logits) if plan.needs_logits else plan.class_ids
        against_ids = contrast_ids(against, logits, class_ids)
        seeds = seed_rows(class_ids, self.num_classes, against_ids,
                          None if score == "logit" or given else softmax(logits.astype(np.float64)))
        head_logits, maps = layer_cams(runner, x, features, class_ids,
                                       seeds.reshape(*class_ids.shape, -1), method)
        first = next(iter(maps.values()))
        return Explanation.of(
            head_logits if logits is None else logits, class_ids, self.labels, given,
            heatmaps=fuse_maps(maps, fuse, runner.heatmaps), cams=first.cams, method=method,
            contrast_ids=against_ids, score=score, layers=maps if len(maps) > 1 else None,
        )

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
            score="probability" if self.spec.head.score == "probability" else "logit",
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
