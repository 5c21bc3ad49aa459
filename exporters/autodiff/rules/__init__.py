"""Gradient rules (vector-Jacobian products) of ONNX ops.

Each rule receives a :class:`~exporters.autodiff.engine.GradContext` for one forward
node and returns one gradient name per node input, ``None`` for inputs without a
gradient (shapes, indices, axes, weights).  Rules registered with
``unbroadcast=True`` return their gradients in the shape of output 0 and the engine
sums them back to the inputs' shapes.  Rules may reuse the op's own output
(``Sigmoid``, ``Tanh``, ``Softmax``...).

Adding an op = one ``@register`` function in the module of its family (elementwise, shape,
conv, linear, indexing, sampling, quantize, recurrent) + one row in
``tests/export/autodiff/test_autodiff_rules.py``.

Opset notes: every rule emits ops valid from opset 13 (the engine's minimum) and
follows the model's opset where forms differ (``Reduce*`` axes as attribute or input,
``Split`` sizes as input).  ``MaxPool``, ``Gather``, ``GatherElements`` and ``GatherND``
scatter-add their gradients with ``ScatterElements``/``ScatterND`` ``reduction='add'``, which
needs opset 16; below that they raise :class:`~exporters.autodiff.engine.GradientError`.

Indices are never differentiated (``TopK``'s indices output, the selection of a
``NonMaxSuppression`` or ``NonZero``): integer tensors are off the float path, so a detector is
differentiated with its selection held at the forward's values. ``RoiAlign`` holds its boxes
constant too (``held=(1,)``: torchvision detaches the region proposals).

Limitations (each raises ``GradientError`` naming the node): gradients w.r.t. weights,
biases, normalization statistics, ``Clip`` bounds and ``PRelu`` slopes; ``Pad`` modes
other than ``constant``; ``MaxPool`` with ``storage_order=1``; ``BatchNormalization`` in
training mode; ``Slice`` with non-constant axes/steps, or with a step other than 1 where the
starts/ends are computed at run time or the sliced axis has a symbolic size; ``AveragePool``
with ``ceil_mode=1`` and symbolic spatial sizes; ``ConvTranspose`` with ``auto_pad`` SAME or
``output_shape``; ``Resize`` in ``tf_crop_and_resize`` mode or with a
``keep_aspect_ratio_policy``; ``RoiAlign`` in ``max`` mode or with adaptive sampling
(``sampling_ratio=0``); ``ScatterElements``/``ScatterND`` reductions other than ``none`` and
``add`` (with ``none``, indices are assumed distinct); ``LSTM``/``GRU`` with peepholes, ``clip``,
``input_forget``, non-default activations, or a ``sequence_lens`` other than a constant equal to a
static sequence length (their gradients w.r.t. ``X``, ``initial_h`` and ``initial_c`` replay the
recurrence in ``Scan`` loops, so the sequence length may be symbolic).

Conventions at kinks follow ``torch.autograd``: ties of ``Max``/``Min`` and
``ReduceMax``/``ReduceMin`` share the gradient evenly; ``MaxPool``/``GlobalMaxPool`` give
it to the first maximum; ``Relu`` passes it where ``x > 0`` and ``Clip`` strictly inside
its bounds (like ``relu6``/``hardtanh``).
"""

from __future__ import annotations

from . import (  # noqa: F401  (registering fills RULES)
    conv,
    elementwise,
    indexing,
    linear,
    quantize,
    recurrent,
    sampling,
    shape,
)

__all__: list[str] = []
