"""A corpus of ONNX classifiers not produced by our torch front end, built with onnx.helper.

Every model is the same small residual CNN with seeded random weights, written the way other
producers write it:

* ``NCHW``: Conv/Relu/GlobalAveragePool/Flatten/MatMul, as torch.onnx does;
* ``NHWC``: NHWC activations with Transposes around every Conv/MaxPool/BatchNormalization and a
  ``ReduceMean`` over axes (1, 2) as the global pool, as tf2onnx writes Keras models;

plus options: a final Softmax, uint8 input normalized inside the graph (Cast, Div by 255, Sub
mean, Div std), any opset from 13, a static batch (with a hard-coded Reshape), unfolded
BatchNormalization, several outputs. The last spatial activation is always named ``features``
(what ``target="auto"`` must pick); NCHW and NHWC variants with the same seed compute the same
function. No torch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

__all__ = ["CORPUS", "SIZE", "NUM_CLASSES", "make_cnn", "newest_opset", "to_layout"]

SIZE = 32
NUM_CLASSES = 10
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@lru_cache(maxsize=1)
def newest_opset() -> int:
    """The newest default-domain opset that both onnx and ONNX Runtime support."""
    for opset in range(onnx.defs.onnx_opset_version(), 12, -1):
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        imports = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=imports)
        model.ir_version = helper.find_min_ir_version_for(imports)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:
            continue
    raise RuntimeError("ONNX Runtime runs no opset >= 13")


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW batch in ``layout``."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if layout == "NHWC" else x)


class _Builder:
    def __init__(self, layout: str, opset: int, seed: int) -> None:
        self.layout, self.opset = layout, opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def to_nchw(self, x: str) -> str:
        return self.node("Transpose", [x], perm=[0, 3, 1, 2]) if self.layout == "NHWC" else x

    def from_nchw(self, x: str, out: str | None = None) -> str:
        if self.layout == "NHWC":
            return self.node("Transpose", [x], out, perm=[0, 2, 3, 1])
        return self.node("Identity", [x], out) if out else x

    def conv(self, x: str, cin: int, cout: int, stride: int = 1, bn: bool = False) -> str:
        w = self.rng.normal(0, np.sqrt(2.0 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        b = self.rng.normal(0, 0.1, (cout,)).astype(np.float32)
        inputs = [self.to_nchw(x), self.const(w, "w")]
        if not bn:
            inputs.append(self.const(b, "b"))
        y = self.node("Conv", inputs, pads=[1, 1, 1, 1], strides=[stride, stride],
                      kernel_shape=[3, 3])
        if bn:
            scale = self.rng.uniform(0.5, 1.5, cout).astype(np.float32)
            mean = self.rng.normal(0, 0.2, cout).astype(np.float32)
            var = self.rng.uniform(0.5, 1.5, cout).astype(np.float32)
            y = self.node("BatchNormalization", [y, self.const(scale, "bn_scale"),
                                                 self.const(b, "bn_bias"),
                                                 self.const(mean, "bn_mean"),
                                                 self.const(var, "bn_var")], epsilon=1e-5)
        return self.from_nchw(y)

    def maxpool(self, x: str) -> str:
        y = self.node("MaxPool", [self.to_nchw(x)], kernel_shape=[2, 2], strides=[2, 2])
        return self.from_nchw(y)

    def channel_const(self, values: np.ndarray, prefix: str) -> str:
        shape = (1, 1, 1, -1) if self.layout == "NHWC" else (1, -1, 1, 1)
        return self.const(values.reshape(shape).astype(np.float32), prefix)

    def global_pool(
        self, x: str, channels: int, static_batch: int | None, shape_batch: bool = False
    ) -> str:
        if self.layout == "NHWC":  # tf2onnx: ReduceMean over H, W
            if self.opset >= 18:
                return self.node("ReduceMean", [x, self.const(np.array([1, 2]), "axes")],
                                 keepdims=0)
            return self.node("ReduceMean", [x], axes=[1, 2], keepdims=0)
        pooled = self.node("GlobalAveragePool", [x])
        if shape_batch:  # Reshape to [Shape(image)[0:1], C], the batch read from the input
            size = self.node("Shape", ["image"], start=0, end=1)
            shape = self.node("Concat", [size, self.const(np.array([channels]), "c")], axis=0)
            return self.node("Reshape", [pooled, shape])
        if static_batch is not None:  # hard-coded batch, as static exports write it
            shape = self.const(np.array([static_batch, channels], np.int64), "shape")
            return self.node("Reshape", [pooled, shape])
        return self.node("Flatten", [pooled], axis=1)


def make_cnn(
    layout: str = "NCHW",
    *,
    opset: int = 17,
    batch: int | None = None,
    softmax: bool = False,
    uint8: bool = False,
    bn: bool = False,
    outputs: tuple[str, ...] = ("logits",),
    shape_batch: bool = False,
    seed: int = 0,
    name: str = "corpus_cnn",
) -> onnx.ModelProto:
    """The corpus CNN (see module docstring).

    Args:
        layout: ``"NCHW"`` or ``"NHWC"`` (tf2onnx style).
        opset: default-domain opset (13..newest).
        batch: a static batch size, or None for a dynamic ``batch`` dimension.
        softmax: end in a Softmax (the output is then ``probabilities``).
        uint8: uint8 input (0..255) normalized inside the graph.
        bn: convolutions followed by unfolded BatchNormalization.
        outputs: graph outputs among ``logits``, ``probabilities``, ``embedding`` (in order).
        shape_batch: (NCHW) flatten with a Reshape whose batch size comes from
            ``Shape(image)[0:1]``, as exporters write a dynamic-batch ``view``.
        seed: weight seed.
    """
    g = _Builder(layout, opset, seed)
    dims = [SIZE, SIZE, 3] if layout == "NHWC" else [3, SIZE, SIZE]
    batch_dim = batch if batch is not None else "batch"
    x = "image"
    if uint8:
        x = g.node("Cast", [x], to=TensorProto.FLOAT)
        x = g.node("Div", [x, g.const(np.array(255.0, np.float32), "scale")])
        x = g.node("Sub", [x, g.channel_const(MEAN, "mean")])
        x = g.node("Div", [x, g.channel_const(STD, "std")])
    a = g.node("Relu", [g.conv(x, 3, 8, bn=bn)])
    b = g.node("Relu", [g.conv(a, 8, 16, stride=2, bn=bn)])
    c = g.conv(g.node("Relu", [g.conv(b, 16, 16, bn=bn)]), 16, 16, bn=bn)
    d = g.node("Relu", [g.node("Add", [c, b])])  # residual block
    e = g.maxpool(d)
    features = g.node("Relu", [g.conv(e, 16, 24, bn=bn)], "features")
    embedding = g.global_pool(features, 24, batch, shape_batch)
    weight = g.rng.normal(0, 0.5, (24, NUM_CLASSES)).astype(np.float32)
    bias = g.rng.normal(0, 0.1, (NUM_CLASSES,)).astype(np.float32)
    if "embedding" in outputs:
        embedding = g.node("Identity", [embedding], "embedding")
    logits = g.node("Add", [g.node("MatMul", [embedding, g.const(weight, "fc_w")]),
                            g.const(bias, "fc_b")], "logits")
    if softmax or "probabilities" in outputs:
        g.node("Softmax", [logits], "probabilities", axis=-1)
    if softmax and outputs == ("logits",):
        outputs = ("probabilities",)
    widths = {"logits": NUM_CLASSES, "probabilities": NUM_CLASSES, "embedding": 24}
    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info("image", TensorProto.UINT8 if uint8 else TensorProto.FLOAT,
                                       [batch_dim, *dims])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [batch_dim, widths[o]])
         for o in outputs],
        initializer=g.inits,
    )
    imports = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=imports, producer_name="onnxcam-corpus")
    model.ir_version = helper.find_min_ir_version_for(imports)
    onnx.checker.check_model(model, full_check=True)
    return model


#: name -> (builder, facts about the model the tests check)
CORPUS: dict[str, tuple[Callable[[], onnx.ModelProto], dict]] = {
    "nchw": (lambda: make_cnn("NCHW"), {"layout": "NCHW"}),
    "nhwc_tf2onnx": (lambda: make_cnn("NHWC"), {"layout": "NHWC"}),
    "softmax": (lambda: make_cnn("NHWC", softmax=True), {"layout": "NHWC", "softmax": True}),
    "uint8_nhwc": (
        lambda: make_cnn("NHWC", uint8=True, softmax=True),
        {"layout": "NHWC", "uint8": True, "softmax": True},
    ),
    "opset13": (lambda: make_cnn("NCHW", opset=13), {"layout": "NCHW"}),
    "opset_newest": (lambda: make_cnn("NHWC", opset=newest_opset()), {"layout": "NHWC"}),
    "static_batch": (lambda: make_cnn("NHWC", batch=1), {"layout": "NHWC", "batch": 1}),
    "static_batch_nchw": (lambda: make_cnn("NCHW", batch=2), {"layout": "NCHW", "batch": 2}),
    "batchnorm": (lambda: make_cnn("NCHW", bn=True), {"layout": "NCHW"}),
    "shape_batch": (lambda: make_cnn("NCHW", shape_batch=True), {"layout": "NCHW"}),
    "multi_output": (
        lambda: make_cnn("NCHW", outputs=("embedding", "probabilities", "logits")),
        {"layout": "NCHW", "softmax": True},
    ),
}
