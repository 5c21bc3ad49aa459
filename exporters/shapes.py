"""Shape recovery where ``onnx.shape_inference`` gives up.

Gradient rules need the rank of the values they differentiate (``Softmax`` its axis, ``MatMul``
its batch dims, a ``Conv`` its static spatial sizes). ONNX's own shape inference, even with
data propagation, loses them after shape arithmetic it cannot evaluate: tf2onnx writes Keras'
``Flatten`` as ``Shape -> Gather -> Cast -> Slice -> Concat -> Cast -> Reshape`` and everything
downstream of that ``Reshape`` (the ``Dense`` head, its ``Softmax``) comes out without a shape.

:func:`recover_shapes` fills in what is missing: values without a rank, with an unknown dim, or
with a symbolic dim other than the inputs' batch (the TorchScript export of Swin gives its
``[batch, 7, 7, 768]`` stage outputs as ``[batch, unk__353, unk__354, 768]``, which hides the
spatial grid and its layout). Two steps, each only when needed:

1. **Symbolic shape inference** of ONNX Runtime
   (``onnxruntime.tools.symbolic_shape_infer.SymbolicShapeInference``, which ships in the
   onnxruntime wheel and needs no weights): it evaluates shape arithmetic on symbols, so
   ``Shape(x)[0:1] ++ [-1]`` stays ``[batch, 25088]``. Cheap (tf2onnx VGG16: ~10 ms on the
   weight-stripped model) and it keeps the batch dimension symbolic. Skipped on graphs with
   data-dependent sizes (:data:`DATA_DEPENDENT_OPS`), where it can take minutes.
2. **A probe run** (``probe=True``): the model runs in ONNX Runtime on zeros of the declared
   input size at batch sizes 1 and 2, with the still incomplete values as extra outputs. A dim
   equal in both runs is static, one that goes from 1 to 2 is the batch symbol, anything else
   (``batch * 197``...) stays unknown. Input dims the model leaves open after the batch
   (PaddleOCR's ``[-1, 3, ?, ?]``) run at :data:`PROBE_SIZES` ``[0]``, and once more at
   ``[1]``: a dim that changes with them stays unknown, but the rank is found (the ``Reshape``
   that flattens PaddlePaddle's pooled features to ``[batch, 200]`` hides it from both
   inferences).
   Initializers whose data was stripped are fed as zeros (a classifier's shapes never depend on
   its weight values). It costs two forward passes at batch 1 and 2 (Swin-T: ~0.3 s).

Values ONNX inferred completely are left as they are, and a recovered dim never replaces a
better known one. The recovered shapes are written as ``value_info``, which later calls of
``onnx.shape_inference.infer_shapes`` keep.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import value_shape

__all__ = ["failure_reason", "missing_shapes", "recover_shapes"]

log = logging.getLogger(__name__)

Shape = list[int | str | None]


def _known_shapes(model: onnx.ModelProto) -> dict[str, Shape | None]:
    graph = model.graph
    shapes: dict[str, Shape | None] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.HasField("tensor_type"):
            shapes[info.name] = value_shape(info.type)
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def _batch_symbols(model: onnx.ModelProto) -> set[str]:
    """Symbolic leading dims of the graph inputs (the batch)."""
    initializers = {t.name for t in model.graph.initializer}
    symbols = set()
    for info in model.graph.input:
        shape = value_shape(info.type) if info.name not in initializers else None
        if shape and isinstance(shape[0], str):
            symbols.add(shape[0])
    return symbols


def _score(shape: Shape | None, batch: set[str]) -> int:
    """How many dims are known: static, or the batch symbol (-1 without a rank)."""
    if shape is None:
        return -1
    return sum(isinstance(d, int) or d in batch for d in shape)


def _incomplete(shape: Shape | None, batch: set[str]) -> bool:
    return shape is None or _score(shape, batch) < len(shape)


def missing_shapes(model: onnx.ModelProto) -> list[str]:
    """Node outputs of an inferred model with an unknown rank, an unknown dim, or a symbolic
    dim other than the inputs' batch (graph order)."""
    shapes = _known_shapes(model)
    batch = _batch_symbols(model)
    return [
        o for node in model.graph.node for o in node.output
        if o and _incomplete(shapes.get(o), batch)
    ]


#: sizes a probe run gives the input dims after the batch that the model leaves open (two, so a
#: dim that follows them is told from a static one); multiples of 32, as strided CNNs want
PROBE_SIZES = (64, 160)


def _probe_inputs(model: onnx.ModelProto) -> list[tuple[str, list[int | str | None], int]] | None:
    """(name, declared dims, elem type) of each graph input, or None when one has no shape."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for info in model.graph.input:
        if info.name in initializers:
            continue
        shape = value_shape(info.type)
        if shape is None:
            return None
        inputs.append((info.name, shape, info.type.tensor_type.elem_type))
    return inputs


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    return {
        i.name: i.type.tensor_type.elem_type
        for i in [*graph.input, *graph.value_info, *graph.output]
        if i.type.HasField("tensor_type") and i.type.tensor_type.elem_type
    }


def failure_reason(err: BaseException) -> str:
    """What went wrong, never empty: the exception's type and text, and for a bare
    ``assert`` (``AssertionError()``) the function that raised it (onnxruntime's symbolic shape
    inference asserts ``axis == 0`` in ``_infer_Concat``, say)."""
    text = str(err).strip()
    reason = f"{type(err).__name__}: {text}" if text else type(err).__name__
    frames = traceback.extract_tb(err.__traceback__) if err.__traceback__ else []
    if frames and not text:
        last = frames[-1]
        reason += f" in {last.name} ({Path(last.filename).name}:{last.lineno})"
    return reason


#: Ops whose output sizes depend on the data: on graphs that hold them (torchvision's detectors:
#: NonMaxSuppression, TopK over a NonZero's count, Loop/If over the kept boxes), symbolic
#: inference spends minutes in sympy simplifying the sizes they leave open (Faster R-CNN: over
#: 4 minutes), where the probe run finds the same ranks and static dims in under a second.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "Loop", "If", "Scan"})


def _data_dependent(model: onnx.ModelProto) -> str | None:
    """The first op of :data:`DATA_DEPENDENT_OPS` in ``model``'s main graph, or None."""
    return next((n.op_type for n in model.graph.node if n.op_type in DATA_DEPENDENT_OPS), None)


def _symbolic(model: onnx.ModelProto) -> tuple[dict[str, Shape | None], dict[str, int]]:
    op = _data_dependent(model)
    if op is not None:
        log.info("symbolic shape inference skipped: the graph has %s (data-dependent sizes); "
                 "the probe run recovers the shapes", op)
        return {}, {}
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError as err:  # onnxruntime ships it, but it needs sympy
        log.info("symbolic shape inference unavailable (%s)", failure_reason(err))
        return {}, {}
    ort_log = logging.getLogger(SymbolicShapeInference.__module__)
    level = ort_log.level
    ort_log.setLevel(logging.ERROR)  # "Unable to determine if ... treat as equal" per merge
    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception as err:  # best effort: unsupported ops, odd graphs
        log.info("symbolic shape inference failed (%s)", failure_reason(err))
        return {}, {}
    finally:
        ort_log.setLevel(level)
    if inferred is None:
        return {}, {}
    return _known_shapes(inferred), _elem_types(inferred)


def _probe(model: onnx.ModelProto, names: list[str], size: tuple[int, int] | None = None
           ) -> tuple[dict[str, Shape], dict[str, int]]:
    """Shapes of ``names`` from runs at batch sizes 1 and 2 on zero inputs (and, when an
    input leaves dims after the batch open, a third run with those at another size: a dim
    that changes with them stays unknown). ``size``: the (H, W) the model is known to run at
    (its open dims take H, then W); the third run then adds 32 to both, or to W alone where
    the model refuses another H (a text recognizer's fixed height)."""
    import onnxruntime as ort

    inputs = _probe_inputs(model) or []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for tensor in probe.graph.initializer:  # stripped weights: zeros of the same dims
        if tensor.data_location != TensorProto.EXTERNAL and not any(
            getattr(tensor, f) for f in ("raw_data", "float_data", "double_data", "int32_data",
                                         "int64_data")
        ) and np.prod(tensor.dims) > 0:
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            tensor.CopyFrom(numpy_helper.from_array(np.zeros(tensor.dims, dtype), tensor.name))
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.ValueInfoProto(name=n) for n in names if n not in existing
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # a size the model refuses fails quietly (reported below)
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    batch_symbol = next((shape[0] for _, shape, _ in inputs
                         if shape and isinstance(shape[0], str)), None)
    open_sizes = any(not (isinstance(d, int) and d > 0) for _, shape, _ in inputs
                     for d in shape[1:])
    first = size or (PROBE_SIZES[0], PROBE_SIZES[0])
    settings = [[(1, first)], [(2, first)]]
    if open_sizes:
        settings.append([(1, (first[0] + 32, first[1] + 32)), (1, (first[0], first[1] + 32))]
                        if size else [(1, (PROBE_SIZES[1], PROBE_SIZES[1]))])

    def run(batch: int, hw: tuple[int, int]) -> list[Any]:
        feeds = {}
        for name, shape, elem_type in inputs:
            sizes = iter(hw)
            dims = [d if isinstance(d, int) and d > 0 else batch if k == 0 else
                    next(sizes, hw[-1]) for k, d in enumerate(shape)]
            feeds[name] = np.zeros(dims, helper.tensor_dtype_to_np_dtype(elem_type))
        return session.run(names, feeds)

    runs = []
    for tries in settings:
        for k, (batch, hw) in enumerate(tries):
            try:
                outputs = run(batch, hw)
                break
            except Exception:  # ORT's own types; the last try's error goes to the caller
                if k == len(tries) - 1:
                    raise
        runs.append([np.shape(v) for v in outputs])
    types = {n: helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype)
             for n, v in zip(names, outputs, strict=True)}
    shapes: dict[str, Shape] = {}
    for name, *seen in zip(names, *runs, strict=True):
        one, two = seen[0], seen[1]
        other = seen[2] if open_sizes else one
        if not len(one) == len(two) == len(other):
            continue
        # equal: static; 1 -> 2: the batch; anything else (batch * k, a size): unknown
        shapes[name] = [a if a == b == c else batch_symbol if (a, b) == (1, 2)
                        and a == c else None for a, b, c in zip(one, two, other, strict=True)]
    return shapes, types


def recover_shapes(model: onnx.ModelProto, *, probe: bool = True,
                   size: tuple[int, int] | None = None) -> onnx.ModelProto:
    """Fill in the shapes ``onnx.shape_inference`` left unknown (see the module docstring).

    Args:
        model: a model after ``onnx.shape_inference.infer_shapes``.
        probe: run the model on zeros when symbolic inference still leaves values incomplete.
        size: the input (H, W) the model is known to run at, for those runs.

    Returns:
        ``model`` itself when nothing is missing, else a copy with more ``value_info``.
    """
    missing = missing_shapes(model)
    if not missing:
        return model
    known = _known_shapes(model)
    batch = _batch_symbols(model)
    found: dict[str, Shape] = {}

    def offer(name: str, shape: Shape | None) -> None:
        current = found.get(name, known.get(name))
        if shape is None:
            return
        if current is not None and len(current) == len(shape):  # keep the better of each dim
            shape = [d if isinstance(d, int) or d in batch or not (
                isinstance(c, int) or c in batch) else c for d, c in zip(shape, current,
                                                                         strict=True)]
        if _score(shape, batch) > _score(current, batch):
            found[name] = shape

    symbolic, types = _symbolic(model)
    types.update(_elem_types(model))
    for name in missing:
        offer(name, symbolic.get(name))
    still = [n for n in missing if _incomplete(found.get(n, known.get(n)), batch)]
    if probe and still and _probe_inputs(model):
        try:
            probed, probed_types = _probe(model, still, size)
            for name, shape in probed.items():
                offer(name, shape)
            types = {**probed_types, **types}
        except Exception as err:  # best effort
            log.info("probe run for shapes failed (%s)", failure_reason(err))
    if not found:
        return model
    log.info("recovered shapes of %d values (%d without a rank before)", len(found),
             sum(known.get(n) is None for n in found))
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    kept = [v for v in graph.value_info if v.name not in found]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    outputs = {o.name: o for o in graph.output}
    for name, shape in found.items():
        elem_type = types.get(name, TensorProto.UNDEFINED)
        info = helper.make_tensor_value_info(name, elem_type, shape)
        if not elem_type:
            continue
        if name in outputs:
            outputs[name].CopyFrom(info)
        else:
            graph.value_info.append(info)
    return result
