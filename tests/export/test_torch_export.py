"""The PyTorch front end on small models (fast; the 12-model matrix is test_validation_matrix)."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from explainer import Bundle, Explainer, InputError, MethodError, TargetError  # noqa: E402
from exporters import export_torch, validate  # noqa: E402
from exporters.torch import ExportError, relative_l2, resolve_layer  # noqa: E402

pytestmark = pytest.mark.torch


class Net(nn.Module):
    """Conv-BN-ReLU stem, a residual block, then an in-place ReLU on the block's output (the
    DenseNet pattern that aliases a hooked tensor), global pooling and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8))
        self.skip = nn.Conv2d(8, 8, 1, stride=2)
        self.merge = nn.Identity()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.merge(self.block(x) + self.skip(x))
        x = F.relu(x, inplace=True)  # modifies the tensor a hook on `merge` captured
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    model = Net()
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model(torch.randn(8, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("dynamo", [True, False])
@pytest.mark.parametrize("layer", ["stem", "block", "merge"])
def test_export_matches_autograd(net, layer, dynamo):
    bundle = export_torch(net, layer, input_shape=(1, 3, 32, 32), dynamo=dynamo,
                          labels=[f"class{i}" for i in range(5)])
    assert bundle.manifest["target"]["layer"] == layer
    assert bundle.manifest["num_classes"] == 5
    assert bundle.manifest["input"]["shape"][0] not in (1, 2)  # the batch stays symbolic
    bundle.check()
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    report = validate(bundle, net, layer, x, "top2+least")
    assert report.max_error < 1e-4, report.errors
    assert report.logits_error < 1e-4
    assert Explainer(bundle).explain(x[:1]).labels[0][0].startswith("class")


def test_target_given_as_module_and_round_trip(net, tmp_path):
    bundle = export_torch(net, net.block, input_shape=(1, 3, 32, 32))
    assert bundle.manifest["target"]["layer"] == "block"
    loaded = Bundle.load(bundle.save(tmp_path / "net.onnxcam"))
    x = np.ones((2, 3, 32, 32), np.float32)
    np.testing.assert_array_equal(Explainer(loaded).explain(x, targets=[1, 3]).cams,
                                  Explainer(bundle).explain(x, targets=[1, 3]).cams)


def test_unknown_layer_is_named(net):
    with pytest.raises(ExportError, match="layer9"):
        export_torch(net, "layer9", input_shape=(1, 3, 32, 32))
    with pytest.raises(ExportError, match="not a submodule"):
        export_torch(net, nn.ReLU(), input_shape=(1, 3, 32, 32))


@pytest.mark.parametrize("layer", ["stem", "block", "merge"])
def test_export_at_one_size_explain_at_another(net, layer):
    """Exported at 32x32, explained at 40x52 and 17x23: the heights and widths stay symbolic,
    the Conv gradients take their sizes at run time, and the CAMs match autograd there."""
    bundle = export_torch(net, layer, input_shape=(1, 3, 32, 32))
    assert bundle.manifest["input"]["shape"][2:] == ["height", "width"]
    assert bundle.manifest["export"] == {"exporter": "dynamo", "dynamic_size": True}
    explainer = Explainer(bundle)
    for size in [(40, 52), (17, 23)]:
        x = np.random.default_rng(1).normal(size=(2, 3, *size)).astype(np.float32)
        report = validate(bundle, net, layer, x, "top2", explainer=explainer)
        assert report.max_error < 1e-4, (size, report.errors)
        assert explainer.explain(x).heatmaps.shape[2:] == size


def test_fixed_size_model_names_the_size_it_takes(net):
    bundle = export_torch(net, "block", input_shape=(1, 3, 32, 32), dynamic_size=False)
    with pytest.raises(InputError, match=r"expects shape \['batch', 3, 32, 32\].*axis 2"):
        Explainer(bundle).explain(np.zeros((1, 3, 40, 32), np.float32))


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow "SAME" padding computed in forward from the input's size,
    as timm's ``Conv2dSame`` (``pad_same``) and EfficientNet ports do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[-2:], self.kernel_size, self.stride,
                                        strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return super().forward(F.pad(x, (left, right, top, bottom)))


class SameNet(nn.Module):
    """Four stride-2 "SAME" convolutions (with BatchNorm and ReLU), pooling and a classifier.
    Exported with symbolic height and width it took 109 s (2 stages: 17 s) on the 2-core
    machine, in torch.export's sympy reasoning about the nested ceilings of the sizes."""

    def __init__(self) -> None:
        super().__init__()
        channels = [3, 8, 8, 16, 16]
        self.stages = nn.Sequential(*[
            nn.Sequential(Conv2dSame(c_in, c_out, 3, stride=2), nn.BatchNorm2d(c_out), nn.ReLU())
            for c_in, c_out in zip(channels, channels[1:])
        ])
        self.fc = nn.Linear(channels[-1], 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.stages(x), 1).flatten(1))


class PooledNet(nn.Module):
    """VGG's shape: features, an adaptive average pooling to 3x3 (exported for any input size
    as index tensors computed from the input's size, which cross the cut), a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Linear(16 * 9, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def test_sizes_crossing_the_cut_keep_the_explanation_graph():
    """The pooling's indices cross the cut beside the activation: the explanation graph
    recomputes them for the B*K gradient rows from the input's shape, and its maps equal the
    two graphs' at several sizes, batches and target counts (and torch autograd's)."""
    torch.manual_seed(0)
    model = PooledNet().eval()
    bundle = export_torch(model, "features.4")
    assert len(bundle.manifest["head"]["inputs"]) == 2  # the activation and a size tensor
    graph, two = Explainer(bundle), Explainer(bundle, explanation_graph=False)
    assert graph.graph is not None
    for shape in [(1, 3, 32, 32), (3, 3, 40, 56)]:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        for top_k, method in [(1, "gradcam"), (3, "layercam")]:
            got, want = (e.explain(x, top_k=top_k, method=method) for e in (graph, two))
            np.testing.assert_array_equal(got.class_ids, want.class_ids)
            np.testing.assert_allclose(got.cams, want.cams, rtol=1e-5,
                                       atol=1e-5 * np.abs(want.cams).max())
            np.testing.assert_allclose(got.heatmaps, want.heatmaps, atol=1e-5)
    x = np.random.default_rng(1).random((2, 3, 40, 56), dtype=np.float32)
    report = validate(bundle, model, "features.4", x, "top2", explainer=graph)
    assert report.errors.max() < 1e-4


def test_size_dependent_padding_exports_at_a_static_size_quickly(caplog):
    """TF "SAME" padding computed from ``x.shape[-2:]``: the default export detects it, exports
    at the example's size in seconds (not minutes), logs and records why, and the bundle's
    CAMs match autograd."""
    torch.manual_seed(0)
    net = SameNet()
    net.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net(torch.randn(8, 3, 32, 32))
    net.eval()
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="exporters.torch"):
        bundle = export_torch(net, "stages.2", input_shape=(1, 3, 32, 32))
    seconds = time.perf_counter() - start
    assert seconds < 60, f"the default export took {seconds:.0f} s"
    notes = bundle.manifest["export"]
    assert notes["exporter"] == "dynamo" and notes["dynamic_size"] is False, notes
    assert "padding computed from the input size" in notes["dynamic_size_reason"]
    assert "'stages.0.0'" in notes["dynamic_size_reason"]  # names the padding module
    assert any("static height and width" in r.getMessage() for r in caplog.records)
    assert bundle.manifest["input"]["shape"][1:] == [3, 32, 32]
    assert bundle.manifest["input"]["shape"][0] not in (1, 2)  # the batch stays symbolic
    x = np.random.default_rng(6).normal(size=(3, 3, 32, 32)).astype(np.float32)
    report = validate(bundle, net, "stages.2", x, "top2+least")
    assert report.max_error < 1e-4, report.errors
    assert report.logits_error < 1e-4
    with pytest.raises(InputError, match=r"expects shape \['batch', 3, 32, 32\]"):
        Explainer(bundle).explain(np.zeros((1, 3, 33, 32), np.float32))


def _autograd_cams(net, layer, x, score_fn):
    """Grad-CAM of an arbitrary scalar score per image by autograd (independent reference)."""
    _, module = resolve_layer(net, layer)
    store = {}
    hook = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = net(torch.as_tensor(x))
    finally:
        hook.remove()
    (grad,) = torch.autograd.grad(score_fn(logits).sum(), store["a"])
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * store["a"]).sum(dim=1)).detach().numpy()


def test_contrast_and_probability_scores_match_autograd(net):
    bundle = export_torch(net, "block", input_shape=(1, 3, 32, 32))
    explainer = Explainer(bundle)
    x = np.random.default_rng(3).normal(size=(3, 3, 32, 32)).astype(np.float32)
    rows = torch.arange(3)
    e = explainer.explain(x, targets=[1, 2, 4], contrast=0)
    np.testing.assert_array_equal(e.contrast_ids, [[0], [0], [0]])
    ref = _autograd_cams(net, "block", x, lambda z: z[rows, [1, 2, 4]] - z[:, 0])
    assert relative_l2(e.cams[:, 0], ref).max() < 1e-4
    e = explainer.explain(x, targets="top1", score="probability")
    top = torch.as_tensor(e.class_ids[:, 0])
    ref = _autograd_cams(net, "block", x, lambda z: torch.softmax(z, 1)[rows, top])
    assert e.score == "probability" and relative_l2(e.cams[:, 0], ref).max() < 1e-4
    # a contrast per target, and the prediction-dependent forms
    e = explainer.explain(x, targets="top2", contrast="least")
    assert e.contrast_ids.shape == (3, 1) and e.cams.shape[:2] == (3, 2)
    with pytest.raises(TargetError, match="one contrast class per image or one per target"):
        explainer.explain(x, targets="top3", contrast="top2")
    with pytest.raises(TargetError, match="score must be"):
        explainer.explain(x, score="logits")


def test_layer_sweep_one_bundle_matches_autograd_at_every_layer(net):
    """export_torch(model, [layers]) makes one bundle; one features run and one backward pass
    give every layer's maps, each equal to autograd's Grad-CAM there."""
    bundle = export_torch(net, ["stem", "block", "merge"], input_shape=(1, 3, 32, 32))
    assert [layer["layer"] for layer in bundle.manifest["layers"]] == ["stem", "block", "merge"]
    assert bundle.explanation is None  # sweeps use the two graphs
    x = np.random.default_rng(4).normal(size=(2, 3, 32, 32)).astype(np.float32)
    explainer = Explainer(bundle)
    e = explainer.explain(x, targets="top2")
    assert list(e.layers) == ["stem", "block", "merge"]
    for layer, maps in e.layers.items():
        single = export_torch(net, layer, input_shape=(1, 3, 32, 32))
        report = validate(single, net, layer, x, e.class_ids)
        assert relative_l2(maps.cams, report.reference).max() < 1e-4, layer
        assert maps.heatmaps.shape == (2, 2, 32, 32)
    np.testing.assert_array_equal(e.cams, e.layers["stem"].cams)
    mean = np.mean([m.heatmaps for m in e.layers.values()], axis=0)
    lo, hi = mean.min(axis=(2, 3), keepdims=True), mean.max(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(e.heatmaps, (mean - lo) / (hi - lo), atol=1e-6)
    top = explainer.explain(x, targets="top2", fuse="max").heatmaps
    assert not np.allclose(top, e.heatmaps)
    np.testing.assert_array_equal(explainer.explain(x, targets="top2", fuse=None).heatmaps,
                                  e.layers["stem"].heatmaps)


def test_layer_sweep_methods_that_rerun_the_model_use_each_layers_head(net):
    """Ablation-CAM replaces each layer's own activation (the head from that layer on) and
    Score-CAM masks the input with each layer's channels: every layer of a sweep equals its
    single-layer bundle; a layer a skip connection bypasses is refused by name."""
    x = np.random.default_rng(5).normal(size=(2, 3, 32, 32)).astype(np.float32)
    sweep = Explainer(export_torch(net, ["stem", "merge"], input_shape=(1, 3, 32, 32)))
    for method in ("ablationcam", "scorecam"):
        e = sweep.explain(x, targets="top2", method=method)
        for layer, maps in e.layers.items():
            single = Explainer(export_torch(net, layer, input_shape=(1, 3, 32, 32)))
            expected = single.explain(x, targets=e.class_ids, method=method)
            assert np.abs(expected.cams).max() > 0
            assert relative_l2(maps.cams, expected.cams).max() < 1e-4, (method, layer)
    last = Explainer(export_torch(net, ["merge"], input_shape=(1, 3, 32, 32)))
    cam = last.explain(x, targets="top2", method="cam")
    gradcam = last.explain(x, targets="top2")
    assert relative_l2(cam.cams, gradcam.cams * 16 * 16).max() < 1e-4  # CAM = Grad-CAM * h*w
    with pytest.raises(MethodError, match="global average pooling"):
        sweep.explain(x, method="cam")  # the stem is no GAP + linear head
    bypassed = Explainer(export_torch(net, ["stem", "block", "merge"],
                                      input_shape=(1, 3, 32, 32)))
    with pytest.raises(MethodError, match="alone"):
        bypassed.explain(x, method="ablationcam")
