"""Fuzzing with hypothesis: image decoding, manifest parsing, target parsing, and random small
ONNX graphs through split + autodiff. Each either succeeds or raises a typed OnnxcamError;
gradients that are built must match finite differences.

The normal suite runs a fast, derandomized subset (a few seconds). The long run::

    ONNXCAM_FUZZ_EXAMPLES=10000 pytest tests/runtime/test_fuzz.py

spreads that many cases over the tests (images 30%, manifests 25%, targets 25%, graphs 20%),
with random seeds (derandomize off).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_tiny_cnn
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from explainer import Bundle, Explainer, ImageError, OnnxcamError, TargetError, load_image
from explainer.targets import plan_targets
from exporters import build_bundle
from exporters.autodiff import build_gradient_graph
from exporters.graph import infer_shapes
from exporters.split import split_model

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.fuzz
TOTAL = int(os.environ.get("ONNXCAM_FUZZ_EXAMPLES", "0"))
#: what the random graphs came to: gradient checked, no verdict (kink, overflow), typed error
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    yield
    if OUTCOMES:
        print(f"\nrandom graphs: {dict(OUTCOMES)}")


def fuzz(fast: int, share: float) -> settings:
    """``fast`` derandomized cases in the normal suite; ``share`` of ONNXCAM_FUZZ_EXAMPLES,
    random, in the long run."""
    return settings(
        max_examples=max(fast, int(TOTAL * share)) if TOTAL else fast,
        derandomize=not TOTAL,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# --- image decoding -----------------------------------------------------------------------------
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM"]


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(len(fmt))
    pixels = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


ENCODED = {fmt: _encoded(fmt) for fmt in FORMATS}
MAGICS = [data[:8] for data in ENCODED.values()]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _decodes_or_image_error(path: Path) -> None:
    try:
        image = load_image(path, max_pixels=1_000_000)
    except ImageError as err:
        assert str(path) in str(err)
        return
    assert image.mode == "RGB" and image.width * image.height <= 1_000_000


@fuzz(60, 0.15)
@given(prefix=st.sampled_from([b"", *MAGICS]), data=st.binary(max_size=2048),
       suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".webp", ""]))
def test_random_bytes_decode_or_raise_image_error(scratch, prefix, data, suffix):
    path = scratch / f"random{suffix}"
    path.write_bytes(prefix + data)
    _decodes_or_image_error(path)


@fuzz(60, 0.15)
@given(fmt=st.sampled_from(FORMATS), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_truncated_and_corrupted_files_decode_or_raise_image_error(scratch, fmt, cut, flips):
    data = bytearray(ENCODED[fmt][: int(len(ENCODED[fmt]) * cut)])
    for where, value in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] = value
    path = scratch / f"broken.{fmt.lower()}"
    path.write_bytes(bytes(data))
    _decodes_or_image_error(path)


# --- manifests ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    bundle = build_bundle(make_tiny_cnn(), "act", labels=list("abcde"))
    return bundle.save(tmp_path_factory.mktemp("bundle") / "tiny")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=8,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@st.composite
def manifests(draw, valid: dict):
    manifest = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(manifest) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)
    return manifest


def _valid_manifest() -> dict:
    return build_bundle(make_tiny_cnn(), "act", labels=list("abcde")).manifest


@fuzz(80, 0.25)
@given(manifest=manifests(_valid_manifest()), as_text=st.booleans(), junk=st.text(max_size=20))
def test_random_manifests_load_or_raise_bundle_error(bundle_dir, scratch, manifest, as_text,
                                                     junk):
    folder = scratch / "manifest_bundle"
    if not folder.exists():
        shutil.copytree(bundle_dir, folder)
    text = junk if as_text else json.dumps(manifest)
    (folder / "manifest.json").write_text(text)
    try:
        bundle = Bundle.load(folder)
    except OnnxcamError as err:  # BundleError, or LabelError for labels that do not fit
        assert type(err).__name__ in ("BundleError", "LabelError"), err
        return
    try:  # a manifest that loads must make an Explainer that works, or fail typed
        explainer = Explainer(bundle)
        explainer.explain(np.zeros((1, 3, 16, 16), np.float32), targets="top1")
    except OnnxcamError:
        pass


# --- targets ------------------------------------------------------------------------------------
SPECS = (
    st.none() | st.integers(-5, 12) | st.booleans() | st.floats()
    | st.text(alphabet="topleast+0123456789 -,", max_size=14) | st.text(max_size=8)
    | st.lists(st.integers(-3, 9), max_size=4)
    | st.lists(st.lists(st.integers(-3, 9), max_size=3), max_size=3)
)


@fuzz(300, 0.25)
@given(spec=SPECS, top_k=st.none() | st.integers(-2, 8), batch=st.integers(1, 3),
       classes=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_random_target_specs_give_ids_or_target_error(spec, top_k, batch, classes, seed):
    try:
        plan = plan_targets(spec, top_k, batch, classes)
        logits = np.random.default_rng(seed).normal(size=(batch, classes)).astype(np.float32)
        ids = plan.resolve(logits)
    except TargetError:
        return
    assert ids.ndim == 2 and ids.shape[0] == batch and ids.shape[1] >= 1
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < classes


# --- random graphs through split and autodiff ---------------------------------------------------
UNARY = ["Relu", "Sigmoid", "Tanh", "Abs", "Exp", "LeakyRelu", "Sin", "Softplus", "Elu"]
OPS = [*UNARY, "Mul", "Add", "Conv", "DepthwiseConv", "MaxPool", "AveragePool", "Transpose",
       "Reshape", "Softmax", "Clip", "Residual"]


class _Chain:
    """Builds input [1, C, H, W] -> random ops -> GlobalAveragePool -> Flatten -> MatMul."""

    def __init__(self, rng: np.random.Generator, shape: list[int]) -> None:
        self.rng, self.shape = rng, list(shape)
        self.nodes, self.inits, self.count, self.x = [], [], 0, "input"

    def const(self, array: np.ndarray) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> None:
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.count}", **attrs))
        self.x = out

    def add(self, op: str) -> None:  # noqa: C901 - one branch per op
        c, h, w = self.shape[1:]
        weights = lambda *s: self.rng.normal(0, 0.5, s).astype(np.float32)  # noqa: E731
        if op in UNARY:
            self.node(op, [self.x], **({"alpha": 0.1} if op == "LeakyRelu" else {}))
        elif op in ("Mul", "Add"):
            shape = [(c, 1, 1), (1,), (1, c, h, w)][self.rng.integers(3)]
            self.node(op, [self.x, self.const(weights(*shape))])
        elif op == "Conv":
            k, out = int(self.rng.choice([1, 3])), int(self.rng.integers(1, 5))
            stride = int(self.rng.choice([1, 2])) if min(h, w) >= 2 else 1
            self.node("Conv", [self.x, self.const(weights(out, c, k, k))], pads=[k // 2] * 4,
                      strides=[stride] * 2)
            self.shape = [1, out, (h - 1) // stride + 1, (w - 1) // stride + 1]
        elif op == "DepthwiseConv":
            self.node("Conv", [self.x, self.const(weights(c, 1, 3, 3))], pads=[1] * 4, group=c)
        elif op in ("MaxPool", "AveragePool") and min(h, w) >= 2:
            self.node(op, [self.x], kernel_shape=[2, 2], strides=[2, 2])
            self.shape = [1, c, h // 2, w // 2]
        elif op == "Transpose":
            self.node("Transpose", [self.x], perm=[0, 1, 3, 2])
            self.shape = [1, c, w, h]
        elif op == "Reshape":
            self.node("Reshape", [self.x, self.const(np.array([1, c, h * w, 1], np.int64))])
            self.shape = [1, c, h * w, 1]
        elif op == "Softmax":
            self.node("Softmax", [self.x], axis=1)
        elif op == "Clip":
            self.node("Clip", [self.x, self.const(np.float32(-1)), self.const(np.float32(1))])
        elif op == "Residual":
            start = self.x
            self.node("Sigmoid", [start])
            self.node("Add", [start, self.x])

    def model(self, classes: int) -> onnx.ModelProto:
        self.node("GlobalAveragePool", [self.x])
        self.node("Flatten", [self.x])
        weights = self.rng.normal(0, 0.5, (self.shape[1], classes)).astype(np.float32)
        self.nodes.append(helper.make_node("MatMul", [self.x, self.const(weights)], ["logits"],
                                           name="fc"))
        graph = helper.make_graph(
            self.nodes, "fuzz",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 6, 5])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _overflows(head: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> bool:
    """True when a value inside the head is not finite (then so may be its gradient)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(head)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for node in probe.graph.node for name in node.output
                              if name not in known)
    return not all(np.isfinite(v).all() for v in _session(probe).run(None, feeds))


def _check_gradient(model: onnx.ModelProto, target: str, rng: np.random.Generator) -> None:
    """The gradient head's dA against central differences along a random direction."""
    split = split_model(infer_shapes(model), target, ["logits"])
    head = build_gradient_graph(split.head, target, "logits")
    x = rng.normal(size=(1, 3, 6, 5)).astype(np.float32)
    cut = dict(zip(split.cut_tensors, _session(split.features).run(None, {"input": x})))
    seed = rng.normal(size=(1, 4)).astype(np.float32)
    gradient = _session(head).run(["gradient"], {**cut, "seed": seed})[0]
    forward = _session(split.head)
    a = cut[target].astype(np.float64)
    v = rng.normal(size=a.shape)

    def score(delta: float) -> float:
        feeds = {**cut, target: (a + delta * v).astype(np.float32)}
        return float((forward.run(["logits"], feeds)[0] * seed).sum())

    if np.abs(a).max() > 1e3 or _overflows(split.head, cut):
        OUTCOMES["no verdict: overflow"] += 1
        return  # exp of exp ... overflows, or a step of 1e-3 vanishes in float32: no verdict
    assert np.isfinite(gradient).all()
    analytic = float((gradient * v).sum())
    eps, at = 1e-3, score(0.0)
    up, down = score(eps), score(-eps)
    central, forward, backward = (up - down) / (2 * eps), (up - at) / eps, (at - down) / eps
    scale = max(abs(analytic), abs(central), 1e-2 * np.abs(gradient).sum() + 1e-6)
    rounding = 2e-6 * (abs(at) + abs(up) + abs(down)) / eps  # float32 scores, with margin
    if abs(forward - backward) > 1e-2 * scale + rounding:
        OUTCOMES["no verdict: kink"] += 1
        return  # a kink (ReLU/Abs/Clip edge, MaxPool tie) within eps along v: no verdict
    assert abs(analytic - central) <= 2e-2 * scale + rounding, (analytic, central)
    OUTCOMES["gradient checked"] += 1


@fuzz(25, 0.2)
@given(ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=6), data=st.data(),
       seed=st.integers(0, 2**32 - 1))
def test_random_graphs_give_a_correct_gradient_or_a_typed_error(ops, data, seed):
    rng = np.random.default_rng(seed)
    chain = _Chain(rng, [1, 3, 6, 5])
    names = []
    for op in ops:
        chain.add(op)
        names.append(chain.x)
    model = chain.model(classes=4)
    target = data.draw(st.sampled_from(["input", *dict.fromkeys(names)]))
    try:
        onnx.checker.check_model(model)
        _check_gradient(model, target, rng)
    except OnnxcamError as err:  # e.g. MissingGradientRule for Sin / Softplus / Elu
        OUTCOMES[type(err).__name__] += 1
