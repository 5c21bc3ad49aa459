"""The model-randomization sanity check (Adebayo et al. 2018) over a bundle's head.

The head graph holds the layers after the cut. Its layers, for this check, are the nodes that
read float initializers (or ``Constant`` nodes, as Paddle's converter writes weights) of at
least two values (weights and biases; scalar constants of the
gradient computation are left alone), in graph order: the forward pass comes first in a
bundle's head, and the gradient nodes read the same initializers, so replacing an initializer
changes the forward pass and its gradient together. A randomized tensor is drawn from
``N(mean, std)`` of the original tensor (seeded), keeping its shape and dtype; a tensor with no
negative value (a BatchNormalization variance) takes the absolute values of its draw.

* cascading: the last layer, then the last two, ... down to every head layer;
* independent: each layer alone.

Each randomized head gives an Explainer (without the explanation graph, which holds the
original weights) whose maps for the same classes are compared with the original maps by
Spearman rank correlation and SSIM (:mod:`.numeric`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..runtime import Explainer
from .metrics import Pairs, Values
from .numeric import minmax, spearman, ssim
from .spec import EvaluationError

__all__ = ["ExplainFn", "head_layers", "randomized_head", "sanity"]

#: (explainer, x, class ids [B, K]) -> heatmaps [B, K, H, W]
ExplainFn = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
           onnx.TensorProto.BFLOAT16)


def _weights_as_initializers(head: onnx.ModelProto) -> onnx.ModelProto:
    """``head`` with its float ``Constant`` nodes of two or more values as initializers of the
    same names (converters such as Paddle's write weights that way): the same graph, whose
    weights the check can find and replace."""
    constants = [n for n in head.graph.node if n.op_type == "Constant" and len(n.attribute) == 1
                 and n.attribute[0].name == "value" and n.attribute[0].t.data_type in _FLOATS
                 and int(np.prod(n.attribute[0].t.dims)) >= 2]
    if not constants:
        return head
    model = onnx.ModelProto()
    model.CopyFrom(head)
    moved = {n.output[0] for n in constants}
    kept = [n for n in model.graph.node if not (n.op_type == "Constant" and n.output[0] in moved)]
    for node in constants:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def head_layers(head: onnx.ModelProto) -> list[list[str]]:
    """The head's layers in graph order: for each node reading float weights (initializers, or
    ``Constant`` nodes) of two or more values that no earlier node read, their names."""
    head = _weights_as_initializers(head)
    floats = {t.name for t in head.graph.initializer
              if t.data_type in _FLOATS and int(np.prod(t.dims)) >= 2}
    seen: set[str] = set()
    layers = []
    for node in head.graph.node:
        names = [n for n in dict.fromkeys(node.input) if n in floats and n not in seen]
        if names:
            seen.update(names)
            layers.append(names)
    return layers


def randomized_head(head: onnx.ModelProto, names: Sequence[str], seed: int) -> onnx.ModelProto:
    """A copy of ``head`` whose initializers ``names`` are redrawn from ``N(mean, std)`` of each
    tensor (``numpy.random.default_rng(seed)``; absolute values for a non-negative tensor);
    weights held in ``Constant`` nodes become initializers first."""
    model = onnx.ModelProto()
    model.CopyFrom(_weights_as_initializers(head))
    rng = np.random.default_rng(seed)
    wanted = set(names)
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name in wanted:
            value = numpy_helper.to_array(tensor, base_dir="")
            drawn = rng.normal(float(value.mean()), float(value.std()), value.shape)
            if value.min() >= 0:  # a non-negative tensor (a variance) stays non-negative
                drawn = np.abs(drawn)
            model.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(drawn.astype(value.dtype), tensor.name))
    return model


def _default_explain(method: str) -> ExplainFn:
    def run(explainer: Any, x: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
        return explainer.explain(x, targets=class_ids, method=method).heatmaps
    return run


def sanity(pairs: Pairs, explainer: Any, x: np.ndarray, method: str,
           explain_fn: ExplainFn | None = None, seed: int = 0, threshold: float = 0.9,
           independent: bool = True, bar: Any = None) -> tuple[Values, dict[str, Any]]:
    """Cascading (and ``independent``) randomization of the head; per pair the Spearman
    correlation with the fully randomized head's map, and a verdict: the check passes when
    the mean of those correlations is at most ``threshold`` (NaN, a constant map, counts as
    changed)."""
    run = explain_fn or _default_explain(method)
    bundle = explainer.bundle
    layers = head_layers(bundle.head)
    if not layers:
        raise EvaluationError("the sanity check found no float weights (initializers or "
                              "Constant nodes of two or more values) in the bundle's head "
                              "graph to randomize: the layers after the cut hold none; cut "
                              "the model at an earlier layer (--layer)")
    runs: list[tuple[str, list[str]]] = [
        ("cascading", [n for layer in layers[-depth:] for n in layer])
        for depth in range(1, len(layers) + 1)]
    if independent:
        runs += [("independent", layer) for layer in layers]
    manifest = {k: v for k, v in bundle.manifest.items() if k != "explanation"}
    results: dict[str, list[dict[str, Any]]] = {"cascading": [], "independent": []}
    final: list[float] = []
    for number, (kind, names) in enumerate(runs):
        randomized = replace(bundle, head=randomized_head(bundle.head, names, seed + number),
                             explanation=None, manifest=manifest)
        with Explainer(randomized, providers=explainer.providers,
                       explanation_graph=False) as other:
            maps = np.asarray(run(other, x, pairs.class_ids), np.float64)
        rho = [spearman(pairs.maps[b, k], minmax(maps[b, k])) for b, k in pairs]
        sim = [ssim(pairs.maps[b, k], minmax(maps[b, k])) for b, k in pairs]
        results[kind].append({"initializers": names, "spearman": rho, "ssim": sim})
        if kind == "cascading" and len(results[kind]) == len(layers):
            final = rho
        if bar is not None:
            bar.update(x.shape[0])
    values = pairs.table(final)
    mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    verdict = {
        "passed": not (mean > threshold), "threshold": threshold, "spearman": mean,
        "layers": len(layers), **results,
        "message": (f"the maps change under full head randomization (mean Spearman "
                    f"{mean:.3f} <= {threshold})" if not mean > threshold else
                    f"the maps barely change when the head is randomized (mean Spearman "
                    f"{mean:.3f} > {threshold}): they do not depend on the model's weights"),
    }
    return {"sanity": (values, None)}, verdict

