"""check_gradients: agrees on correct heads, catches wrong gradients (no torch)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_tiny_cnn
from onnx import helper, numpy_helper
from onnx_corpus import make_cnn

from explainer import Bundle
from explainer.gradcheck import GradientCheckError, check_gradients, random_inputs
from exporters import build_bundle, export_onnx


def _corrupt(bundle: Bundle, factor: np.ndarray) -> Bundle:
    """A copy of ``bundle`` whose head multiplies its gradient by ``factor`` (broadcast)."""
    head = onnx.ModelProto.FromString(bundle.head.SerializeToString())
    gradient = bundle.manifest["head"]["gradient"]
    for node in head.graph.node:
        for k, name in enumerate(node.output):
            if name == gradient:
                node.output[k] = "raw_gradient"
    head.graph.initializer.append(numpy_helper.from_array(factor.astype(np.float32), "factor"))
    head.graph.node.append(helper.make_node("Mul", ["raw_gradient", "factor"], [gradient]))
    return Bundle(bundle.features, head, {**bundle.manifest, "explanation": None})


def test_tiny_cnn_passes_with_a_readable_report():
    bundle = build_bundle(make_tiny_cnn(), "act")
    report = check_gradients(bundle, directions=2)
    assert report.passed and report.max_error < 5e-2
    assert report.errors.shape == (2, 3) and report.class_ids.shape == (2,)
    assert report.target == "act"
    text = str(report)
    assert "PASS" in text and "grad" in text and text.count("\n") == 2 + 2 * 3


def test_linear_head_agrees_to_float_precision():
    report = check_gradients(export_onnx(make_cnn("NHWC")), directions=4)
    assert report.max_error < 1e-3  # global pool + classifier: no kinks, only rounding


@pytest.mark.parametrize("factor", ["scale", "channel", "sign"])
def test_wrong_gradients_are_caught(factor):
    bundle = export_onnx(make_cnn("NCHW"), target="relu_17")
    shape = [1, *bundle.manifest["target"]["shape"][1:]]
    if factor == "scale":
        wrong = np.full(shape, 1.2)
    elif factor == "channel":
        wrong = np.ones(shape)
        wrong[:, ::2] = 0.0  # half the channels lose their gradient
    else:
        wrong = np.ones(shape)
        wrong[..., : shape[-1] // 2] = -1.0  # left half flipped
    assert check_gradients(bundle, directions=3).passed
    report = check_gradients(_corrupt(bundle, wrong), directions=3)
    assert not report.passed and report.max_error > 0.15, str(report)


def test_static_batch_and_given_classes():
    bundle = export_onnx(make_cnn("NHWC", batch=1))
    x = random_inputs(bundle, batch=3)
    assert x.shape == (3, 32, 32, 3)
    report = check_gradients(bundle, x, class_ids=[0, 4, 9], directions=1, eps=1e-2)
    assert report.passed and report.class_ids.tolist() == [0, 4, 9]
    assert report.eps == (1e-2,) and np.all(report.steps == 1e-2)


def test_bad_arguments():
    bundle = export_onnx(make_cnn("NCHW"))
    with pytest.raises(GradientCheckError, match="class ids"):
        check_gradients(bundle, random_inputs(bundle, batch=2), class_ids=[1])
    with pytest.raises(GradientCheckError, match="steps > 0"):
        check_gradients(bundle, eps=0.0)
