"""The one ONNX node builder: what the autodiff and the explanation graph emit nodes through.

A :class:`Builder` appends ``NodeProto``/``TensorProto`` objects to plain lists (no IR, for
speed), names every value and node uniquely under a prefix (``prefix/hint``, ``prefix/hint_2``
...), checks op types when a node is emitted (a misspelt op fails here, not when ONNX Runtime
loads the model), deduplicates constants, and writes ``Reduce*`` ops the way the opset wants
their axes (attribute or input).

Needs onnx and numpy only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ExportError
from .graph import unique_name

__all__ = ["Builder", "UnknownOpError", "reduce_axes_as_input"]


class UnknownOpError(ExportError):
    """A node was emitted with an op type the default ONNX domain does not define."""


def reduce_axes_as_input(op_type: str, opset: int) -> bool:
    """Whether ``op_type`` (a ``Reduce*`` op) takes its axes as an input at ``opset``
    (``ReduceSum`` from opset 13, the others from 18) rather than as an attribute."""
    return opset >= (13 if op_type == "ReduceSum" else 18)


class Builder:
    """Emits ONNX nodes and initializers with unique ``prefix/``-names; knows the opset.

    Attributes:
        prefix: the namespace of the names it makes (``"cam"``, ``"grad/<node>"``).
        opset: default-domain opset the emitted ops must be valid in.
        nodes: the emitted nodes, in emission order (a valid topological order). A caller may
            swap in another list to collect a subgraph's nodes.
        initializers: the emitted constants (one per distinct value).
        taken: every name in use (the model's, and those made here); shared with
            :meth:`scoped` builders.
    """

    def __init__(self, prefix: str, opset: int, taken: set[str] | None = None) -> None:
        """Args:
            prefix: namespace of the generated names.
            opset: default-domain opset of the graph being written.
            taken: names already in use (kept and extended in place); none when None.
        """
        self.prefix, self.opset = prefix, opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.taken: set[str] = set() if taken is None else taken
        self._constants: dict[tuple[Any, ...], str] = {}

    def scoped(self, prefix: str) -> Builder:
        """A builder writing into the same node and initializer lists, names and constants,
        under another prefix (a shallow copy: it keeps this builder's class and state)."""
        child = copy.copy(self)
        child.prefix = prefix
        return child

    def unique(self, name: str) -> str:
        """``name`` or ``name_2``, ``name_3``... whichever is not in use yet (then reserved)."""
        return unique_name(name, self.taken)

    def _name(self, hint: str) -> str:
        """A new unique name ``prefix/hint``."""
        return self.unique(f"{self.prefix}/{hint}")

    def op(self, op_type: str, *inputs: str | None, out: str | None = None, outputs: int = 1,
           name_hint: str | None = None, **attrs: Any) -> Any:
        """Emit an ``op_type`` node; return its output name (a list when ``outputs > 1``).

        Args:
            op_type: an op of the default ONNX domain.
            *inputs: input names; ``None`` or ``""`` for an omitted optional input (trailing
                ones are left out).
            out: the name of output 0 (a generated one when None).
            outputs: how many outputs the node has.
            name_hint: what the generated names say instead of ``op_type``.
            **attrs: the node's attributes (those set to None are left out).

        Raises:
            UnknownOpError: ``op_type`` is not an ONNX op.
        """
        if not onnx.defs.has(op_type):
            raise UnknownOpError(
                f"unknown ONNX op {op_type!r} emitted under '{self.prefix}/': use an op of the "
                "default ONNX domain (onnx.defs)"
            )
        hint = name_hint or op_type
        if out is not None:
            self.taken.add(out)
        names = [out or self._name(hint)] + [self._name(f"{hint}:{k}") for k in range(1, outputs)]
        names_in = [i or "" for i in inputs]
        while names_in and not names_in[-1]:
            names_in.pop()  # trailing omitted inputs are left out
        self.nodes.append(helper.make_node(
            op_type, names_in, names, name=self._name(f"{hint}/node"),
            **{k: v for k, v in attrs.items() if v is not None},
        ))
        return names[0] if outputs == 1 else names

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """An initializer holding ``value`` as ``dtype`` (None: NumPy's choice); one per
        distinct value, shared by every builder :meth:`scoped` from this one."""
        array = np.asarray(value, dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        name = self._constants.get(key)
        if name is None:
            name = self._constants[key] = self._name("const")
            self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """``op_type`` (ReduceMean/Min/Max/Sum...) over ``axes``, the axes given as the opset
        wants them (see :func:`reduce_axes_as_input`)."""
        if reduce_axes_as_input(op_type, self.opset):
            return self.op(op_type, x, self.const(list(axes)), keepdims=int(keepdims))
        return self.op(op_type, x, axes=list(axes), keepdims=int(keepdims))

    def dims(self, shape: str, start: int, end: int) -> str:
        """``shape[start:end]`` of a Shape output (int64 1-D)."""
        return self.op("Slice", shape, self.const([start]), self.const([end]), self.const([0]))

    def shape_dims(self, x: str, start: int, end: int) -> str:
        """``x``'s dims [start, end) (int64 1-D): one ``Shape`` with ``start`` and ``end``
        from opset 15, which ONNX Runtime folds into a constant where those dims are static
        (even where others, such as the batch, are not); a Slice of the whole shape before."""
        if self.opset >= 15:
            return self.op("Shape", x, start=start, end=end)
        return self.dims(self.op("Shape", x), start, end)
