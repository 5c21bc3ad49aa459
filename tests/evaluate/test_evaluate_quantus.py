"""The deletion curve, pointing game and energy against Quantus 0.6 on the same model, images
and maps: ``PixelFlipping``, ``PointingGame``, ``RelevanceMassAccuracy`` and
``AttributionLocalisation``.

The model is a small seeded torch CNN, its classifier scaled to be confident (Quantus runs it
in torch, the metrics its exported bundle on ONNX Runtime); the maps are its Grad-CAM maps with
a tiny random tie-break, min-max scaled, so that no two pixels share a value (Quantus orders
the pixels with numpy's unstable sort, ours by a stable one: they agree wherever no two pixels
tie).

Settings that make the definitions coincide: ``normalise=False, abs=False`` on the Quantus
side (the maps are already in [0, 1] with minimum 0, so our min-max scaling leaves them as
they are); ``PixelFlipping(features_in_step=C * H * W / steps, perturb_baseline=0.0)``
against ``deletion`` with ``steps`` and ``deletion_baseline="zero"``: Quantus flips the
attribution broadcast over the channels, so ``C`` features per pixel, and the pixels' values
being distinct, after its step ``i`` exactly our first ``i * H * W / steps`` pixels are 0 in
every channel. Tolerance: 1e-4 relative on probabilities (ONNX Runtime against torch,
float32).

Deliberate differences, checked with their formulas:

* Curve: ours has ``steps + 1`` points (``c[0] = p(x)``, nothing removed); Quantus' has
  ``steps`` (``q[i - 1] = c[i]``, after each step).
* AUC: ours ``(sum(c) - c[0]/2 - c[-1]/2) / steps`` over the fraction removed; Quantus'
  ``trapezoid(q, dx=1)`` over the step index, so ``ours = (AUC_q + (c[0] + c[1]) / 2) / steps``.
* Pointing game with tied maxima: ours reads the first argmax in raster order, Quantus counts a
  hit when any maximal pixel is inside.
* Energy: ours scales the map to [0, 1] first (``(m - min m) / (max m - min m)``);
  ``RelevanceMassAccuracy`` reads it as given; ``AttributionLocalisation`` divides by
  ``sum + 1e-9``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from explainer import Explainer
from explainer.evaluation import evaluate

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
quantus = pytest.importorskip("quantus", reason="Quantus 0.6 is the reference (dev extra)")

from reference_nets import reference_net  # noqa: E402

from exporters.torch import export_torch  # noqa: E402

RTOL = 1e-4
# H * W is a multiple of STEPS and STEPS of C = 3: Quantus asks H * W to be a multiple of
# features_in_step = C * H * W / STEPS
SIZE = 48
STEPS = 24


def _net() -> torch.nn.Module:
    net = reference_net(SIZE)
    with torch.no_grad():  # a confident classifier: the deletion curves fall from ~0.8 to ~0.2
        net.fc.weight.mul_(30)
        net.fc.bias.mul_(30)
    return net


@pytest.fixture(scope="module")
def case():
    net = _net()
    explainer = Explainer(export_torch(net, "block", input_shape=(2, 3, SIZE, SIZE)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    explanation = explainer.explain(x)
    heat = explanation.heatmaps.astype(np.float64)
    # Grad-CAM is 0 over whole regions: a tie-break far below the map's own steps
    heat = heat + 1e-3 * rng.permutation(heat.size).reshape(heat.shape) / heat.size
    low = heat.min(axis=(2, 3), keepdims=True)
    maps = ((heat - low) / (heat.max(axis=(2, 3), keepdims=True) - low)).astype(np.float32)
    for m in maps[:, 0]:
        assert np.unique(m).size == m.size and m.min() == 0 and m.max() == 1
    return net, explainer, x, replace(explanation, heatmaps=maps)


def _pixel_flipping(net, x, explanation, **options) -> np.ndarray:
    metric = quantus.PixelFlipping(
        features_in_step=x[0].size // STEPS, perturb_baseline=0.0, normalise=False, abs=False,
        disable_warnings=True, **options)
    return np.array(metric(model=net, x_batch=x, y_batch=explanation.class_ids[:, 0],
                           a_batch=explanation.heatmaps, channel_first=True, softmax=True,
                           device="cpu"))


def test_deletion_curve_matches_quantus_pixel_flipping(case, monkeypatch):
    net, explainer, x, explanation = case
    reference = _pixel_flipping(net, x, explanation)
    ours = evaluate(explainer, x, explanation, ["deletion"], steps=STEPS,
                    deletion_baseline="zero", progress=False)
    curves = np.array([v.details["curve"] for v in ours.values])
    assert reference.shape == (len(x), STEPS) and curves.shape == (len(x), STEPS + 1)
    with torch.no_grad():
        p = torch.softmax(net(torch.from_numpy(x)), -1).numpy()
        blank = torch.softmax(net(torch.zeros(1, *x.shape[1:])), -1).numpy()[0]
    classes = explanation.class_ids[:, 0]
    np.testing.assert_allclose(curves[:, 0], p[np.arange(len(x)), classes], rtol=RTOL)
    np.testing.assert_allclose(curves[:, 1:], reference, rtol=RTOL)
    np.testing.assert_allclose(reference[:, -1], blank[classes], rtol=RTOL)
    assert np.ptp(reference, axis=1).min() > 0.1  # the curves move: the comparison can fail

    # Quantus' AUC helper still calls numpy.trapz (removed in numpy 2.4): same rule, new name
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    auc = _pixel_flipping(net, x, explanation, return_auc_per_sample=True)
    np.testing.assert_allclose(auc, np.trapezoid(reference, dx=1, axis=1), rtol=1e-6)  # float32
    np.testing.assert_allclose(ours.table("deletion")[:, 0],
                               (auc + (curves[:, 0] + curves[:, 1]) / 2) / STEPS, rtol=RTOL)


def _boxes(maps: np.ndarray) -> list[list[list[int]]]:
    """One box per image: around the map's peak (image 0), away from it (image 1), a fixed
    one (the rest)."""
    boxes = []
    for b, m in enumerate(maps):
        row, col = np.unravel_index(int(np.argmax(m)), m.shape)
        if b == 0:
            boxes.append([[max(col - 6, 0), max(row - 6, 0), col + 7, row + 7]])
        elif b == 1:
            x0, y0 = (0 if col >= SIZE // 2 else SIZE // 2), (0 if row >= SIZE // 2 else SIZE // 2)
            boxes.append([[x0, y0, x0 + SIZE // 2, y0 + SIZE // 2]])
        else:
            boxes.append([[4, 10, 30, 40]])
    return boxes


def _masks(boxes: list[list[list[int]]]) -> np.ndarray:
    masks = np.zeros((len(boxes), 1, SIZE, SIZE), bool)
    for b, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes:
            masks[b, 0, y0:y1, x0:x1] = True
    return masks


def _localisation(metric, net, x, maps: np.ndarray, masks: np.ndarray,
                  explanation) -> np.ndarray:
    return np.array(metric(model=net, x_batch=x, y_batch=explanation.class_ids[:, 0],
                           a_batch=maps, s_batch=masks, channel_first=True, device="cpu"),
                    np.float64)


def test_pointing_and_energy_match_quantus(case):
    net, explainer, x, explanation = case
    maps = explanation.heatmaps
    boxes = _boxes(maps[:, 0])
    masks = _masks(boxes)
    ours = evaluate(explainer, x, explanation, ["pointing", "energy"], boxes=boxes,
                    progress=False)
    pointing = _localisation(quantus.PointingGame(normalise=False, abs=False,
                                                  disable_warnings=True),
                             net, x, maps, masks, explanation)
    np.testing.assert_array_equal(ours.table("pointing")[:, 0], pointing)
    assert set(pointing.tolist()) == {0.0, 1.0}

    mass = _localisation(quantus.RelevanceMassAccuracy(normalise=False, abs=False,
                                                       disable_warnings=True),
                         net, x, maps, masks, explanation)
    energy = ours.table("energy")[:, 0]
    np.testing.assert_allclose(energy, mass, rtol=1e-6)
    assert 0 < energy.min() and energy.max() < 1

    # AttributionLocalisation: inside / (total + 1e-9)
    inside = _localisation(quantus.AttributionLocalisation(normalise=False, abs=False,
                                                           disable_warnings=True),
                           net, x, maps, masks, explanation)
    total = maps.reshape(len(x), -1).sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(energy * total / (total + 1e-9), inside, rtol=1e-6)


def test_pointing_with_tied_maxima_differs_from_quantus(case):
    """Two maximal pixels, the first in raster order outside the box: ours 0, Quantus 1."""
    net, explainer, x, explanation = case
    maps = np.zeros_like(explanation.heatmaps)
    maps[:, 0, 2, 2] = maps[:, 0, 40, 40] = 1.0
    maps[:, 0, 20, 20] = 0.5
    boxes = [[[30, 30, 48, 48]]] * len(x)
    ours = evaluate(explainer, x, replace(explanation, heatmaps=maps), ["pointing"],
                    boxes=boxes, progress=False)
    pointing = _localisation(quantus.PointingGame(normalise=False, abs=False,
                                                  disable_warnings=True),
                             net, x, maps, _masks(boxes), explanation)
    np.testing.assert_array_equal(ours.table("pointing")[:, 0], 0.0)
    np.testing.assert_array_equal(pointing, 1.0)


def test_energy_of_a_shifted_map_is_that_of_its_min_max_scaling(case):
    """A map with a positive minimum: ours scales it to [0, 1] first, Quantus reads it as
    given (``RelevanceMassAccuracy`` of ``(m - min m) / (max m - min m)`` is ours)."""
    net, explainer, x, explanation = case
    shifted = explanation.heatmaps + np.float32(0.25)
    boxes = _boxes(explanation.heatmaps[:, 0])
    masks = _masks(boxes)
    ours = evaluate(explainer, x, replace(explanation, heatmaps=shifted), ["energy"],
                    boxes=boxes, progress=False).table("energy")[:, 0]
    metric = quantus.RelevanceMassAccuracy(normalise=False, abs=False, disable_warnings=True)
    as_given = _localisation(metric, net, x, shifted, masks, explanation)
    scaled = _localisation(metric, net, x, explanation.heatmaps, masks, explanation)
    np.testing.assert_allclose(ours, scaled, rtol=1e-6)
    assert np.abs(ours - as_given).max() > 1e-3
