"""The metrics against their reference implementations on the same model, images and maps:
torchcam 0.5's ``ClassificationMetric`` (Average Drop, Increase in Confidence) and
pytorch-grad-cam 1.5.7's ``ROADMostRelevantFirst``, ``ROADLeastRelevantFirst``,
``ROADCombined``, ``DropInConfidence`` and ``IncreaseInConfidence``.

The model is a small seeded torch CNN exported to a bundle; the maps are the bundle's
Grad-CAM maps quantized to multiples of 1/64 (so both sides threshold the same pixels at a
percentile whatever their float precision). Tolerance: 1e-5 absolute on probabilities (ONNX
Runtime against torch, float32). ROAD's imputation noise is set to 0 on both sides (the noise
itself is drawn by different generators).

Deliberate differences, checked with their formulas:

* Average Drop: ours ``100 * max(0, Y - O) / Y``; torchcam ``max(0, Y - O) / (Y + 1e-7)``
  (a fraction); pytorch-grad-cam's ``DropInConfidence`` ``max(0, Y - O)`` (no division).
* Increase in Confidence: ours ``100 * 1[O > Y]``; torchcam and pytorch-grad-cam
  ``1[O > Y]``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import pytest

from explainer import Explainer
from explainer.evaluation import evaluate

pytestmark = [
    pytest.mark.torch,
    # pytorch-grad-cam hands torch tensors to numpy.percentile
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning"),
]
torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
road = pytest.importorskip("pytorch_grad_cam.metrics.road")
torchcam_metrics = pytest.importorskip("torchcam.metrics")

from pytorch_grad_cam.metrics.cam_mult_image import (  # noqa: E402
    DropInConfidence,
    IncreaseInConfidence,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget  # noqa: E402
from reference_nets import reference_net  # noqa: E402

from exporters.torch import export_torch  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def case():
    net = reference_net(32)
    explainer = Explainer(export_torch(net, "block", input_shape=(2, 3, 32, 32)))
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    explanation = explainer.explain(x)
    maps = np.rint(explanation.heatmaps.astype(np.float64) * 64) / 64
    assert maps.min() == 0 and maps.max() == 1
    return net, explainer, x, replace(explanation, heatmaps=maps.astype(np.float32))


class _GivenMaps:
    """A torchcam CAM extractor that returns the given maps (so both sides score one map)."""

    def __init__(self, model: torch.nn.Module, maps: np.ndarray) -> None:
        self.model = model
        self.maps = torch.from_numpy(maps)

    def __call__(self, class_idx, scores=None, normalized=True, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return nullcontext()


def test_average_drop_and_increase_match_torchcam(case):
    net, explainer, x, explanation = case
    maps = explanation.heatmaps[:, 0]
    metric = torchcam_metrics.ClassificationMetric(_GivenMaps(net, maps),
                                                   lambda t: torch.softmax(t, dim=-1))
    metric.update(torch.from_numpy(x), class_idx=explanation.class_ids[:, 0].tolist())
    reference = metric.summary()
    ours = evaluate(explainer, x, explanation, ["avg-drop", "increase"], progress=False)
    # torchcam divides by Y + 1e-7 and reports fractions
    y = np.array([v.details["original"] for v in ours.values if v.metric == "avg-drop"])
    drop = ours.table("avg-drop")[:, 0] * y / (y + 1e-7)
    assert np.mean(drop) / 100 == pytest.approx(reference["avg_drop"], abs=ATOL)
    assert ours.means()["increase"] / 100 == pytest.approx(reference["conf_increase"], abs=ATOL)


def test_confidence_change_matches_pytorch_grad_cam(case):
    net, explainer, x, explanation = case
    maps = explanation.heatmaps[:, 0]
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in explanation.class_ids[:, 0]]
    tensor = torch.from_numpy(x)
    drop = DropInConfidence()(tensor, maps, targets, net)
    increase = IncreaseInConfidence()(tensor, maps, targets, net)
    ours = evaluate(explainer, x, explanation, ["avg-drop", "increase"], progress=False)
    y = np.array([v.details["original"] for v in ours.values if v.metric == "avg-drop"])
    # DropInConfidence is max(0, Y - O): ours times Y / 100
    np.testing.assert_allclose(ours.table("avg-drop")[:, 0] * y / 100, drop.ravel(), atol=ATOL)
    np.testing.assert_array_equal(ours.table("increase")[:, 0] / 100, increase.ravel())


class _Noiseless(road.NoisyLinearImputer):
    def __init__(self, noise: float = 0.0, weighting=road.neighbors_weights) -> None:
        super().__init__(noise=0.0, weighting=weighting)


@pytest.fixture
def noiseless(monkeypatch):
    monkeypatch.setattr(road, "NoisyLinearImputer", _Noiseless)


@pytest.mark.parametrize("percentile", [10, 50, 90])
def test_road_at_one_percentile_matches_pytorch_grad_cam(case, noiseless, percentile):
    net, explainer, x, explanation = case
    maps = explanation.heatmaps[:, 0]
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in explanation.class_ids[:, 0]]
    tensor = torch.from_numpy(x)
    morf = road.ROADMostRelevantFirst(percentile)(tensor, maps, targets, net)
    lerf = road.ROADLeastRelevantFirst(percentile)(tensor, maps, targets, net)
    ours = evaluate(explainer, x, explanation, ["road-morf", "road-lerf"],
                    percentiles=[percentile], noise=0.0, progress=False)
    np.testing.assert_allclose(ours.table("road-morf")[:, 0], morf.ravel(), atol=ATOL)
    np.testing.assert_allclose(ours.table("road-lerf")[:, 0], lerf.ravel(), atol=ATOL)


def test_road_combined_matches_pytorch_grad_cam(case, noiseless):
    net, explainer, x, explanation = case
    maps = explanation.heatmaps[:, 0]
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in explanation.class_ids[:, 0]]
    combined = road.ROADCombined()(torch.from_numpy(x), maps, targets, net)
    ours = evaluate(explainer, x, explanation, ["road"], noise=0.0, progress=False)
    np.testing.assert_allclose(ours.table("road")[:, 0], combined.ravel(), atol=ATOL)
    details = ours.values[0].details
    assert details["percentiles"] == list(range(10, 100, 10)) and len(details["morf"]) == 9


def test_road_noise_is_seeded(case):
    _, explainer, x, explanation = case
    runs = [evaluate(explainer, x, explanation, ["road"], seed=s, progress=False)
            for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0].table("road"), runs[1].table("road"))
    assert not np.array_equal(runs[0].table("road"), runs[2].table("road"))


def test_sanity_check_on_an_exported_model(case):
    """Grad-CAM of the exported CNN changes when its head (pooling and the linear classifier)
    is randomized; every cascading step and each layer alone is reported."""
    _, explainer, x, explanation = case
    result = evaluate(explainer, x, explanation, ["sanity"], progress=False)
    verdict = result.sanity
    assert verdict["passed"], verdict["message"]
    assert len(verdict["cascading"]) == verdict["layers"] == len(verdict["independent"]) == 1
    assert verdict["cascading"][0]["initializers"] == ["model.fc.weight", "model.fc.bias"]
    for step in verdict["cascading"]:
        assert all(-1 <= r <= 1 for r in step["spearman"] if not np.isnan(r))
        assert all(s <= 1 + 1e-9 for s in step["ssim"])
