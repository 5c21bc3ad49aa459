"""Every registered CAM method against its PyTorch autograd reference, one row per method.

The bundle's raw CAMs (ONNX Runtime + ``explainer.methods``) are compared with
``exporters.torch_reference.reference_cams`` (the formula written again in torch) on a small
seeded CNN with a global-average-pooling + linear head, two images and two targets each.
The rows are the registry's CAM methods (``explainer.methods.METHODS``, pixel methods aside),
each within its spec's ``tolerance``; a CAM method without a torch reference, or a reference
without a method, fails ``test_every_method_has_a_torch_reference``.
"""

from __future__ import annotations

import numpy as np
import pytest

from explainer import Explainer, MethodError
from explainer.methods import METHODS, compute_cams

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from exporters.torch import export_torch, recalibrate_batchnorm, validate  # noqa: E402

#: layer whose head has a spatially varying gradient (a conv block before the pooling), and the
#: last block, whose head is global average pooling + linear, as CAM requires
MIXED, LAST = "features", "block"

#: CAM methods (those with numpy weights), in registry order
CAM_NAMES = [m for m, spec in METHODS.items() if spec.weights is not None]
#: methods compared at LAST rather than MIXED (CAM needs a pooling + linear head)
LAYERS = {"cam": LAST}


def _tiny_net() -> torch.nn.Module:
    """32x32 input -> "features" (32 x 8x8, signed) -> "block" (32 x 8x8) -> global average
    pooling -> linear (10 classes). Seeded, BatchNorm recalibrated."""
    torch.manual_seed(0)
    nn = torch.nn

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU()]

    net = nn.Sequential()
    # "features" ends in a BatchNorm: signed activations, so no two methods coincide
    net.features = nn.Sequential(*block(3, 16, 2), *block(16, 32, 2), *block(32, 32, 1)[:2])
    net.block = nn.Sequential(*block(32, 32, 1))  # a conv reads A itself, no ReLU first
    net.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.fc = nn.Linear(32, 10)
    return recalibrate_batchnorm(net, input_shape=(8, 3, 32, 32))


@pytest.fixture(scope="module")
def tiny():
    """(model, {layer: Explainer}, inputs [2, 3, 32, 32])."""
    net = _tiny_net()
    explainers = {
        layer: Explainer(export_torch(net, layer, input_shape=(2, 3, 32, 32)))
        for layer in (MIXED, LAST)
    }
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    return net, explainers, x


def test_every_method_has_a_torch_reference():
    from exporters.torch_reference import REFERENCE_METHODS

    pixel = {m for m, spec in METHODS.items() if spec.kind == "pixel"}
    assert set(METHODS) - pixel - set(REFERENCE_METHODS) == set(), (
        "each CAM method needs its formula in exporters.torch_reference.REFERENCE_METHODS")
    assert set(REFERENCE_METHODS) - set(METHODS) == set(), "a reference with no method"
    assert set(CAM_NAMES) == set(METHODS) - pixel


@pytest.mark.parametrize("method", CAM_NAMES)
def test_method_matches_torch_reference(tiny, method):
    net, explainers, x = tiny
    layer = LAYERS.get(method, MIXED)
    explainer = explainers[layer]
    report = validate(explainer.bundle, net, layer, x, "top2", explainer, method=method)
    assert report.cams.shape == (2, 2, 8, 8)
    assert np.abs(report.reference).max() > 0, "reference maps are all zero: nothing compared"
    assert report.max_error <= METHODS[method].tolerance, report.errors


def test_methods_differ(tiny):
    """The rows compare different things: no two methods give proportional maps where the
    gradient varies over positions."""
    _, explainers, x = tiny
    explainer = explainers[MIXED]
    names = [m for m in CAM_NAMES if LAYERS.get(m, MIXED) == MIXED]
    cams = {m: explainer.explain(x, top_k=2, method=m).cams for m in names}
    unit = {m: cams[m] / max(np.abs(cams[m]).max(), 1e-12) for m in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(unit[a], unit[b], atol=1e-3), (a, b)


def test_cam_is_gradcam_times_positions_on_a_pooling_linear_head(tiny):
    _, explainers, x = tiny
    explainer = explainers[LAST]
    cam = explainer.explain(x, top_k=2, method="cam").cams
    gradcam = explainer.explain(x, top_k=2, method="gradcam").cams
    np.testing.assert_allclose(cam, gradcam * 64, rtol=1e-4, atol=1e-5 * cam.max())


def test_unknown_method_fails_before_any_graph_run(tiny, monkeypatch):
    _, explainers, x = tiny
    explainer = explainers[MIXED]

    def no_run(*args, **kwargs):
        raise AssertionError("a graph ran")

    monkeypatch.setattr(explainer.runner, "features", no_run)
    with pytest.raises(MethodError, match="available: ablationcam, cam,"):
        explainer.explain(x, method="gradcam+++")


def test_model_methods_need_the_explainer():
    a = np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(MethodError, match="scorecam"):
        compute_cams(a, a, "scorecam")


def test_cam_rejects_a_head_that_is_not_pooling_plus_linear(tiny_cnn):
    from exporters import build_bundle

    explainer = Explainer(build_bundle(tiny_cnn, "act", target_layer="relu2"))
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    with pytest.raises(MethodError, match="Relu node 'relu3'"):
        explainer.explain(x, method="cam")
