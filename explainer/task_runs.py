"""The two-graph data path past the prediction pass: per-layer CAMs, and the explanations of
detectors, segmenters, text recognizers, ``seeds=`` and embedding targets.

:func:`layer_cams` runs the gradient head for every (image, target) pair and turns each
layer's activation and gradients into CAMs and heatmaps; :class:`explainer.runtime.Explainer`
calls it for classifiers, and the functions below call it for their own targets:

* :func:`explain_task`: the prediction pass gives the head's outputs, a planner
  (:mod:`explainer.tasks`) decodes them into each image's targets and one seed over the
  explained tensor per target (:func:`segment_in_graph`: a segmenter's classes as one run of
  the explanation graph);
* :func:`explain_seeded`: one given (``seeds=``) or computed (an embedding target) seed over
  the explained tensor per map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .access import Scorer
from .detection import check_renormalize
from .errors import ExplainerError, TargetError
from .explanation import Explanation, renormalized_in_boxes, task_explanation
from .graph_runner import ExplanationGraph
from .image import Geometry
from .layers import LayerMaps, layer_maps
from .layers import fuse as fuse_maps
from .methods import compute_cams, get_method
from .runner import Runner
from .seeds import embedding_score, embedding_seed
from .targets import GraphTargets, check_score
from .tasks import graph_classes, planner

__all__ = ["explain_seeded", "explain_task", "layer_cams", "segment_in_graph"]


def layer_cams(
    runner: Runner, x: np.ndarray, features: dict[str, Any], class_ids: np.ndarray,
    seeds: np.ndarray, method: str, scorer: Scorer | None = None,
    forward: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, LayerMaps]]:
    """The gradient head for every (image, target) pair (seeds [B, K, ...]), then each
    layer's CAMs and heatmaps (one layer, or every layer of a sweep): (head logits, maps by
    layer). ``scorer`` scores the targets for the methods that run the model again (None:
    the logit of class ``class_ids``); ``forward`` is the head's forward already run
    (:meth:`Runner.predict`), so that only its backward runs."""
    spec = runner.spec
    k = class_ids.shape[1]
    layers = spec.layers
    cut = spec.head.inputs
    # a layer sweep's later layers: their activations and gradients are head outputs
    extra = [n for layer in layers[1:] for n in (layer.gradient, layer.tensor)
             if n not in cut]  # a cut tensor's activation is a features output
    spec_of = get_method(method)
    # each column's gradients are read inside the regions its window wrote: a local method
    # weighs them there, another one reads them zero-padded to the whole map
    windowed = spec_of.uses_gradient and all(layer.entry["layout"] == "NCHW" for layer in layers)
    regions: dict[str, list[tuple[Any, ...] | None]] = {}
    logits, outputs = runner.gradients(features, seeds, extra, forward,
                                       backward=spec_of.uses_gradient,
                                       regions=regions if windowed else None)
    activations = [runner.to_numpy(features[cut[0]])]
    activations += [runner.to_numpy(features[layer.tensor])
                    if layer.tensor in cut else outputs[layer.tensor][:, 0]
                    for layer in layers[1:]]
    by_name = {id(layer.entry): layer for layer in layers}

    def cams_of(entry: dict[str, Any], given: np.ndarray, activation: np.ndarray,
                gradient: np.ndarray) -> np.ndarray:
        layer = by_name[id(entry)]
        access = runner.access(x, layer, given, features=features,
                               scorer=scorer)  # runs for methods needing more
        where = regions.get(layer.gradient)
        cams = np.zeros((*gradient.shape[:2], *activation.shape[2:]), np.float32)
        padded = None  # a column's window in zeros, the whole map (cleared after each use)
        for j in range(k):
            region = where[j] if where else None
            if region is None:  # anywhere
                cams[:, j] = compute_cams(activation, gradient[:, j], method, class_ids[:, j],
                                          access)
            elif spec_of.local:  # a detection's window: zero outside (or all zero)
                if cams[:, j][region].size:
                    cams[:, j][region] = compute_cams(activation[region],
                                                      gradient[:, j][region], method,
                                                      class_ids[:, j], access)
            else:
                padded = np.zeros_like(gradient[:, j]) if padded is None else padded
                padded[region] = gradient[:, j][region]
                cams[:, j] = compute_cams(activation, padded, method, class_ids[:, j], access)
                padded[region] = 0
        return cams

    gradients = [outputs[layer.gradient] for layer in layers]
    return logits, layer_maps([layer.entry for layer in layers], activations, gradients,
                              spec.input.size(x), cams_of)


def explain_task(
    runner: Runner, graph: ExplanationGraph | None, x: np.ndarray, targets: Any,
    top_k: int | None, method: str, score: str, fuse: str | None,
    geometry: Sequence[Geometry] | None = None, **options: Any,
) -> Explanation:
    """:meth:`Explainer.explain` for a detector, segmenter or text recognizer: read the
    outputs, choose each image's targets (:mod:`explainer.tasks`), one seed over the explained
    tensor per target, then the same per-layer maps."""
    spec = runner.spec
    get_method(method)
    check_score(score)
    renormalize = options.pop("renormalize", None)
    check_renormalize(renormalize)
    plan = planner(spec.task, spec.format, spec.labels, spec.num_classes, targets, score,
                   top_k=top_k, **options)
    classes = graph_classes(plan) if not renormalize else None
    if (classes is not None and graph is not None and method in graph.methods
            and score == "logit"):
        return segment_in_graph(runner, graph, x, plan, classes, method, geometry)
    features, forward = runner.prediction(x)
    names = [spec.head.logits, *spec.head.outputs]
    values = {name: runner.to_numpy(forward[name]) for name in names}
    explained = values[spec.head.logits]
    batch, size = x.shape[0], spec.input.size(x)
    shapes = [list(v.shape) for v in values.values()]
    if any(v.ndim == 0 or v.shape[0] != batch for v in values.values()):
        raise ExplainerError(f"the model's outputs {shapes} have no batch axis of "
                             f"{batch}; export it with a batch axis on every output")
    planned = [plan.plan({n: v[b] for n, v in values.items()}, explained[b], size)
               for b in range(batch)]
    plans = [p for p, _ in planned]
    k = max(map(len, plans), default=0)
    notes = [plan.nothing(b) for b, p in enumerate(plans) if not p] + plan.notes()
    seeds = plan.seeds(explained, plans)  # [B, K, ...], dense or by nonzero elements
    scores = np.full((batch, k), np.nan, np.float32)
    for b, row in enumerate(plans):
        if row:
            scores[b, : len(row)] = plan.scores(  # the image's row for each target, not copied
                np.broadcast_to(explained[b], (len(row), *explained.shape[1:])), row)

    def scorer(out: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return plan.scores(out, [plans[r][i] if i < len(plans[r]) else None
                                 for r, i in zip(rows, ids)])

    ids = np.tile(np.arange(seeds.shape[1]), (batch, 1))
    _, maps = (layer_cams(runner, x, features, ids, seeds, method, scorer, forward) if k
               else (None, {}))
    items = [[placed(plan.item(t), b, geometry) for t in row] for b, row in enumerate(plans)]
    # what the outputs read as (a text recognizer's transcripts), where the planner reads any
    transcripts = [t for _, t in planned] if any(t is not None for _, t in planned) else None
    explanation = task_explanation(spec.task, items, scores, maps, score, method, fuse,
                                   (batch, *size), notes, transcripts, runner.heatmaps)
    if renormalize:
        return renormalized_in_boxes(explanation, runner.heatmaps)
    return explanation


def segment_in_graph(runner: Runner, graph: ExplanationGraph, x: np.ndarray, plan: Any,
                     classes: list[int], method: str,
                     geometry: Sequence[Geometry] | None) -> Explanation:
    """:meth:`Explainer.explain` of a segmenter's classes as one run of its explanation graph
    (the mask of each class held constant inside the graph); a class an image does not
    predict gets no column, as in the two-graph path."""
    spec = runner.spec
    out = graph.run(x, GraphTargets(0, 0, np.array([classes], np.int64)), method)
    batch, size = x.shape[0], spec.input.size(x)
    items, columns = [], []
    for b in range(batch):
        targets = plan.plan({}, out["logits"][b], size)[0]
        items.append([placed(t.item, b, geometry) for t in targets])
        columns.append([classes.index(t.item.class_id) for t in targets])
    k = max(map(len, columns), default=0)
    maps = {}
    if k:
        picked = {key: np.zeros((batch, k, *out[key].shape[2:]), np.float32)
                  for key in ("cams", "heatmaps")}
        for b, row in enumerate(columns):
            for key in picked:
                picked[key][b, : len(row)] = out[key][b, row]
        maps = {spec.target.layer: LayerMaps(picked["cams"], picked["heatmaps"])}
    scores = np.full((batch, k), np.nan, np.float32)
    for b, row in enumerate(columns):
        scores[b, : len(row)] = out["scores"][b, row]
    notes = [plan.nothing(b) for b, row in enumerate(columns) if not row]
    return task_explanation(spec.task, items, scores, maps, "logit", method, None,
                            (batch, *size), notes)


def explain_seeded(runner: Runner, x: np.ndarray, targets: Any, seeds: dict[str, Any] | None,
                   method: str, score: str, fuse: str | None) -> Explanation:
    """:meth:`Explainer.explain` for ``seeds=`` or an ``{"embedding": vector}`` target: one
    given (or computed) seed over the explained tensor per map."""
    get_method(method)
    features = runner.features(x)
    (explained,) = runner.run(runner.outputs_session, features, [runner.spec.head.logits])
    explained = runner.to_numpy(explained)
    batch = x.shape[0]
    if seeds is not None:
        if targets is not None:
            raise TargetError("give either targets or seeds=, not both")
        rows = seed_rows_of(runner, seeds, explained)
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
    _, maps = layer_cams(runner, x, features, ids, rows, method, scored)
    values = scored(np.repeat(explained, k, axis=0), np.repeat(np.arange(batch), k),
                    np.tile(np.arange(k), batch)).reshape(batch, k).astype(np.float32)
    first = next(iter(maps.values()))
    return Explanation(
        heatmaps=fuse_maps(maps, fuse, runner.heatmaps), cams=first.cams,
        class_ids=np.full((batch, k), -1),
        scores=values, probabilities=np.full((batch, k), np.nan, np.float32),
        labels=None, logits=explained if explained.ndim == 2 else None, method=method,
        score=score, layers=maps if len(maps) > 1 else None, task=runner.spec.task,
    )


def seed_rows_of(runner: Runner, seeds: dict[str, Any], explained: np.ndarray) -> np.ndarray:
    """``seeds=`` as rows [B, K, ...] over the explained tensor.

    Raises:
        TargetError: another output named, or a seed of the wrong shape.
    """
    logits = runner.spec.head.logits
    names = runner.spec.output_names
    if not isinstance(seeds, dict) or len(seeds) != 1 or next(iter(seeds)) not in names:
        raise TargetError(f"seeds= takes one array by output name; this bundle "
                          f"differentiates {logits!r} (the model output "
                          f"{sorted(names - {logits}) or [logits]}), "
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


def placed(item: Any, b: int, geometry: Sequence[Geometry] | None) -> Any:
    """The detection, region or character with its box in the original image, where the
    geometry is known."""
    if geometry is None:
        return item
    return replace(item, image_box=geometry[b].to_original(item.box))
