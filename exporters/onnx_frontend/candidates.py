"""Candidate layers of a deployed model and the one rule that picks the automatic target.

* **Path.** Only tensors on the float data path from the image input to the explained output
  count (:meth:`exporters.graph.Graph.path`, the rule the gradient engine uses too).
* **Clean cut.** A candidate is a *clean cut* when every path from the input to the output
  goes through it (the head then depends on the image through that tensor alone, which is what
  Grad-CAM assumes). With the tensors numbered in topological order, ``T`` is a clean cut
  exactly when no edge ``u -> v`` of the path jumps over it (``pos(u) < pos(T) < pos(v)``).
* **Automatic target** (:func:`auto_targets`): the *last spatial activation that is a clean
  cut, has a known NCHW/NHWC layout and a differentiable head*: typically the tensor right
  before global pooling (ResNet ``layer4``, the ReLU after DenseNet's ``features``). For VGG
  and AlexNet this is the output of the last MaxPool (the adaptive average pool that follows
  is an identity at the native resolution); for SqueezeNet the ReLU after the classifier's
  final 1x1 convolution. A tensor is *spatial* when it has rank 4 and its height and width
  are not both 1.
* **Token models.** A model with attention (a ``Softmax`` over rank >= 3 scores on the path)
  and no feature map after its last attention is explained from its tokens ``[N, L, C]``
  (layout ``"NLC"``): the auto target is the ``LayerNormalization`` that feeds the last
  attention, i.e. the last block's first LayerNorm, as pytorch-grad-cam recommends for ViT.
  A model whose attention blocks end in feature maps (Swin's last stage, NHWC) is explained
  from the last of those, as for a CNN. Token candidates are LayerNorm outputs;
  they need not be clean cuts (the residual stream also crosses the cut, and the gradient
  is the one through the attention branch, as autograd gives it at that tensor). Their grid
  comes from :func:`explainer.activations.infer_token_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from explainer.activations import infer_token_grid
from explainer.errors import OnnxcamError

from ..autodiff import build_gradient_graph, differentiable
from ..errors import GradientError, OnnxExportError
from ..graph import Dim, Graph
from ..layouts import SUPPORTED_LAYOUTS, detect_layouts, shape_layout

__all__ = ["Candidate", "analyse", "auto_targets", "gradient_checked", "image_input"]


@dataclass(frozen=True)
class Candidate:
    """A tensor a model can be explained from.

    Attributes:
        tensor: the tensor name.
        shape: its inferred shape (ints for static dims, names for symbolic ones, None unknown).
        node: name of the node that produces it.
        op_type: op type of that node.
        layout: ``"NCHW"``, ``"NHWC"``, another axis string, or None when unknown.
        differentiable: every op on the head's path past it has a gradient rule.
        unsupported_ops: ``"OpType (node name)"`` of the head ops without a gradient rule.
        clean_cut: every path from the input to the output goes through this tensor.
    """

    tensor: str
    shape: tuple[Dim, ...]
    node: str
    op_type: str
    layout: str | None
    differentiable: bool
    unsupported_ops: tuple[str, ...] = field(default=())
    clean_cut: bool = True
    token_grid: tuple[int, int] | None = None
    prefix_tokens: int | None = None
    feeds_attention: bool = False

    @property
    def explainable(self) -> bool:
        """Whether ``target="auto"`` may pick it: differentiable, a known layout, and a clean
        cut for feature maps (tokens need not be)."""
        if self.layout == "NLC":
            return self.differentiable and self.token_grid is not None
        return self.clean_cut and self.differentiable and self.layout in SUPPORTED_LAYOUTS


def auto_targets(candidates: list[Candidate], layout: str = "auto") -> list[Candidate]:
    """The candidates ``target="auto"`` tries, best first (the one rule for export and inspect).

    Args:
        candidates: as :func:`analyse` returns them (topological order).
        layout: the layout the caller forces, or ``"auto"``; a forced layout stands in for an
            unknown one.
    """
    tokens = [c for c in candidates if c.layout == "NLC" and c.explainable]
    maps = [
        c for c in candidates
        if c.layout != "NLC" and c.clean_cut and c.differentiable
        and (layout != "auto" or c.layout in SUPPORTED_LAYOUTS)
    ]
    attention = [i for i, c in enumerate(candidates) if c.feeds_attention and c.explainable]
    # tokens first when no feature map follows the last attention (ViT, DeiT); a model whose
    # attention blocks end in feature maps (Swin's last stage) is explained from those
    if attention and not any(candidates.index(c) > attention[-1] for c in maps):
        return sorted(tokens[::-1], key=lambda c: not c.feeds_attention) + maps[::-1]
    return maps[::-1] + tokens[::-1]


def image_input(g: Graph) -> str:
    """The model's one non-initializer input.

    Raises:
        OnnxExportError: the model has no input or several.
    """
    inputs = g.graph_inputs()
    if len(inputs) != 1:
        raise OnnxExportError(
            f"the model has {len(inputs)} inputs {inputs}; onnxcam explains single-input image "
            "models"
        )
    return inputs[0]


def _positions(g: Graph, source: str, nodes: list[int], tensors: set[str], output: str):
    """Topological positions of the path's tensors, and for each position whether an edge of
    the path jumps over it."""
    position = {source: 0}
    for i in nodes:
        for o in g.nodes[i].output:
            if o in tensors or o == output:
                position.setdefault(o, len(position))
    coverage = np.zeros(len(position) + 1, dtype=np.int64)
    for i in nodes:
        node = g.nodes[i]
        sources = [position[x] for x in node.input if x in position]
        targets = [position[o] for o in node.output if o in position]
        if sources and targets and max(targets) - min(sources) > 1:
            coverage[min(sources) + 1] += 1
            coverage[max(targets)] -= 1
    return position, np.cumsum(coverage) > 0


def _blocked(g: Graph, nodes: list[int], tensors: set[str]) -> dict[str, list[int]]:
    """For each path tensor, the nodes without a gradient rule downstream of it."""
    on_path = set(nodes)
    blocked: dict[str, list[int]] = {}
    for u in (i for i in nodes if not differentiable(g.nodes[i])):
        stack, seen = [x for x in g.nodes[u].input if x in tensors], set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            blocked.setdefault(name, []).append(u)
            p = g.producer.get(name)
            if p is not None and p in on_path:
                stack.extend(x for x in g.nodes[p].input if x in tensors)
    return blocked


def analyse(g: Graph, output: str) -> tuple[list[Candidate], dict[str, str]]:
    """Candidates (topological order) on the path to ``output``, and the tensor layouts.

    Raises:
        OnnxExportError: ``output`` does not depend on the image input through float tensors.
    """
    source = image_input(g)
    layouts = detect_layouts(g)
    nodes, tensors = g.path(source, output)
    if not nodes:
        raise OnnxExportError(
            f"output {output!r} does not depend on the input {source!r} through float tensors"
        )
    position, jumped = _positions(g, source, nodes, tensors, output)
    blocked = _blocked(g, nodes, tensors)
    attention_norm = _last_attention_norm(g, nodes)
    candidates = []
    for name, pos in position.items():
        if name in (source, output) or not g.is_float(name):
            continue
        if g.rank(name) == 3 and g.nodes[g.producer[name]].op_type == "LayerNormalization":
            candidates.append(_token_candidate(g, name, blocked, name == attention_norm))
            continue
        if g.rank(name) != 4:
            continue
        shape = g.shape(name) or ()
        layout = layouts.get(name) or shape_layout(shape)
        if layout in SUPPORTED_LAYOUTS:
            spatial = [shape[layout.index("H")], shape[layout.index("W")]]
        else:
            spatial = list(shape[1:])
        if sum(1 for d in spatial if d != 1) < (2 if layout is None else 1):
            continue
        producer = g.producer[name]
        ops = _unsupported(g, name, blocked)
        candidates.append(Candidate(
            tensor=name,
            shape=tuple(shape),
            node=g.node_name(producer),
            op_type=g.nodes[producer].op_type,
            layout=layout,
            differentiable=not ops,
            unsupported_ops=ops,
            clean_cut=not bool(jumped[pos]),
        ))
    return candidates, layouts


def _unsupported(g: Graph, name: str, blocked: dict[str, list[int]]) -> tuple[str, ...]:
    return tuple(
        f"{g.nodes[u].op_type} ({g.node_name(u)})" for u in sorted(set(blocked.get(name, [])))
    )


def _last_attention_norm(g: Graph, nodes: list[int]) -> str | None:
    """The LayerNorm output nearest upstream of the last attention Softmax on the path."""
    attention = [i for i in nodes if g.nodes[i].op_type == "Softmax"
                 and (g.rank(g.nodes[i].input[0]) or 0) >= 3]
    if not attention:
        return None
    frontier, seen = [attention[-1]], set()
    while frontier:  # breadth first: the nearest LayerNorm
        following = []
        for i in frontier:
            for name in g.nodes[i].input:
                p = g.producer.get(name)
                if p is None or p in seen:
                    continue
                seen.add(p)
                if g.nodes[p].op_type == "LayerNormalization" and g.rank(name) == 3:
                    return name
                following.append(p)
        frontier = following
    return None


def _token_candidate(
    g: Graph, name: str, blocked: dict[str, list[int]], feeds_attention: bool
) -> Candidate:
    """A ``[N, L, C]`` LayerNorm output, with its token grid when one fits."""
    shape = g.shape(name) or ()
    source = g.shape(image_input(g)) or ()
    size = None
    if len(source) == 4 and all(isinstance(d, int) for d in source[1:]):
        size = (source[2], source[3]) if source[1] in (1, 3, 4) else (source[1], source[2])
    grid, prefix = None, None
    if isinstance(shape[1], int):
        try:
            grid, prefix = infer_token_grid(shape[1], size)
        except OnnxcamError:
            pass
    ops = _unsupported(g, name, blocked)
    producer = g.producer[name]
    return Candidate(
        tensor=name, shape=tuple(shape), node=g.node_name(producer),
        op_type=g.nodes[producer].op_type, layout="NLC", differentiable=not ops,
        unsupported_ops=ops, clean_cut=False, token_grid=grid, prefix_tokens=prefix,
        feeds_attention=feeds_attention,
    )


def gradient_checked(g: Graph, candidates: list[Candidate], output: str) -> list[Candidate]:
    """The candidates after the check an export runs: building the gradient of ``output``.

    :func:`analyse` marks a candidate differentiable when every op past it has a rule; a rule
    may still refuse its node (it needs a rank shape inference left unknown, say). One gradient
    graph, from the earliest differentiable candidate (a clean cut where one is), shows it: when
    a rule fails, every candidate whose head holds that node (those the node is reached from)
    is marked not differentiable, that node and why listed in its ``unsupported_ops``. So
    ``onnxcam inspect`` never promises a target the export refuses.
    """
    usable = [c for c in candidates if c.differentiable and c.layout != "NLC"]
    start = next((c for c in usable if c.clean_cut), usable[0] if usable else None)
    if start is None:
        return candidates
    try:
        build_gradient_graph(g, start.tensor, output)
        return candidates
    except GradientError as err:
        failed, reason = err.node_index, str(err)
    if failed is None:  # not one node's rule: no candidate can be trusted
        blocked = {c.tensor for c in candidates}
        cause = f"gradient: {reason}"
    else:
        node = g.nodes[failed]
        # what reaches the node's inputs from the start: their heads hold the node
        blocked = set().union(*(g.path(start.tensor, x)[1] for x in node.input if x))
        name = g.node_name(failed)
        cause = reason if f"'{name}'" in reason else f"{node.op_type} ({name}): {reason}"
    return [c if c.tensor not in blocked or not c.differentiable else replace(
        c, differentiable=False, unsupported_ops=(*c.unsupported_ops, cause))
        for c in candidates]
