"""Gradient rules (vector-Jacobian products) of ONNX ops.

Each rule receives a :class:`~exporters.autodiff.engine.GradContext` for one forward
node and returns one gradient name per node input, ``None`` for inputs without a
gradient (shapes, indices, axes, weights).  Rules registered with
``unbroadcast=True`` return their gradients in the shape of output 0 and the engine
sums them back to the inputs' shapes.  Rules may reuse the op's own output
(``Sigmoid``, ``Tanh``, ``Softmax``...).

Adding an op = one ``@register`` function in the module of its family (elementwise, shape,
conv, linear, quantize) + one row in ``tests/test_autodiff_rules.py``.

Opset notes: every rule emits ops valid from opset 13 (the engine's minimum) and
follows the model's opset where forms differ (``Reduce*`` axes as attribute or input,
``Split`` sizes as input).  ``MaxPool`` and ``Gather`` scatter-add their gradients with
``ScatterElements``/``ScatterND`` ``reduction='add'``, which needs opset 16; below that
they raise :class:`~exporters.autodiff.engine.GradientError`.

Limitations (each raises ``GradientError`` naming the node): gradients w.r.t. weights,
biases, normalization statistics, ``Clip`` bounds and ``PRelu`` slopes; ``Pad`` modes
other than ``constant``; ``MaxPool`` with ``storage_order=1``; ``BatchNormalization`` in
training mode; ``Slice`` with non-constant starts/ends/axes/steps or a sliced axis of
symbolic size; ``Conv``/``AveragePool`` with symbolic spatial sizes (only the batch may
be symbolic).

Conventions at kinks follow ``torch.autograd``: ties of ``Max``/``Min`` and
``ReduceMax``/``ReduceMin`` share the gradient evenly; ``MaxPool``/``GlobalMaxPool`` give
it to the first maximum; ``Relu`` passes it where ``x > 0`` and ``Clip`` strictly inside
its bounds (like ``relu6``/``hardtanh``).
"""

from __future__ import annotations

from . import conv, elementwise, linear, quantize, shape  # noqa: F401  (registering fills RULES)

__all__: list[str] = []
