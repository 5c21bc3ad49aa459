"""The library's bad-input table: each bad input raises a typed OnnxcamError naming the problem."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_tiny_cnn
from onnx import helper
from onnx_corpus import make_cnn
from PIL import Image

import explainer.errors
import exporters.errors
from explainer import (
    Bundle,
    BundleError,
    Explainer,
    ImageError,
    InputError,
    OnnxcamError,
    TargetError,
    load_image,
    preprocess,
)
from explainer.bundle import SCHEMA_VERSION
from explainer.cli import main
from exporters import build_bundle
from exporters.errors import MissingGradientRule


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    bundle = build_bundle(make_tiny_cnn(), "act", target_layer="relu2", labels=list("abcde"))
    return bundle.save(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def tiny(bundle_dir) -> Explainer:
    return Explainer(bundle_dir)


def _x(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(batch, 3, 16, 16)).astype(np.float32)


def _with(x: np.ndarray, index: tuple, value: float) -> np.ndarray:
    x = x.copy()
    x[index] = value
    return x


BAD_INPUTS = {
    "nan": (lambda: _with(_x(), (1, 0, 3, 3), np.nan), "NaN or infinite"),
    "inf": (lambda: _with(_x(), (0, 2, 0, 0), -np.inf), "NaN or infinite"),
    "rank 3": (lambda: _x()[0], "expects rank 4"),
    "rank 5": (lambda: _x()[None], "expects rank 4"),
    "channels": (lambda: np.zeros((1, 4, 16, 16), np.float32), "axis 1"),
    "height": (lambda: np.zeros((1, 3, 15, 16), np.float32), "axis 2"),
    "empty batch": (lambda: np.zeros((0, 3, 16, 16), np.float32), "empty"),
    "int dtype": (lambda: _x().astype(np.int32), "float32, got int32"),
    "complex dtype": (lambda: _x().astype(np.complex64), "float32"),
    "not an array": (lambda: _x().tolist(), "numpy array"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_batches(case, tiny):
    make, message = BAD_INPUTS[case]
    with pytest.raises(InputError, match=message) as info:
        tiny.explain(make())
    assert info.value.exit_code == 2


def test_float_input_for_a_uint8_model(tmp_path):
    explainer = Explainer(build_bundle(make_cnn("NHWC", uint8=True), "features",
                                       input_layout="NHWC", target_layout="NHWC"))
    with pytest.raises(InputError, match="uint8"):
        explainer.explain(np.zeros((1, 32, 32, 3), np.float32))


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_static_batch_models_take_any_batch(batch):
    """A model whose batch is fixed at 2 runs in chunks: every batch size works and equals the
    image-by-image results."""
    explainer = Explainer(build_bundle(make_cnn("NCHW", batch=2), "features"))
    assert explainer.spec.input.static_batch == 2
    x = np.random.default_rng(batch).normal(size=(batch, 3, 32, 32)).astype(np.float32)
    together = explainer.explain(x, targets="top2")
    for i in range(batch):
        alone = explainer.explain(x[i : i + 1], targets="top2")
        np.testing.assert_array_equal(alone.class_ids[0], together.class_ids[i])
        np.testing.assert_allclose(alone.heatmaps[0], together.heatmaps[i], atol=1e-5)


BAD_TARGETS = {
    "id too large": (5, "out of range"),
    "negative id": (-1, "out of range"),
    "id in a string": ("top1+7", "out of range"),
    "per-image id": ([0, 9], "out of range"),
    "unknown name": ("cat", "unknown class name 'cat'"),
    "name close to a label": (["bb", "a"], r"unknown class name 'bb'; close matches: \['b'\]"),
    "empty term": ("top1+", "cannot read target term ''"),
    "top0": ("top0", "between 1 and 5"),
    "top too large": ("top6", "between 1 and 5"),
    "float ids": ([0.5, 1.5], "integers"),
    "ragged": ([[0, 1], [2]], "rectangular"),
    "wrong batch": ([[0], [1], [2]], "do not match a batch of 2"),
    "bool": (True, "integers"),
}


@pytest.mark.parametrize("case", list(BAD_TARGETS))
def test_bad_targets(case, tiny):
    spec, message = BAD_TARGETS[case]
    with pytest.raises(TargetError, match=message) as info:
        tiny.explain(_x(), targets=spec)
    assert info.value.exit_code == 2


def _broken_bundle(src: Path, dst: Path, case: str) -> Path:
    shutil.copytree(src, dst)
    manifest_path = dst / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if case == "missing manifest":
        manifest_path.unlink()
    elif case == "missing head":
        (dst / "head.onnx").unlink()
    elif case == "manifest not JSON":
        manifest_path.write_text("{'schema_version': 1,")
    elif case == "manifest not an object":
        manifest_path.write_text("[1, 2]")
    elif case.startswith("missing field "):
        path = case.removeprefix("missing field ").split(".")
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        manifest_path.write_text(json.dumps(manifest))
    elif case == "field of the wrong type":
        manifest["num_classes"] = "5"
        manifest_path.write_text(json.dumps(manifest))
    elif case == "newer schema":
        manifest["schema_version"] = SCHEMA_VERSION + 1
        manifest_path.write_text(json.dumps(manifest))
    elif case == "graph not ONNX":
        (dst / "features.onnx").write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    elif case == "graph is a PNG":
        Image.new("RGB", (4, 4)).save(dst / "head.onnx", format="PNG")
    elif case == "manifest names a tensor the head lacks":
        manifest["head"]["gradient"] = "no_such_tensor"
        manifest_path.write_text(json.dumps(manifest))
    return dst


BAD_BUNDLES = {
    "missing manifest": "manifest.json is missing",
    "missing head": "head.onnx is missing",
    "manifest not JSON": "not valid JSON",
    "manifest not an object": "expected a JSON object",
    "missing field schema_version": "'schema_version' is missing",
    "missing field num_classes": "'num_classes' is missing",
    "missing field head": "'head' is missing",
    "missing field input.name": "input.name is missing",
    "missing field head.gradient": "head.gradient is missing",
    "field of the wrong type": "'num_classes' is missing or not a int",
    "newer schema": f"schema_version {SCHEMA_VERSION + 1} is newer",
    "graph not ONNX": "features.onnx: cannot be read as ONNX",
    "graph is a PNG": "head.onnx: cannot be read as ONNX",
    "manifest names a tensor the head lacks": "'no_such_tensor' is not an output",
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bad_bundles(case, bundle_dir, tmp_path, capsys):
    broken = _broken_bundle(bundle_dir, tmp_path / "broken", case)
    with pytest.raises(BundleError, match=BAD_BUNDLES[case]):
        Bundle.load(broken)
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(image)
    assert main(["explain", str(broken), str(image), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1  # one line


def test_not_a_bundle_directory(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        Bundle.load(tmp_path / "nothing")


def test_head_op_without_gradient_rule(tmp_path, capsys):
    """A head op with no gradient rule: MissingGradientRule names the op and node; the CLI
    reports it in one line with exit code 1 (a failure, not a usage error)."""
    model = make_tiny_cnn()
    nodes = list(model.graph.node)
    at = next(i for i, n in enumerate(nodes) if n.name == "relu3")
    nodes[at] = helper.make_node("Softplus", ["c3"], ["r3"], name="softplus3")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    with pytest.raises(MissingGradientRule, match="'Softplus' \\(node 'softplus3'\\)") as info:
        build_bundle(model, "act")
    assert info.value.op_type == "Softplus" and info.value.exit_code == 1
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    assert main(["export", str(path), "--layer", "act", "-o", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "no gradient rule for op 'Softplus'" in err and err.count("\n") == 1


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (4000, 3000)).save(path, optimize=True)  # 12 Mpixel in a few kB
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageError, match=r"4000x3000 = 12,000,000 pixels exceeds the limit of "
                                         r"1,000,000") as info:
        load_image(path, max_pixels=1_000_000)
    assert "max-pixels" in str(info.value) and str(path) in str(info.value)
    from explainer.preprocessing import Preprocessing

    with pytest.raises(ImageError, match="exceeds the limit"):
        preprocess([path], Preprocessing(resize=8, crop=None), max_pixels=10_000)
    assert load_image(path, max_pixels=12_000_000).size == (4000, 3000)


def test_unreadable_images(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    for name in ("empty.png", "text.jpg", "missing.png"):
        with pytest.raises(ImageError, match=name):
            load_image(tmp_path / name)


def _error_classes() -> list[type]:
    classes = []
    for module in (explainer.errors, exporters.errors):
        classes += [c for _, c in inspect.getmembers(module, inspect.isclass)
                    if issubclass(c, Exception)]
    return classes


def test_every_error_is_an_onnxcam_error_with_an_exit_code():
    classes = _error_classes()
    assert len(classes) >= 15
    for cls in classes:
        assert issubclass(cls, OnnxcamError), cls
        assert cls.exit_code in (1, 2), cls
