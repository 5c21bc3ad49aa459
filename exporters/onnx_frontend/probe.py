"""One probe run of a deployed model on a zero image: the real sizes of its outputs.

Declared output shapes are often symbolic; :func:`probe` runs the model once (ONNX Runtime, CPU)
at a size it accepts and returns what it outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import OnnxExportError
from ..graph import value_shape

__all__ = ["PROBE_SIZE", "PROBE_SIZES", "channel_axis", "probe", "probe_input"]

#: symbolic H/W are probed at this size
PROBE_SIZE = 320
#: the sizes tried in turn (a text recognizer wants its own height)
PROBE_SIZES = ((PROBE_SIZE, PROBE_SIZE), (48, 320), (32, 320), (64, 256))


def probe_input(model: onnx.ModelProto, size: tuple[int, int] = (PROBE_SIZE, PROBE_SIZE)
                ) -> tuple[str, np.ndarray]:
    """The image input's name and a zero image for it (symbolic H/W at ``size``)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise OnnxExportError(f"the model has {len(inputs)} inputs {[i.name for i in inputs]}; "
                              "onnxcam explains single-input image models")
    info = inputs[0]
    shape = value_shape(info.type) or []
    dims = []
    spatial = iter(size)
    channels = channel_axis(shape) if len(shape) == 4 else None
    for k, d in enumerate(shape):
        if k == 0 or k == channels:
            dims.append(d if isinstance(d, int) and d > 0 else (1 if k == 0 else 3))
            continue
        given = next(spatial, PROBE_SIZE)
        dims.append(d if isinstance(d, int) and d > 0 else given)
    dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
    return info.name, np.zeros(dims, dtype)


def channel_axis(shape: Sequence[Any]) -> int:
    """1 for NCHW-looking inputs, 3 for NHWC-looking ones (a static 1/3/4 channel axis)."""
    if isinstance(shape[3], int) and shape[3] in (1, 3, 4) and not (
            isinstance(shape[1], int) and shape[1] in (1, 3, 4)):
        return 3
    return 1


def probe(model: onnx.ModelProto, size: tuple[int, int] | None = None
          ) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """The outputs of one run on a zero image, and the (H, W) it ran at: symbolic sizes are
    ``size`` (the preprocessing's), else the first of :data:`PROBE_SIZES` the model runs at
    (a text recognizer wants its own height)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a size the model refuses is tried quietly
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types
        raise OnnxExportError(f"ONNX Runtime cannot load the model ({err})") from err
    errors = []
    for hw in [size] if size else PROBE_SIZES:
        name, x = probe_input(model, hw)
        try:
            values = session.run(None, {name: x})
            break
        except Exception as err:  # ORT raises its own exception types
            errors.append(f"{list(x.shape)}: {err}")
    else:
        raise OnnxExportError(f"cannot run the model once to read its output sizes ("
                              f"{'; '.join(errors)}); pass task= and format= (--task, --format) "
                              "or a preprocessing with the input size")
    names = [o.name for o in session.get_outputs()]
    hw = (x.shape[1], x.shape[2]) if x.ndim == 4 and channel_axis(x.shape) == 3 else \
        (x.shape[-2], x.shape[-1])
    return dict(zip(names, (np.asarray(v) for v in values))), hw
