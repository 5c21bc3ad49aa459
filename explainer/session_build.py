"""Creating an ONNX Runtime session cheaply: large weights handed over as arrays
(:func:`new_session`), session options copied (:func:`copy_options`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["HANDED_BYTES", "copy_options", "new_session"]

#: weights handed to ONNX Runtime as arrays once a model holds this many bytes of them
HANDED_BYTES = 16 << 20
#: ... each weight of at least this many bytes
_HANDED_WEIGHT = 64 << 10
#: ... of these types: weights (float, or int8 for quantized ones), never a shape or indices
#: that ONNX Runtime's shape inference would need to read
_HANDED_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                           onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8, onnx.TensorProto.UINT8})
#: the session options' settings a session with handed weights copies (its own options:
#: ONNX Runtime keeps the handed weights in the options object)
_OPTION_FIELDS = ("graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads",
                  "execution_mode", "log_severity_level", "enable_cpu_mem_arena",
                  "enable_mem_pattern", "use_deterministic_compute")
#: the config entries it copies (the thread spinning :func:`session_options` sets)
_CONFIG_ENTRIES = ("session.intra_op.allow_spinning", "session.force_spinning_stop")


def copy_options(options: ort.SessionOptions, threads: int | None = None
                 ) -> ort.SessionOptions:
    """Fresh session options with the settings of ``options`` (those :func:`session_options`
    sets, and a few more), ``threads`` intra-op threads where given."""
    own = ort.SessionOptions()
    for field in _OPTION_FIELDS:
        setattr(own, field, getattr(options, field))
    for entry in _CONFIG_ENTRIES:
        try:
            own.add_session_config_entry(entry, options.get_session_config_entry(entry))
        except Exception:  # noqa: BLE001 (not set: ONNX Runtime's default)
            pass
    if threads is not None:
        own.intra_op_num_threads = int(threads)
    return own


def _raw_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of an initializer's ``raw_data`` (0 where it may not be handed over), from its
    shape: reading ``raw_data`` itself copies it."""
    if (tensor.data_type not in _HANDED_TYPES or tensor.data_location == onnx.TensorProto.EXTERNAL
            or not tensor.HasField("raw_data")):
        return 0
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def new_session(model: onnx.ModelProto, options: ort.SessionOptions, providers: list[Any]
                ) -> ort.InferenceSession:
    """An ONNX Runtime session of ``model``.

    A model with large weights (:data:`HANDED_BYTES`: a VGG or a ResNet-50) is given to
    ONNX Runtime without them: the model is serialized with its large weights marked as
    external data, and the weights are handed over as arrays
    (``SessionOptions.add_external_initializers``, copied once into the session), instead of
    being serialized into protobuf bytes and parsed back (seconds per session for VGG16's
    528 MB). The session is the same; only its creation is cheaper.
    """
    graph = model.graph
    sizes = {t.name: _raw_bytes(t) for t in graph.initializer}
    handed = {name for name, size in sizes.items() if size and size >= _HANDED_WEIGHT}
    if not handed or sum(sizes[name] for name in handed) < HANDED_BYTES:
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.graph.name = graph.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(light.graph, field).extend(getattr(graph, field))
    names, values = [], []
    for tensor in graph.initializer:
        if tensor.name not in handed:
            light.graph.initializer.append(tensor)
            continue
        data = tensor.raw_data
        stub = light.graph.initializer.add(name=tensor.name, data_type=tensor.data_type,
                                           dims=tensor.dims,
                                           data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", "onnxcam-handed"), ("offset", "0"),
                           ("length", str(len(data)))):
            stub.external_data.add(key=key, value=value)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        array = np.frombuffer(data, dtype=dtype).reshape(tuple(tensor.dims))
        names.append(tensor.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(array))
    own = copy_options(options)
    own.add_external_initializers(names, values)
    return ort.InferenceSession(light.SerializeToString(), own, providers=providers)
