"""Gradient rules of recurrent ops: ``LSTM`` and ``GRU``, w.r.t. ``X`` and the initial states.

The ops output hidden states only (``Y``, ``Y_h``, ``Y_c``), not their gates nor the cell state
of every step, so the backward replays the recurrence. Per direction:

1. the input projection of every step, ``XW = X W^T + biases``, is one ``MatMul`` ``[T, N, G*H]``;
2. a forward ``Scan`` over ``XW`` rebuilds the states entering each step (``h``, and ``c`` for
   LSTM);
3. a backward ``Scan`` walks the steps in the opposite order carrying ``dh`` (and ``dc``),
   recomputes the step's gates from its projection and entering states, adds the gradient that
   ``Y`` brings for that step and emits ``dXW``; its final state is the gradient of the initial
   state;
4. ``dX = dXW W``, summed over the directions.

``Scan``'s ``scan_input_directions``/``scan_output_directions`` do the time reversals (a
``reverse`` direction scans its forward pass backwards and its backward pass forwards), so the
sequence length is never needed at export time: it may be symbolic. ``layout=1`` is transposed to
``layout=0`` on the way in and back on the way out. Gradients may arrive on any subset of ``Y``,
``Y_h`` and ``Y_c``: ``Y_h``/``Y_c`` seed the backward states, ``Y`` joins at every step.

Not supported (``GradientError`` naming the node): gradients w.r.t. ``W``, ``R``, ``B`` or ``P``;
peepholes (``P``), ``clip``, ``input_forget``, activations other than the defaults (LSTM
``Sigmoid, Tanh, Tanh``; GRU ``Sigmoid, Tanh``) and a ``sequence_lens`` that is not a constant
equal to a static sequence length everywhere (variable lengths stop each sequence early).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..emitter import GradContext
from ..engine import register

__all__: list[str] = []

Grads = list[str | None]

_DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
_GATES = {"LSTM": 4, "GRU": 3}
_DIRECTIONS = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}


class _Body:
    """A ``Scan`` body under construction.

    Its values are named through the model-wide emitter so that no name shadows one of the
    outer graph (ONNX forbids it); it reads outer values (recurrent weights, constants) by
    capturing them.
    """

    def __init__(self, ctx: GradContext, hint: str) -> None:
        self.ctx = ctx
        self.hint = hint
        self.elem_type = ctx.dtype(ctx.inputs[0])
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []

    def _name(self, hint: str) -> str:
        # GradContext has no public naming for subgraph values: reserve names in its emitter
        return self.ctx._b.unique(f"{self.ctx._prefix}/{self.hint}/{hint}")

    def input(self, hint: str) -> str:
        """A new body input (every value of the body is ``[N, width]``)."""
        name = self._name(hint)
        self.inputs.append(helper.make_tensor_value_info(name, self.elem_type, [None, None]))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        """Emit a node into the body; return its output name."""
        out = self._name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self._name(f"{op_type}/node"), **attrs))
        return out

    def cols(self, x: str, start: int, end: int) -> str:
        """Columns ``start:end`` of an ``[N, width]`` body value."""
        ints = self.ctx.ints
        return self.op("Slice", x, ints([start]), ints([end]), ints([1]))

    def output(self, value: str) -> None:
        """Append ``value`` to the body's outputs (a body input is copied first)."""
        if value in {i.name for i in self.inputs}:
            value = self.op("Identity", value)
        self.outputs.append(helper.make_tensor_value_info(value, self.elem_type, [None, None]))

    def graph(self) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, self._name("body"), self.inputs, self.outputs)


class _Weights:
    """The recurrent weights and biases of one direction, in the forms the scans use."""

    def __init__(self, ctx: GradContext, d: int, gates: int, hidden: int) -> None:
        w, r = ctx.inputs[1], ctx.inputs[2]
        b = ctx.inputs[3] if len(ctx.inputs) > 3 else ""
        index = ctx.const(d, np.int64)
        gh = gates * hidden
        self.w = ctx.op("Gather", w, index, axis=0)  # [G*H, I]
        self.r = ctx.op("Gather", r, index, axis=0)  # [G*H, H]
        self.rt = ctx.op("Transpose", self.r, perm=[1, 0])  # [H, G*H]
        self.wt = ctx.op("Transpose", self.w, perm=[1, 0])  # [I, G*H]
        if gates == 3:  # GRU: the z, r rows and the h rows of R (and of R^T's columns)
            self.r_zr, self.r_h = (ctx.op("Slice", self.r, ctx.ints([lo]), ctx.ints([hi]))
                                   for lo, hi in ((0, 2 * hidden), (2 * hidden, gh)))
            self.rt_zr, self.rt_h = (ctx.op("Slice", self.rt, ctx.ints([lo]), ctx.ints([hi]),
                                            ctx.ints([1]))
                                     for lo, hi in ((0, 2 * hidden), (2 * hidden, gh)))
        self.wb: str | None = None  # [G*H] each, when B is given
        self.rb: str | None = None
        if b:
            bias = ctx.op("Gather", b, index, axis=0)  # [2*G*H]: Wb then Rb
            self.wb = ctx.op("Slice", bias, ctx.ints([0]), ctx.ints([gh]))
            self.rb = ctx.op("Slice", bias, ctx.ints([gh]), ctx.ints([2 * gh]))


def _check(ctx: GradContext) -> int:
    """Refuse what the rules do not support; return the hidden size."""
    op_type = ctx.node.op_type
    for k, what in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
        if ctx.needs(k):
            raise ctx.error(f"gradients w.r.t. {what} (input {k}) are not supported")
    if op_type == "LSTM" and len(ctx.inputs) > 7 and ctx.inputs[7]:
        raise ctx.error("peepholes (input P) are not supported")
    if ctx.attr("clip") is not None:
        raise ctx.error("attribute 'clip' is not supported")
    if ctx.attr("input_forget", 0):
        raise ctx.error("attribute 'input_forget' is not supported")
    direction = ctx.attr("direction", "forward")
    if direction not in _DIRECTIONS:
        raise ctx.error(f"unknown direction '{direction}'")
    activations = ctx.attr("activations")
    if activations is not None:
        names = [a.decode() if isinstance(a, bytes) else a for a in activations]
        expected = _DEFAULT_ACTIVATIONS[op_type] * len(_DIRECTIONS[direction])
        if [n.lower() for n in names] != expected:
            raise ctx.error(f"attribute 'activations' {names} is not supported (only the "
                            f"defaults {expected})")
    if ctx.attr("layout", 0) not in (0, 1):
        raise ctx.error(f"attribute 'layout' {ctx.attr('layout')} is not supported")
    if op_type == "GRU" and ctx.attr("linear_before_reset", 0) not in (0, 1):
        raise ctx.error("attribute 'linear_before_reset' must be 0 or 1")
    lens = ctx.inputs[4] if len(ctx.inputs) > 4 else ""
    if lens:
        value = ctx.constant_value(lens)
        x_shape = ctx.shape(ctx.inputs[0])
        steps = None if x_shape is None else x_shape[ctx.attr("layout", 0)]
        if value is None or not isinstance(steps, int) or np.any(value != steps):
            raise ctx.error("input 'sequence_lens' is only supported as a constant equal to the "
                            "(static) sequence length everywhere")
    hidden = ctx.attr("hidden_size")
    if hidden is None:
        r_shape = ctx.shape(ctx.inputs[2])
        hidden = r_shape[-1] if r_shape is not None else None
        if not isinstance(hidden, int):
            raise ctx.error("the gradient needs attribute 'hidden_size' or R's static shape")
    return hidden


def _recurrent(ctx: GradContext) -> Grads:
    """The shared driver: layouts, directions, seeds, scans; see the module docstring."""
    op_type = ctx.node.op_type
    lstm = op_type == "LSTM"
    hidden = _check(ctx)
    gates = _GATES[op_type]
    layout = ctx.attr("layout", 0)
    reverses = _DIRECTIONS[ctx.attr("direction", "forward")]
    states = 2 if lstm else 1
    x = ctx.inputs[0]
    inputs = ctx.inputs + [""] * (8 - len(ctx.inputs))
    initial = [inputs[5], inputs[6]][:states]  # initial_h, initial_c

    def to_layout0(value: str, perm: list[int]) -> str:
        return ctx.op("Transpose", value, perm=perm) if layout else value

    x_tni = to_layout0(x, [1, 0, 2])
    initial = [to_layout0(v, [1, 0, 2]) if v else "" for v in initial]  # [D, N, H]
    dys = [ctx.dys[k] if k < len(ctx.dys) else None for k in range(1 + states)]
    dy = to_layout0(dys[0], [1, 2, 0, 3]) if dys[0] else None  # [T, D, N, H]
    dfinal = [to_layout0(g, [1, 0, 2]) if g else None for g in dys[1:]]  # [D, N, H] each

    x_shape = ctx.shape(x)
    batch = None if x_shape is None else x_shape[1 - layout]
    if isinstance(batch, int):
        zeros = ctx.const(np.zeros((batch, hidden), ctx.np_dtype(x)))
    else:
        size = ctx.op("Concat", ctx.op("Slice", ctx.op("Shape", x_tni), ctx.ints([1]),
                                       ctx.ints([2])), ctx.ints([hidden]), axis=0)
        zero = helper.make_tensor("value", ctx.dtype(x), [1], [0])
        zeros = ctx.op("ConstantOfShape", size, name_hint="zeros", value=zero)  # [N, H]

    dx_terms: list[str] = []
    dinitial: list[list[str]] = [[] for _ in range(states)]
    for d, reverse in enumerate(reverses):
        index = ctx.const(d, np.int64)
        weights = _Weights(ctx, d, gates, hidden)
        xw = ctx.op("MatMul", x_tni, weights.wt)  # [T, N, G*H]
        bias, rbh = _biases(ctx, weights, lstm, hidden)
        if bias is not None:
            xw = ctx.op("Add", xw, bias)
        starts = [ctx.op("Gather", v, index, axis=0) if v else zeros for v in initial]
        # the forward replay: the states entering every step, [T, N, H] each
        body = _Body(ctx, f"replay{d}")
        carried = [body.input(n) for n in ("h", "c")[:states]]
        step_x = body.input("xw")
        new, _ = _step(body, lstm, step_x, carried, weights, hidden, rbh)
        for v in new + carried:
            body.output(v)
        direction = [int(reverse)]
        replay = ctx.op("Scan", *starts, xw, name_hint="replay", num_outputs=2 * states,
                        body=body.graph(), num_scan_inputs=1, scan_input_directions=direction,
                        scan_output_directions=direction * states)
        entering = replay[states:]
        # the backward walk, in the opposite order
        seeds = [ctx.op("Gather", g, index, axis=0) if g else zeros for g in dfinal]
        scanned = [xw, *entering]
        if dy is not None:
            scanned.append(ctx.op("Gather", dy, index, axis=1))  # [T, N, H]
        body = _Body(ctx, f"backward{d}")
        dstates = [body.input(n) for n in ("dh", "dc")[:states]]
        step_x = body.input("xw")
        carried = [body.input(n) for n in ("h", "c")[:states]]
        dh_step = body.input("dy") if dy is not None else None
        if dh_step is not None:
            dstates[0] = body.op("Add", dstates[0], dh_step)
        _, values = _step(body, lstm, step_x, carried, weights, hidden, rbh)
        back = (_lstm_backward if lstm else _gru_backward)(body, values, dstates, weights)
        for v in back:
            body.output(v)
        direction = [1 - int(reverse)]
        walked = ctx.op("Scan", *seeds, *scanned, name_hint="backward",
                        num_outputs=states + 1, body=body.graph(),
                        num_scan_inputs=len(scanned), scan_input_directions=direction * len(
                            scanned), scan_output_directions=direction)
        dx_terms.append(ctx.op("MatMul", walked[-1], weights.w))  # [T, N, I]
        for k in range(states):
            dinitial[k].append(ctx.unsqueeze(walked[k], [0]))

    grads: Grads = [None] * len(ctx.inputs)
    if ctx.needs(0):
        dx = dx_terms[0] if len(dx_terms) == 1 else ctx.op("Add", *dx_terms)
        grads[0] = to_layout0(dx, [1, 0, 2])
    for k in range(states):
        if ctx.needs(5 + k):
            stacked = dinitial[k][0] if len(dinitial[k]) == 1 else ctx.op(
                "Concat", *dinitial[k], axis=0)
            grads[5 + k] = to_layout0(stacked, [1, 0, 2])
    return grads


def _biases(
    ctx: GradContext, weights: _Weights, lstm: bool, hidden: int
) -> tuple[str | None, str | None]:
    """The bias added to the input projection, and (GRU ``linear_before_reset=1``) the
    recurrent bias of the candidate gate, added inside the reset gate's product."""
    if weights.wb is None:
        return None, None
    if lstm or not ctx.attr("linear_before_reset", 0):
        return ctx.op("Add", weights.wb, weights.rb), None
    x = ctx.inputs[0]
    mask = np.repeat(np.array([1, 1, 0], ctx.np_dtype(x)), hidden)  # z, r: outside; h: inside
    outside = ctx.op("Mul", weights.rb, ctx.const(mask))
    return ctx.op("Add", weights.wb, outside), ctx.op("Sub", weights.rb, outside)


def _step(
    body: _Body, lstm: bool, xw: str, states: list[str], weights: _Weights, hidden: int,
    rbh: str | None,
) -> tuple[list[str], dict[str, str]]:
    """One forward step in ``body``: the new states, and the step's values the backward uses
    (entering states, activated gates, candidate, tanh of the new cell state...)."""
    h = states[0]
    values = {"h": h}
    if lstm:  # gates i, o, f, c
        c = states[1]
        pre = body.op("Add", xw, body.op("MatMul", h, weights.rt))
        sig = body.op("Sigmoid", body.cols(pre, 0, 3 * hidden))
        cand = body.op("Tanh", body.cols(pre, 3 * hidden, 4 * hidden))
        i, o, f = (body.cols(sig, k * hidden, (k + 1) * hidden) for k in range(3))
        c_new = body.op("Add", body.op("Mul", f, c), body.op("Mul", i, cand))
        tc = body.op("Tanh", c_new)
        h_new = body.op("Mul", o, tc)
        values.update(c=c, sig=sig, cand=cand, i=i, o=o, f=f, tc=tc)
        return [h_new, c_new], values
    # GRU, gates z, r, h: H' = n + z * (H - n)
    x_n = body.cols(xw, 2 * hidden, 3 * hidden)
    if body.ctx.attr("linear_before_reset", 0):  # n = tanh(x_n + r * (H Rh^T + Rbh))
        hr = body.op("MatMul", h, weights.rt)
        if rbh is not None:
            hr = body.op("Add", hr, rbh)
        sig = body.op("Sigmoid", body.op("Add", body.cols(xw, 0, 2 * hidden),
                                         body.cols(hr, 0, 2 * hidden)))
        z, r = body.cols(sig, 0, hidden), body.cols(sig, hidden, 2 * hidden)
        m = body.cols(hr, 2 * hidden, 3 * hidden)
        n = body.op("Tanh", body.op("Add", x_n, body.op("Mul", r, m)))
        values["m"] = m
    else:  # n = tanh(x_n + (r * H) Rh^T)
        sig = body.op("Sigmoid", body.op("Add", body.cols(xw, 0, 2 * hidden),
                                         body.op("MatMul", h, weights.rt_zr)))
        z, r = body.cols(sig, 0, hidden), body.cols(sig, hidden, 2 * hidden)
        q = body.op("Mul", r, h)
        n = body.op("Tanh", body.op("Add", x_n, body.op("MatMul", q, weights.rt_h)))
    h_new = body.op("Add", n, body.op("Mul", z, body.op("Sub", h, n)))
    values.update(sig=sig, z=z, r=r, n=n)
    return [h_new], values


def _one_minus_square(body: _Body, t: str) -> str:
    """``1 - t^2``: the derivative of tanh at its output ``t``."""
    return body.op("Sub", body.ctx.scalar(1.0, body.ctx.inputs[0]), body.op("Mul", t, t))


def _sigmoid_grad(body: _Body, g: str, s: str) -> str:
    """``g * s * (1 - s)``: back through a sigmoid whose output is ``s``."""
    one = body.ctx.scalar(1.0, body.ctx.inputs[0])
    return body.op("Mul", g, body.op("Mul", s, body.op("Sub", one, s)))


def _lstm_backward(body: _Body, v: dict[str, str], dstates: list[str], weights: _Weights
                   ) -> list[str]:
    """Back through one LSTM step: ``[dh_prev, dc_prev, dXW]`` from ``dh`` (with the step's
    ``dY`` added) and ``dc``."""
    dh, dc = dstates
    do = body.op("Mul", dh, v["tc"])
    dc = body.op("Add", dc, body.op("Mul", body.op("Mul", dh, v["o"]),
                                    _one_minus_square(body, v["tc"])))
    di = body.op("Mul", dc, v["cand"])
    df = body.op("Mul", dc, v["c"])
    dcand = body.op("Mul", dc, v["i"])
    dc_prev = body.op("Mul", dc, v["f"])
    dsig = _sigmoid_grad(body, body.op("Concat", di, do, df, axis=1), v["sig"])
    dpre = body.op("Concat", dsig, body.op("Mul", dcand, _one_minus_square(body, v["cand"])),
                   axis=1)
    dh_prev = body.op("MatMul", dpre, weights.r)
    return [dh_prev, dc_prev, dpre]


def _gru_backward(body: _Body, v: dict[str, str], dstates: list[str], weights: _Weights
                  ) -> list[str]:
    """Back through one GRU step: ``[dh_prev, dXW]`` from ``dh`` (with the step's ``dY``
    added)."""
    (dh,) = dstates
    h, z, r, n = v["h"], v["z"], v["r"], v["n"]
    dz = body.op("Mul", dh, body.op("Sub", h, n))
    dh_prev = body.op("Mul", dh, z)
    dn = body.op("Sub", dh, dh_prev)  # dh * (1 - z)
    dan = body.op("Mul", dn, _one_minus_square(body, n))
    if "m" in v:  # linear_before_reset: n = tanh(x_n + r * m), m = H Rh^T + Rbh
        dr = body.op("Mul", dan, v["m"])
        dzr = _sigmoid_grad(body, body.op("Concat", dz, dr, axis=1), v["sig"])
        dm = body.op("Mul", dan, r)
        dh_prev = body.op("Add", dh_prev, body.op("MatMul", body.op("Concat", dzr, dm, axis=1),
                                                  weights.r))
    else:  # n = tanh(x_n + (r * H) Rh^T)
        dq = body.op("MatMul", dan, weights.r_h)  # d(r * H)
        dzr = _sigmoid_grad(body, body.op("Concat", dz, body.op("Mul", dq, h), axis=1), v["sig"])
        dh_prev = body.op("Add", dh_prev, body.op("Add", body.op("Mul", dq, r),
                                                  body.op("MatMul", dzr, weights.r_zr)))
    return [dh_prev, body.op("Concat", dzr, dan, axis=1)]


@register("LSTM")
def _lstm(ctx: GradContext) -> Grads:
    """LSTM (gates i, o, f, c): ``C' = f C + i c~``, ``H' = o tanh(C')``; see the module
    docstring for the two scans."""
    return _recurrent(ctx)


@register("GRU")
def _gru(ctx: GradContext) -> Grads:
    """GRU (gates z, r, h): ``H' = (1 - z) n + z H``, ``linear_before_reset`` 0 or 1; see the
    module docstring for the two scans."""
    return _recurrent(ctx)
