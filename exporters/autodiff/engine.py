"""Reverse-mode automatic differentiation over ONNX graphs.

The engine follows micrograd's recipe: find the nodes on the path from ``wrt`` to
``output`` (forward-reachable from ``wrt`` *and* backward-reachable from ``output``),
seed the output's gradient with a new graph input, walk the path in reverse
topological order, call each node's rule from :data:`RULES` and accumulate (``Add``)
the gradients of values that are used several times.  Like PyTorch's
``derivatives.yaml`` a rule returns one gradient per node input (``None`` where the
input has no gradient); like tinygrad's gradient table, rules are small functions that
emit ONNX nodes through a :class:`GradContext`.

Rules of broadcasting ops (``Add``, ``Mul``, ``Where``, ``Expand`` ...) return their
gradients in the shape of the node's output; the engine sums them back to each
input's shape ("unbroadcast").  After the backward pass the engine removes every node
and initializer that neither the model outputs nor the gradient need.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from explainer.bundle import BACKWARD_PREFIX

from ..errors import GradientError, MissingGradientRule
from ..graph import MIN_OPSET, Graph, is_default_domain, prune
from .emitter import Emitter, GradContext

__all__ = [
    "RULES",
    "GradientRule",
    "build_gradient_graph",
    "differentiable",
    "gradient_path",
    "register",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradientRule:
    """A registered vector-Jacobian product.

    Attributes:
        fn: ``fn(ctx) -> list of gradient names (or None)``, one per node input.
        unbroadcast: whether ``fn`` returns gradients in the shape of output 0, which the
            engine then sums back to each input's shape (broadcasting ops).
        held: positions of float inputs held constant, like indices: no gradient flows into
            them even when they depend on ``wrt`` (``RoiAlign``'s boxes, which torchvision
            detaches), and what reaches the output only through them is off the path.
    """

    fn: Callable[[GradContext], Sequence[str | None]]
    unbroadcast: bool = False
    held: frozenset[int] = frozenset()

    def __call__(self, ctx: GradContext) -> Sequence[str | None]:
        return self.fn(ctx)


#: The gradient registry: ONNX op type (default domain) -> :class:`GradientRule`.
#: It is filled by :mod:`exporters.autodiff.rules`.
RULES: dict[str, GradientRule] = {}


def register(
    *op_types: str, unbroadcast: bool = False, held: Sequence[int] = ()
) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the gradient rule of ``op_types``.

    Args:
        *op_types: ONNX op types (default domain) the rule differentiates.
        unbroadcast: the rule returns gradients in output 0's shape; the engine reduces
            them to the inputs' shapes.
        held: input positions held constant (see :class:`GradientRule`).

    Returns:
        The decorator; it returns ``fn`` unchanged.
    """

    def decorator(fn: Callable[[GradContext], Sequence[str | None]]) -> Callable:
        for op_type in op_types:
            RULES[op_type] = GradientRule(fn, unbroadcast, frozenset(held))
        return fn

    return decorator




def differentiable(node: onnx.NodeProto) -> bool:
    """Whether ``node`` has a gradient rule (an op of the default domain in :data:`RULES`)."""
    return is_default_domain(node) and node.op_type in RULES


def gradient_path(
    graph: Graph, wrt: str, output: str, rules: Mapping[str, GradientRule] | None = None
) -> tuple[list[int], set[str]]:
    """Nodes (indices, topological order) on the float path ``wrt -> output`` and its tensors.

    Integer tensors (``Shape``, ``NonZero``, ``ArgMax``, ``TopK`` indices, the selection of a
    ``NonMaxSuppression``) are off the float path, and so are the nodes reaching ``output`` only
    through inputs that their rule (from ``rules``, default :data:`RULES`) holds constant.

    Raises:
        GradientError: ``wrt`` or ``output`` is not a value of the model, or ``output`` does
            not depend on ``wrt`` through float tensors (or only through held inputs).
    """
    known = {i.name for i in graph.model.graph.input} | set(graph.initializers)
    known |= set(graph.producer)
    for role, name in (("wrt", wrt), ("output", output)):
        if name not in known:
            raise GradientError(f"{role} tensor '{name}' is not a value of the model")
    nodes, tensors = graph.path(wrt, output)
    held = [(i, (rules or RULES).get(graph.nodes[i].op_type)) for i in nodes]
    if any(rule is not None and rule.held for _, rule in held):
        needed, kept = {output}, []
        for i, rule in reversed(held):
            node = graph.nodes[i]
            if any(o in needed for o in node.output if o):
                kept.append(i)
                needed.update(x for k, x in enumerate(node.input)
                              if x in tensors and not (rule and k in rule.held))
        if wrt not in needed:
            holders = sorted({graph.nodes[i].op_type for i, rule in held if rule and rule.held})
            raise GradientError(f"'{output}' depends on '{wrt}' only through inputs held "
                                f"constant (by {', '.join(holders)})")
        nodes, tensors = kept[::-1], needed
    if not nodes and wrt != output:
        raise GradientError(f"'{output}' does not depend on '{wrt}' through float tensors")
    return nodes, tensors


def build_gradient_graph(
    model: onnx.ModelProto | Graph,
    wrt: str | Sequence[str],
    output: str,
    *,
    seed_name: str = "seed",
    gradient_name: str | Sequence[str] = "gradient",
    rules: Mapping[str, GradientRule] | None = None,
) -> onnx.ModelProto:
    """Return ``model`` extended with the gradient of ``output`` with respect to ``wrt``.

    Args:
        model: the model to differentiate (its other inputs are treated as constants), or its
            :class:`~exporters.graph.Graph` when shapes are already known (a ModelProto is
            shape-inferred once here).
        wrt: the tensor to differentiate with respect to (usually a graph input), or several:
            one backward pass gives each its gradient (a layer sweep).
        output: the tensor to differentiate, usually a graph output.
        seed_name: name of the new graph input holding the output's cotangent; it has
            the element type and shape (symbolic dims included) of ``output``.
        gradient_name: name of the new graph output ``d(sum(seed * output)) / d(wrt)``,
            shaped like ``wrt``; one name per ``wrt`` when several.
        rules: rules that replace :data:`RULES` entries for this graph (the guided ReLU of
            Guided Backpropagation, say).

    Returns:
        A new model whose inputs are ``model``'s inputs + ``[seed_name]`` and whose
        outputs are ``model``'s outputs + the gradients.  It holds only the nodes
        these outputs need (no gradients of weights, no dead nodes).

    Raises:
        MissingGradientRule: a node on the path has no gradient rule.
        GradientError: the model cannot be differentiated (unknown names, opset older
            than 13, output independent of ``wrt``, shapes a rule needs are unknown...).
    """
    wrts = [wrt] if isinstance(wrt, str) else list(wrt)
    names = [gradient_name] if isinstance(gradient_name, str) else list(gradient_name)
    if len(names) != len(wrts):
        raise GradientError(f"{len(wrts)} tensors to differentiate but {len(names)} names")
    table = {**RULES, **(rules or {})}
    graph = model if isinstance(model, Graph) else Graph(model, infer=True)
    if graph.opset < MIN_OPSET:
        raise GradientError(f"opset {graph.opset} is not supported; need {MIN_OPSET}+")
    paths = [gradient_path(graph, w, output, table) for w in wrts]
    nodes = sorted(set().union(*(set(n) for n, _ in paths)))
    on_path = set().union(*(t for _, t in paths))
    for i in nodes:
        node = graph.nodes[i]
        if not (is_default_domain(node) and node.op_type in table):
            raise MissingGradientRule(node)
    emitter = Emitter(graph)
    for name in (seed_name, *names):
        if name in emitter.used:
            raise GradientError(f"name '{name}' is already used in the model")
    emitter.used.update((seed_name, *names))
    emitter.elem_types[seed_name] = graph.elem_type(output) or TensorProto.FLOAT
    logger.debug("differentiating %d nodes from %s to '%s'", len(nodes), wrts, output)

    grads = _backward(graph, emitter, nodes, on_path, {output: seed_name}, table)
    outputs = [(grads[w], w, name) for w, name in zip(wrts, names, strict=True)]
    return _assemble(graph, emitter, outputs, output, seed_name)


def _backward(
    graph: Graph,
    emitter: Emitter,
    nodes: list[int],
    on_path: set[str],
    grads: dict[str, str],
    table: Mapping[str, GradientRule],
) -> dict[str, str]:
    """The reverse walk: from the seeded output back, call each node's rule and accumulate the
    gradients of values used several times. Returns value name -> gradient name."""
    for i in reversed(nodes):
        node = graph.nodes[i]
        dys = [grads.get(o) if o else None for o in node.output]
        if all(dy is None for dy in dys):
            continue
        try:
            _node_backward(graph, emitter, i, dys, on_path, grads, table)
        except GradientError as err:
            if err.node_index is None:
                err.node_index = i  # which node failed (inspect marks what lies before it)
            raise
    return grads


def _node_backward(
    graph: Graph, emitter: Emitter, i: int, dys: list[str | None], on_path: set[str],
    grads: dict[str, str], table: Mapping[str, GradientRule],
) -> None:
    """Node ``i``'s rule: its inputs' gradients, accumulated into ``grads``."""
    node = graph.nodes[i]
    ctx = GradContext(emitter, node, graph.node_name(i), dys, on_path)
    rule = table[node.op_type]
    dxs = list(rule(ctx))
    dxs += [None] * (len(node.input) - len(dxs))
    for k, (name, dx) in enumerate(zip(node.input, dxs, strict=False)):
        if not ctx.needs(k) or k in rule.held:
            continue
        if dx is None:
            raise ctx.error(f"the rule gives no gradient for input {k} ('{name}')")
        if rule.unbroadcast:
            dx = ctx.unbroadcast(dx, graph.shape(node.output[0]), name)
        if name in grads:
            dx = ctx.op("Add", grads[name], dx, name_hint=f"accumulate/{name}")
        grads[name] = dx


def _assemble(
    graph: Graph,
    emitter: Emitter,
    gradients: list[tuple[str, str, str]],
    output: str,
    seed_name: str,
) -> onnx.ModelProto:
    """The forward model plus the emitted nodes, seed input and gradient outputs, pruned.

    ``gradients``: (gradient value, the tensor it differentiates, its public name) each.
    """
    nodes = emitter.nodes
    produced = {o for node in nodes for o in node.output}
    renames: dict[str, str] = {}
    for grad, _, public in gradients:  # an emitted value takes the first public name
        if grad in produced and grad not in renames:
            renames[grad] = public
    for node in nodes:
        for seq in (node.input, node.output):
            for k, name in enumerate(seq):
                if name in renames:
                    seq[k] = renames[name]
    for grad, _, public in gradients:  # the seed itself, a forward value, a shared gradient
        if renames.get(grad) != public:
            source = renames.get(grad, grad)
            nodes.append(helper.make_node("Identity", [source], [public],
                                          name=f"{BACKWARD_PREFIX}out/{public}"))

    result = onnx.ModelProto()
    result.CopyFrom(graph.model)
    g = result.graph
    g.node.extend(nodes)
    g.initializer.extend(emitter.initializers)
    seed_type = graph.elem_type(output) or TensorProto.FLOAT
    g.input.append(helper.make_tensor_value_info(seed_name, seed_type, graph.shape(output)))
    for _, wrt, public in gradients:
        wrt_type = graph.elem_type(wrt) or TensorProto.FLOAT
        g.output.append(helper.make_tensor_value_info(public, wrt_type, graph.shape(wrt)))
    prune(g, [o.name for o in g.output])
    return result
