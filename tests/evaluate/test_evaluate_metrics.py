"""Evaluation metrics on known answers, torch-free: the numeric pieces, each metric on the tiny
CNN of ``conftest.make_tiny_cnn``, and the sanity check's verdicts."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from conftest import make_tiny_cnn
from onnx import TensorProto, helper

from explainer import Explainer
from explainer.evaluation import METRICS, EvaluationError, evaluate, get_metric
from explainer.evaluation.numeric import auc, impute, minmax, spearman, ssim
from exporters import build_bundle


@pytest.fixture(scope="module")
def tiny():
    explainer = Explainer(build_bundle(make_tiny_cnn(), "act", target_layer="relu2"))
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    return explainer, x, explainer.explain(x, top_k=2)


def _constant_model(value: float) -> onnx.ModelProto:
    """input [N, 3, 16, 16] -> "act" = Relu(input) -> pooled -> Gemm with zero weights and
    bias ``[value, value]``: 2 equal logits, so every probability is 0.5 whatever the input."""
    nodes = [
        helper.make_node("Relu", ["input"], ["act"], name="relu"),
        helper.make_node("GlobalAveragePool", ["act"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "constant",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [2, 3], [0.0] * 6),
                     helper.make_tensor("b", TensorProto.FLOAT, [2], [value, value])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# --- numeric pieces -----------------------------------------------------------------------------
def test_auc_is_the_trapezoid_area_of_a_hand_made_curve():
    assert auc([1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert auc([0.0, 1.0, 1.0, 1.0, 0.0]) == pytest.approx((0.5 + 1 + 1 + 0.5) / 4)
    assert auc(np.full(11, 0.3)) == pytest.approx(0.3)


def test_spearman_of_a_reversed_ranking_is_minus_one_and_of_the_same_is_one():
    a = np.random.default_rng(1).random((8, 8))
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, a**3) == pytest.approx(1.0)  # ranks only
    assert np.isnan(spearman(a, np.zeros_like(a)))


def test_spearman_averages_tied_ranks():
    # ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]: Pearson with [1, 2, 3, 4]
    r = np.array([1, 2.5, 2.5, 4.0]) - 2.5
    expected = (r * (np.arange(1, 5) - 2.5)).sum() / np.sqrt((r * r).sum() * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(expected)


def test_ssim_of_identical_maps_is_one_and_drops_with_noise():
    rng = np.random.default_rng(2)
    a = rng.random((24, 24))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, rng.random((24, 24))) < 0.5
    assert ssim(a, a) > ssim(a, np.clip(a + 0.2 * rng.normal(size=a.shape), 0, 1))


def test_minmax_scales_to_unit_range():
    e = minmax(np.array([[2.0, 4.0], [3.0, 6.0]]))
    assert e.min() == 0 and e.max() == 1
    assert not minmax(np.full((3, 3), 5.0)).any()


@pytest.mark.parametrize("solver", ["cg", "auto"])
def test_imputation_is_the_neighbour_mean_and_keeps_the_rest(solver):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(2, 10, 10))
    keep = rng.random((10, 10)) > 0.5
    out = impute(image, keep, noise=0.0, solver=solver)
    assert np.array_equal(out[:, keep], image[:, keep])
    # each removed interior pixel equals the weighted mean of its 8 neighbours
    y, x = next((y, x) for y in range(1, 9) for x in range(1, 9) if not keep[y, x])
    weights = np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1]]) / 12
    assert out[:, y, x] == pytest.approx((out[:, y - 1:y + 2, x - 1:x + 2] * weights).sum((1, 2)))
    noisy = impute(image, keep, noise=0.01, rng=np.random.default_rng(0))
    assert 0 < np.abs(noisy - out).max() < 0.1


def test_evaluate_is_reachable_from_both_packages():
    import explainer
    import onnxcam

    assert onnxcam.evaluate is evaluate and explainer.evaluate is evaluate


def test_every_metric_has_a_definition_and_a_direction():
    for name, spec in METRICS.items():
        assert spec.name == name and spec.definition and spec.direction in ("higher", "lower")
    with pytest.raises(EvaluationError, match="unknown metric 'nope'"):
        get_metric("nope")


# --- metrics on a model -------------------------------------------------------------------------
def test_box_shaped_map_gives_pointing_and_energy_one(tiny):
    explainer, x, explanation = tiny
    heatmaps = np.zeros_like(explanation.heatmaps)
    heatmaps[..., 4:9, 2:12] = 1.0
    boxes = [[[2, 4, 12, 9]], [[2, 4, 12, 9]]]
    result = evaluate(explainer, x, replace(explanation, heatmaps=heatmaps),
                      ["pointing", "energy"], boxes=boxes, progress=False)
    assert result.means() == {"pointing": 1.0, "energy": 1.0}
    elsewhere = [[[12, 12, 16, 16]], [[12, 12, 16, 16]]]
    result = evaluate(explainer, x, replace(explanation, heatmaps=heatmaps),
                      ["pointing", "energy"], boxes=elsewhere, progress=False)
    assert result.means() == {"pointing": 0.0, "energy": 0.0}


def test_localisation_needs_boxes(tiny):
    explainer, x, explanation = tiny
    with pytest.raises(EvaluationError, match="boxes="):
        evaluate(explainer, x, explanation, ["pointing"], progress=False)


@pytest.mark.parametrize("metric", ["deletion", "insertion"])
def test_curve_of_a_constant_score_model_has_the_constant_area(metric):
    explainer = Explainer(build_bundle(_constant_model(1.0), "act"))
    x = np.random.default_rng(4).normal(size=(1, 3, 16, 16)).astype(np.float32)
    explanation = explainer.explain(x)
    result = evaluate(explainer, x, explanation, [metric], steps=8, progress=False)
    assert result.means()[metric] == pytest.approx(0.5)  # two equal logits: p = 0.5
    assert len(result.values[0].details["curve"]) == 9


def test_metrics_run_in_chunks_and_give_the_same_values(tiny):
    explainer, x, explanation = tiny
    names = ["avg-drop", "increase", "deletion", "insertion", "road"]
    big = evaluate(explainer, x, explanation, names, steps=10, progress=False, batch_size=512)
    small = evaluate(explainer, x, explanation, names, steps=10, progress=False, batch_size=7)
    groups = [2, 11, 11, 19]  # rows per pair: confidence, deletion, insertion, ROAD
    assert big.runs == len(groups)  # one run per group of metrics
    assert small.runs == sum(-(-4 * rows // 7) for rows in groups)  # 4 pairs, 7 rows a run
    for metric in names:
        np.testing.assert_allclose(small.table(metric), big.table(metric), atol=1e-6)
    assert set(big.to_dict()["means"]) == set(names)

def test_progress_bar_counts_every_model_input(tiny, monkeypatch):
    from tqdm import auto

    explainer, x, explanation = tiny
    bars = []

    class Bar(auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})
            self.counted = 0
            bars.append(self)

        def update(self, n=1):
            self.counted += n

    monkeypatch.setattr(auto, "tqdm", Bar)
    evaluate(explainer, x, explanation, ["deletion", "increase", "sanity"], steps=4)
    (bar,) = bars
    assert bar.counted == bar.total == 4 * (5 + 2) + 2 * 2 * 2  # pairs, layers x 2 kinds


def test_average_drop_and_increase_follow_their_formula(tiny):
    explainer, x, explanation = tiny
    result = evaluate(explainer, x, explanation, ["avg-drop", "increase"], progress=False)
    for value in result.values:
        y, o = value.details["original"], value.details["masked"]
        expected = 100 * max(0.0, y - o) / y if value.metric == "avg-drop" else 100.0 * (o > y)
        assert value.value == pytest.approx(expected)
    probabilities = explainer.explain(x, top_k=2).probabilities
    originals = np.array([v.details["original"] for v in result.values if v.metric == "increase"])
    np.testing.assert_allclose(originals, probabilities.ravel(), rtol=1e-5)


def test_a_constant_map_scales_to_zero_and_masks_everything(tiny):
    """E is min-max scaled: a constant map is E = 0, so O is the score of a zero input."""
    explainer, x, explanation = tiny
    ones = replace(explanation, heatmaps=np.ones_like(explanation.heatmaps))
    result = evaluate(explainer, x, ones, ["avg-drop"], progress=False)
    zero = explainer.explain(np.zeros_like(x), targets=explanation.class_ids).probabilities
    masked = np.array([v.details["masked"] for v in result.values])
    np.testing.assert_allclose(masked, zero.ravel(), rtol=1e-5)

def test_mean_baseline_needs_the_mean(tiny):
    explainer, x, explanation = tiny
    with pytest.raises(EvaluationError, match="mean="):
        evaluate(explainer, x, explanation, ["deletion"], deletion_baseline="mean",
                 progress=False)
    mean = evaluate(explainer, x, explanation, ["deletion"], deletion_baseline="mean",
                    mean=[0.0, 0.0, 0.0], progress=False)
    zero = evaluate(explainer, x, explanation, ["deletion"], progress=False)
    np.testing.assert_allclose(mean.table("deletion"), zero.table("deletion"))


def test_road_combined_is_half_lerf_minus_morf(tiny):
    explainer, x, explanation = tiny
    result = evaluate(explainer, x, explanation, ["road", "road-morf", "road-lerf"],
                      progress=False)
    np.testing.assert_allclose(
        result.table("road"), (result.table("road-lerf") - result.table("road-morf")) / 2)


def test_an_explanation_of_another_task_and_contrast_are_refused(tiny):
    explainer, x, explanation = tiny
    detector = SimpleNamespace(task="detect")
    with pytest.raises(EvaluationError, match="'classify' model; this bundle's task is 'detect'"):
        evaluate(detector, x, explanation, progress=False)
    with pytest.raises(EvaluationError, match="contrast"):
        evaluate(explainer, x, replace(explanation, contrast_ids=explanation.class_ids),
                 progress=False)


# --- sanity -------------------------------------------------------------------------------------
def test_sanity_check_passes_for_gradcam(tiny):
    explainer, x, explanation = tiny
    result = evaluate(explainer, x, explanation, ["sanity"], progress=False)
    verdict = result.sanity
    assert verdict["passed"] and verdict["spearman"] <= 0.9
    assert verdict["layers"] == 2  # conv3 (weights) and fc (weights, bias)
    assert len(verdict["cascading"]) == 2 and len(verdict["independent"]) == 2
    assert verdict["cascading"][-1]["initializers"] == ["w3", "w4", "b4"]


def test_sanity_check_fails_for_a_map_that_ignores_the_model(tiny):
    explainer, x, explanation = tiny

    def edges(_: Explainer, xx: np.ndarray, ids: np.ndarray) -> np.ndarray:
        energy = np.abs(np.diff(xx, axis=3, prepend=0)).sum(axis=1)
        return np.repeat(energy[:, None], ids.shape[1], axis=1)

    ignoring = replace(explanation, heatmaps=edges(explainer, x, explanation.class_ids),
                       method="edges")
    result = evaluate(explainer, x, ignoring, ["sanity"], explain_fn=edges, progress=False)
    assert not result.sanity["passed"]
    assert result.means()["sanity"] == pytest.approx(1.0)
    assert "barely change" in result.sanity["message"]


def test_imputation_solvers_agree():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(5)
    image = rng.normal(size=(3, 20, 20))
    keep = np.add.outer(np.arange(20), np.arange(20)) > 18  # one large removed region
    np.testing.assert_allclose(impute(image, keep, 0.0, solver="scipy"),
                               impute(image, keep, 0.0, solver="cg"), atol=1e-7)


def test_imputation_without_a_kept_pixel_uses_the_channel_means():
    image = np.random.default_rng(6).normal(size=(2, 6, 6))
    out = impute(image, np.zeros((6, 6), bool), noise=0.0)
    np.testing.assert_allclose(out, np.broadcast_to(image.mean(axis=(1, 2))[:, None, None],
                                                    image.shape))


def test_sanity_check_randomizes_weights_held_in_constant_nodes(tiny):
    """Converters such as Paddle's write weights as Constant nodes, not initializers: the check
    finds and randomizes them the same way."""
    explainer, x, explanation = tiny
    head = onnx.ModelProto()
    head.CopyFrom(explainer.bundle.head)
    moved = [t for t in head.graph.initializer if t.name in ("w3", "w4", "b4")]
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in moved]
    kept = [t for t in head.graph.initializer if t.name not in ("w3", "w4", "b4")]
    del head.graph.initializer[:]
    head.graph.initializer.extend(kept)
    nodes = list(head.graph.node)
    del head.graph.node[:]
    head.graph.node.extend([*constants, *nodes])
    manifest = {k: v for k, v in explainer.bundle.manifest.items() if k != "explanation"}
    with Explainer(replace(explainer.bundle, head=head, explanation=None, manifest=manifest),
                   explanation_graph=False) as constant:
        np.testing.assert_allclose(constant.explain(x, top_k=2).heatmaps, explanation.heatmaps,
                                   atol=1e-5)
        result = evaluate(constant, x, explanation, ["sanity"], independent=False,
                          progress=False)
    assert result.sanity["layers"] == 2 and result.sanity["passed"]
    assert result.sanity["cascading"][-1]["initializers"] == ["w3", "w4", "b4"]


def test_a_task_items_own_region_spans_its_output_cells_in_input_pixels():
    from explainer.evaluation.tasks import own_region

    # a segmenter's 3 x 4 grid over a 7 x 10 input: cell (i, j) covers rows [7i/3, 7(i+1)/3)
    # and columns [10j/4, 10(j+1)/4); the pixels whose index lies in that span are its own
    weights = np.zeros((2, 3, 4), np.float32)
    weights[1, 1, 2] = 1.0
    weights[0, 2, 0] = 0.5
    expected = np.zeros((7, 10), bool)
    for (i, j) in ((1, 2), (2, 0)):
        rows = [y for y in range(7) if i * 7 / 3 <= y < (i + 1) * 7 / 3]
        cols = [x for x in range(10) if j * 10 / 4 <= x < (j + 1) * 10 / 4]
        expected[np.ix_(rows, cols)] = True
    np.testing.assert_array_equal(own_region("segment", weights, (7, 10)), expected)
    # a recognizer's T = 6 timesteps over 16 columns: timesteps 1 and 4, the full height
    weights = np.zeros((6, 5), np.float32)
    weights[[1, 4], 3] = 1.0
    cols = [x for x in range(16) if any(t * 16 / 6 <= x < (t + 1) * 16 / 6 for t in (1, 4))]
    expected = np.zeros((3, 16), bool)
    expected[:, cols] = True
    assert cols == [3, 4, 5, 11, 12, 13]
    np.testing.assert_array_equal(own_region("sequence", weights, (3, 16)), expected)
