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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "RULES",
    "Dim",
    "GradContext",
    "GradientError",
    "GradientRule",
    "MissingGradientRule",
    "build_gradient_graph",
    "has_rule",
    "path_ops",
    "register",
    "unsupported_nodes",
]

logger = logging.getLogger(__name__)

#: A dimension as reported by :meth:`GradContext.shape`: an ``int`` for a static
#: size, a ``str`` for a symbolic one (``dim_param``) and ``None`` when unknown.
Dim = int | str | None

FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)
MIN_OPSET = 13
_INT64_OPS = frozenset({"Shape", "Size", "ArgMax", "ArgMin", "NonZero"})
_BOOL_OPS = frozenset(
    {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Not", "Xor"}
)


class GradientError(Exception):
    """Base class of the errors raised while building a gradient graph."""


class MissingGradientRule(GradientError):
    """A node on the path from ``wrt`` to ``output`` has an op without gradient rule."""

    def __init__(self, node: onnx.NodeProto) -> None:
        self.op_type = node.op_type
        self.node_name = node.name
        domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
        super().__init__(
            f"no gradient rule for op '{domain}{node.op_type}' (node '{node.name}'); choose a "
            "target layer after this node, or add a rule in exporters/autodiff/rules.py"
        )


@dataclass(frozen=True)
class GradientRule:
    """A registered vector-Jacobian product.

    Attributes:
        fn: ``fn(ctx) -> list of gradient names (or None)``, one per node input.
        unbroadcast: whether ``fn`` returns gradients in the shape of output 0, which the
            engine then sums back to each input's shape (broadcasting ops).
    """

    fn: Callable[[GradContext], Sequence[str | None]]
    unbroadcast: bool = False

    def __call__(self, ctx: GradContext) -> Sequence[str | None]:
        return self.fn(ctx)


#: The gradient registry: ONNX op type (default domain) -> :class:`GradientRule`.
#: It is filled by :mod:`exporters.autodiff.rules`.
RULES: dict[str, GradientRule] = {}


def register(*op_types: str, unbroadcast: bool = False) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the gradient rule of ``op_types``.

    Args:
        *op_types: ONNX op types (default domain) the rule differentiates.
        unbroadcast: the rule returns gradients in output 0's shape; the engine reduces
            them to the inputs' shapes.

    Returns:
        The decorator; it returns ``fn`` unchanged.
    """

    def decorator(fn: Callable[[GradContext], Sequence[str | None]]) -> Callable:
        for op_type in op_types:
            RULES[op_type] = GradientRule(fn, unbroadcast)
        return fn

    return decorator


def has_rule(op_type: str) -> bool:
    """Return whether ``op_type`` (default ONNX domain) has a gradient rule."""
    return op_type in RULES


def _is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


# --------------------------------------------------------------------------- analysis


@dataclass
class _Analysis:
    """Types of the values of a model (after shape inference) and its constants."""

    model: onnx.ModelProto
    types: dict[str, onnx.TypeProto] = field(default_factory=dict)
    constants: dict[str, onnx.TensorProto] = field(default_factory=dict)
    opset: int = 0

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Analysis:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception as exc:  # inference is best effort; rules ask for what they need
            logger.warning("shape inference failed (%s); continuing without it", exc)
            inferred = model
        analysis = cls(model)
        graph = inferred.graph
        for value in [*graph.input, *graph.value_info, *graph.output]:
            if value.type.HasField("tensor_type"):
                analysis.types[value.name] = value.type
        for init in model.graph.initializer:
            analysis.constants[init.name] = init
            if init.name not in analysis.types:
                analysis.types[init.name] = helper.make_tensor_type_proto(
                    init.data_type, list(init.dims)
                )
        for node in model.graph.node:
            if node.op_type == "Constant" and _is_default_domain(node):
                attr = {a.name: a for a in node.attribute}
                if "value" in attr:
                    analysis.constants[node.output[0]] = attr["value"].t
        analysis.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0
        )
        return analysis

    def elem_type(self, name: str) -> int:
        type_ = self.types.get(name)
        return type_.tensor_type.elem_type if type_ is not None else TensorProto.UNDEFINED

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        type_ = self.types.get(name)
        if type_ is None or not type_.tensor_type.HasField("shape"):
            return None
        dims: list[Dim] = []
        for dim in type_.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        return tuple(dims)

    def is_float(self, name: str) -> bool:
        elem_type = self.elem_type(name)
        return elem_type == TensorProto.UNDEFINED or elem_type in FLOAT_TYPES


def _active_values(model: onnx.ModelProto, analysis: _Analysis, wrt: str) -> set[str]:
    """Float values that depend on ``wrt`` (forward reachability through float values)."""
    active = {wrt}
    for node in model.graph.node:
        if any(name in active for name in node.input if name):
            ste = node.op_type == "QuantizeLinear"  # integer output, straight-through rule
            active.update(o for o in node.output if o and (ste or analysis.is_float(o)))
    return active


def _path(
    model: onnx.ModelProto, analysis: _Analysis, wrt: str, output: str
) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes on the path wrt -> output (topological order) and the active values."""
    active = _active_values(model, analysis, wrt)
    needed = {output} if output in active else set()
    on_path: list[onnx.NodeProto] = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output if o) and any(i in active for i in node.input if i):
            on_path.append(node)
            needed.update(i for i in node.input if i in active)
    on_path.reverse()
    return on_path, active


def _check_names(model: onnx.ModelProto, wrt: str, output: str) -> None:
    graph = model.graph
    known = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    known.update(o for node in graph.node for o in node.output)
    for role, name in (("wrt", wrt), ("output", output)):
        if name not in known:
            raise GradientError(f"{role} tensor '{name}' is not a value of the model")


def path_ops(model: onnx.ModelProto, wrt: str, output: str) -> list[onnx.NodeProto]:
    """Return the nodes on the differentiable path from ``wrt`` to ``output``.

    Args:
        model: the model.
        wrt: name of the tensor to differentiate with respect to.
        output: name of the tensor to differentiate.

    Returns:
        The nodes, in topological order, that depend on ``wrt`` through float tensors and
        that ``output`` depends on.
    """
    _check_names(model, wrt, output)
    return _path(model, _Analysis.of(model), wrt, output)[0]


def unsupported_nodes(model: onnx.ModelProto, wrt: str, output: str) -> list[onnx.NodeProto]:
    """Return the nodes of :func:`path_ops` whose op type has no gradient rule."""
    return [
        node
        for node in path_ops(model, wrt, output)
        if not (_is_default_domain(node) and has_rule(node.op_type))
    ]


# --------------------------------------------------------------------------- builder


class _Builder:
    """Accumulates generated nodes and initializers with unique, readable names."""

    def __init__(self, model: onnx.ModelProto, analysis: _Analysis) -> None:
        self.analysis = analysis
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        graph = model.graph
        self.used: set[str] = {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
        self.used.update(i.name for i in graph.initializer)
        for node in graph.node:
            self.used.update(node.output)
            self.used.update(node.input)
            self.used.add(node.name)
        self.const_cache: dict[tuple[Any, ...], str] = {}
        # element types / shapes of generated values (only where cheaply known)
        self.elem_types: dict[str, int] = {}

    def unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self.used:
            k += 1
            candidate = f"{name}_{k}"
        self.used.add(candidate)
        return candidate

    def const(self, value: np.ndarray, prefix: str) -> str:
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self.const_cache:
            name = self.unique(f"{prefix}/const")
            self.initializers.append(numpy_helper.from_array(value, name))
            self.const_cache[key] = name
            self.elem_types[name] = helper.np_dtype_to_tensor_dtype(value.dtype)
        return self.const_cache[key]


class GradContext:
    """What a rule sees of the node it differentiates, and how it emits nodes.

    Attributes:
        node: the forward node.
        inputs: the node's input names (``""`` for omitted optional inputs).
        outputs: the node's output names.
        dys: gradient names of the node's outputs (``None``: no gradient flows back).
        opset: default-domain opset of the model; emitted ops must be valid there.
    """

    def __init__(
        self,
        builder: _Builder,
        node: onnx.NodeProto,
        node_name: str,
        dys: list[str | None],
        active: set[str],
    ) -> None:
        self._b = builder
        self.node = node
        self.inputs: list[str] = list(node.input)
        self.outputs: list[str] = list(node.output)
        self.dys = dys
        self.opset = builder.analysis.opset
        self._prefix = f"grad/{node_name}"
        self._active = active
        self._attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # ---- what the rule reads

    @property
    def dy(self) -> str:
        """Gradient of output 0 (zeros if no gradient flows into it)."""
        return self.dy_or_zeros(0)

    def dy_or_zeros(self, i: int) -> str:
        """Gradient of output ``i``, or zeros of its shape when none flows back."""
        dy = self.dys[i] if i < len(self.dys) else None
        return dy if dy is not None else self.zeros_like(self.outputs[i])

    def needs(self, i: int) -> bool:
        """Whether input ``i`` depends on ``wrt`` and so needs a gradient."""
        return i < len(self.inputs) and self.inputs[i] in self._active

    def attr(self, name: str, default: Any = None) -> Any:
        """Attribute value of the node (strings decoded), or ``default``."""
        value = self._attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        """Shape of a forward value: ints, symbols (str) or None; None if rank unknown."""
        return self._b.analysis.shape(name)

    def static_shape(self, name: str, from_axis: int = 0) -> tuple[Dim, ...]:
        """Shape of a forward value whose dims from ``from_axis`` on must be static."""
        shape = self.shape(name)
        if shape is None or not all(isinstance(d, int) for d in shape[from_axis:]):
            raise self.error(f"the gradient needs the static shape of '{name}', got {shape}")
        return shape

    def rank(self, name: str) -> int:
        """Rank of a forward value (it must be known)."""
        shape = self.shape(name)
        if shape is None:
            raise GradientError(
                f"gradient of node '{self.node.name}' ({self.node.op_type}) needs the rank "
                f"of '{name}'"
            )
        return len(shape)

    def dtype(self, name: str) -> int:
        """ONNX element type (``TensorProto.FLOAT`` ...) of a value."""
        elem_type = self._b.elem_types.get(name) or self._b.analysis.elem_type(name)
        return elem_type or TensorProto.FLOAT

    def np_dtype(self, name: str) -> np.dtype:
        """NumPy dtype of a value."""
        return helper.tensor_dtype_to_np_dtype(self.dtype(name))

    def constant_value(self, name: str) -> np.ndarray | None:
        """Value of an initializer or ``Constant`` output, else ``None``."""
        tensor = self._b.analysis.constants.get(name) if name else None
        return None if tensor is None else numpy_helper.to_array(tensor)

    def error(self, message: str) -> GradientError:
        """A :class:`GradientError` naming the node."""
        return GradientError(f"node '{self.node.name}' ({self.node.op_type}): {message}")

    # ---- what the rule writes

    def op(
        self,
        op_type: str,
        *inputs: str | None,
        name_hint: str | None = None,
        num_outputs: int = 1,
        **attrs: Any,
    ) -> Any:
        """Emit a node; return its output name (a list when ``num_outputs > 1``).

        ``None`` inputs become omitted optional inputs (``""``).
        """
        base = f"{self._prefix}/{name_hint or op_type}"
        outputs = [self._b.unique(base if k == 0 else f"{base}:{k}") for k in range(num_outputs)]
        names = [i or "" for i in inputs]
        while names and not names[-1]:
            names.pop()  # trailing omitted inputs are left out
        node = helper.make_node(
            op_type,
            names,
            outputs,
            name=self._b.unique(f"{base}/node"),
            **{k: v for k, v in attrs.items() if v is not None},
        )
        self._b.nodes.append(node)
        self._b.elem_types[outputs[0]] = self._elem_type(op_type, inputs, attrs)
        if op_type == "MaxPool" and num_outputs > 1:
            self._b.elem_types[outputs[1]] = TensorProto.INT64
        return outputs[0] if num_outputs == 1 else outputs

    def _elem_type(self, op_type: str, inputs: Sequence[str | None], attrs: dict) -> int:
        """Element type of output 0 of an emitted node (for ``dtype``/``cast_like``)."""
        if op_type == "Cast":
            return attrs["to"]
        if op_type == "ConstantOfShape":
            return attrs["value"].data_type
        if op_type in _INT64_OPS:
            return TensorProto.INT64
        if op_type in _BOOL_OPS:
            return TensorProto.BOOL
        source = inputs[1] if op_type == "Where" else inputs[0]
        return self.dtype(source) if source else TensorProto.UNDEFINED

    def const(self, value: Any, dtype: Any = None) -> str:
        """Add an initializer (deduplicated) and return its name."""
        return self._b.const(np.asarray(value, dtype=dtype), self._prefix)

    def scalar(self, value: float, like: str) -> str:
        """A 0-d constant with the element type of ``like``."""
        return self.const(np.array(value, dtype=self.np_dtype(like)))

    def ints(self, values: Iterable[int]) -> str:
        """A 1-d int64 constant."""
        return self.const(np.array(list(values), dtype=np.int64))

    def shape_of(self, name: str) -> str:
        """Shape of ``name`` as an int64 tensor (a constant when static)."""
        shape = self.shape(name)
        if shape is not None and all(isinstance(d, int) for d in shape):
            return self.ints(shape)  # type: ignore[arg-type]
        return self.op("Shape", name)

    def zeros_like(self, name: str) -> str:
        """Zeros with the shape and element type of ``name``."""
        zero = helper.make_tensor("value", self.dtype(name), [1], [0])
        return self.op("ConstantOfShape", self.shape_of(name), name_hint="zeros", value=zero)

    def reshape_like(self, x: str, like: str) -> str:
        """Reshape ``x`` to the shape of the forward value ``like``.

        The target is a constant when at most one dim of ``like`` is not static (that dim
        becomes ``-1``), else a ``Shape`` node.
        """
        shape = self.shape(like)
        if shape is not None and sum(not isinstance(d, int) for d in shape) <= 1:
            return self.op("Reshape", x, self.ints(d if isinstance(d, int) else -1 for d in shape))
        return self.op("Reshape", x, self.op("Shape", like))

    def expand_like(self, x: str, like: str, axes: Sequence[int] = ()) -> str:
        """Broadcast ``x`` to the shape of the forward value ``like``.

        ``x`` must have ``like``'s sizes except along ``axes``, where it has size 1: the
        target is a constant (1 for the symbolic dims ``x`` already has) when the dims
        along ``axes`` are static, else a ``Shape`` node.
        """
        shape = self.shape(like)
        if shape is not None and all(isinstance(shape[a], int) for a in axes):
            return self.op("Expand", x, self.ints(d if isinstance(d, int) else 1 for d in shape))
        return self.op("Expand", x, self.op("Shape", like))

    def cast_like(self, x: str, like: str) -> str:
        """Cast ``x`` to the element type of ``like`` if the types differ."""
        if self.dtype(x) == self.dtype(like):
            return x
        return self.op("Cast", x, to=self.dtype(like))

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """``Reduce*`` over ``axes`` in the form the model's opset wants."""
        keep = int(keepdims)
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.ints(axes), keepdims=keep)
        return self.op(op_type, x, axes=list(axes), keepdims=keep)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        """``Unsqueeze`` (axes as input, opset 13+)."""
        return self.op("Unsqueeze", x, self.ints(axes))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        """``Squeeze`` (axes as input, opset 13+)."""
        return self.op("Squeeze", x, self.ints(axes))

    def unbroadcast(self, grad: str, grad_shape: Sequence[Dim] | None, target: str) -> str:
        """Sum ``grad`` (of shape ``grad_shape``) down to the shape of value ``target``.

        Leading extra axes are summed away; an axis where ``target`` has size 1 and the
        gradient a size other than 1 is summed with ``keepdims``.  Equal sizes or equal
        symbols are left alone.  When this cannot be decided statically the reduction
        axes are computed in the graph.
        """
        target_shape = self.shape(target)
        if grad_shape is None or target_shape is None:
            raise self.error(f"cannot unbroadcast to '{target}': rank unknown")
        lead = len(grad_shape) - len(target_shape)
        if lead < 0:
            raise self.error(f"gradient rank {len(grad_shape)} < rank of '{target}'")
        axes = list(range(lead))
        dynamic = False
        for k, (d_in, d_out) in enumerate(zip(target_shape, grad_shape[lead:], strict=True)):
            if d_in == d_out and d_in is not None:
                continue
            if d_in == 1:
                if d_out != 1:
                    axes.append(lead + k)
            elif isinstance(d_in, int) or d_out == 1:
                continue  # the output dim must equal the input's
            else:
                dynamic = True
        if dynamic:
            return self._unbroadcast_dynamic(grad, len(grad_shape), target)
        if not axes:
            return grad
        out = self.reduce("ReduceSum", grad, axes, keepdims=True)
        if lead:
            out = self.squeeze(out, range(lead))
        return out

    def _unbroadcast_dynamic(self, grad: str, grad_rank: int, target: str) -> str:
        lead = grad_rank - self.rank(target)
        target_shape = self.op("Shape", target)
        if lead:
            target_shape = self.op("Concat", self.ints([1] * lead), target_shape, axis=0)
        one = self.ints([1])
        mask = self.op(
            "And",
            self.op("Equal", target_shape, one),
            self.op("Not", self.op("Equal", self.op("Shape", grad), one)),
        )
        axes = self.op("Reshape", self.op("NonZero", mask), self.ints([-1]))
        out = self.op("ReduceSum", grad, axes, keepdims=1, noop_with_empty_axes=1)
        return self.op("Reshape", out, self.op("Shape", target))


# --------------------------------------------------------------------------- engine


def _node_names(model: onnx.ModelProto) -> list[str]:
    return [node.name or f"{node.op_type}_{k}" for k, node in enumerate(model.graph.node)]


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) capture from the outer scope."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for graph in graphs:
            for inner in graph.node:
                names.update(inner.input)
                names |= _subgraph_inputs(inner)
    return names


def _prune(graph: onnx.GraphProto, keep_outputs: Iterable[str]) -> None:
    """Dead-code elimination: drop nodes and initializers the outputs do not need."""
    needed = set(keep_outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(i for i in node.input if i)
            needed |= _subgraph_inputs(node)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    produced = {o for node in graph.node for o in node.output}
    value_info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def build_gradient_graph(
    model: onnx.ModelProto,
    wrt: str,
    output: str,
    *,
    seed_name: str = "seed",
    gradient_name: str = "gradient",
) -> onnx.ModelProto:
    """Return ``model`` extended with the gradient of ``output`` with respect to ``wrt``.

    Args:
        model: the model to differentiate; its other inputs are treated as constants.
        wrt: the tensor to differentiate with respect to, usually a graph input.
        output: the tensor to differentiate, usually a graph output.
        seed_name: name of the new graph input holding the output's cotangent; it has
            the element type and shape (symbolic dims included) of ``output``.
        gradient_name: name of the new graph output ``d(sum(seed * output)) / d(wrt)``,
            shaped like ``wrt``.

    Returns:
        A new model whose inputs are ``model``'s inputs + ``[seed_name]`` and whose
        outputs are ``model``'s outputs + ``[gradient_name]``.  It holds only the nodes
        these outputs need (no gradients of weights, no dead nodes).

    Raises:
        MissingGradientRule: a node on the path has no gradient rule.
        GradientError: the model cannot be differentiated (unknown names, opset older
            than 13, output independent of ``wrt``, shapes a rule needs are unknown...).
    """
    _check_names(model, wrt, output)
    analysis = _Analysis.of(model)
    if analysis.opset < MIN_OPSET:
        raise GradientError(f"opset {analysis.opset} is not supported; need {MIN_OPSET}+")
    builder = _Builder(model, analysis)
    for name in (seed_name, gradient_name):
        if name in builder.used:
            raise GradientError(f"name '{name}' is already used in the model")
    builder.used.update((seed_name, gradient_name))
    builder.elem_types[seed_name] = analysis.elem_type(output) or TensorProto.FLOAT

    nodes, active = _path(model, analysis, wrt, output)
    if output not in active:
        raise GradientError(f"'{output}' does not depend on '{wrt}' through float tensors")
    for node in nodes:
        if not (_is_default_domain(node) and has_rule(node.op_type)):
            raise MissingGradientRule(node)
    names = dict(zip((id(n) for n in model.graph.node), _node_names(model), strict=True))
    logger.debug("differentiating %d nodes from '%s' to '%s'", len(nodes), wrt, output)

    grads: dict[str, str] = {output: seed_name}
    for node in reversed(nodes):
        dys = [grads.get(o) if o else None for o in node.output]
        if all(dy is None for dy in dys):
            continue
        ctx = GradContext(builder, node, names[id(node)], dys, active)
        rule = RULES[node.op_type]
        dxs = list(rule(ctx))
        if len(dxs) < len(node.input):
            dxs += [None] * (len(node.input) - len(dxs))
        for i, (name, dx) in enumerate(zip(node.input, dxs, strict=False)):
            if not ctx.needs(i):
                continue
            if dx is None:
                raise ctx.error(f"the rule gives no gradient for input {i} ('{name}')")
            if rule.unbroadcast:
                dx = ctx.unbroadcast(dx, analysis.shape(node.output[0]), name)
            if name in grads:
                dx = ctx.op("Add", grads[name], dx, name_hint=f"accumulate/{name}")
            grads[name] = dx

    result = _assemble(model, analysis, builder, grads[wrt], wrt, output, seed_name, gradient_name)
    return result


def _assemble(
    model: onnx.ModelProto,
    analysis: _Analysis,
    builder: _Builder,
    grad: str,
    wrt: str,
    output: str,
    seed_name: str,
    gradient_name: str,
) -> onnx.ModelProto:
    generated = {o for node in builder.nodes for o in node.output}
    grad_nodes = builder.nodes
    if grad in generated:  # rename the producing value to the public name
        for node in grad_nodes:
            for seq in (node.input, node.output):
                for k, name in enumerate(seq):
                    if name == grad:
                        seq[k] = gradient_name
    else:
        grad_nodes.append(helper.make_node("Identity", [grad], [gradient_name], name="grad/out"))

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    graph.node.extend(grad_nodes)
    graph.initializer.extend(builder.initializers)
    elem_type = analysis.elem_type(output) or TensorProto.FLOAT
    seed_shape = analysis.shape(output)
    graph.input.append(helper.make_tensor_value_info(seed_name, elem_type, seed_shape))
    wrt_type = analysis.elem_type(wrt) or TensorProto.FLOAT
    graph.output.append(helper.make_tensor_value_info(gradient_name, wrt_type, analysis.shape(wrt)))
    _prune(graph, [o.name for o in graph.output])
    return result
