"""The detection module on synthetic arrays (no model): decoding each format, NMS, target
planning, and seeds that are the gradients of the scores they claim (finite differences)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from explainer.detection import (
    Candidates,
    DetectionTarget,
    anchor_grid,
    check_spec,
    decode,
    detections,
    nms,
    plan_detections,
    seed_row,
    target_scores,
)
from explainer.errors import TargetError, UsageError
from explainer.image import Geometry, image_geometry
from explainer.preprocessing import Preprocessing

LABELS = ["cat", "dog", "car"]


def _v8(rows: list[tuple[float, ...]]) -> dict[str, np.ndarray]:
    """One image's YOLOv8 output [4+C, A] from rows (cx, cy, w, h, p0, p1, p2)."""
    return {"out": np.array(rows, np.float32).T}


V8 = {"name": "yolov8", "outputs": {"predictions": "out"}, "classes": 3,
      "explained": "probabilities"}


def test_yolov8_decoding_and_nms_keep_the_best_box_of_each_class() -> None:
    out = _v8([(50, 50, 20, 20, 0.9, 0.1, 0.0),   # cat
               (52, 50, 20, 20, 0.8, 0.0, 0.0),   # overlapping cat: suppressed
               (52, 50, 20, 20, 0.0, 0.7, 0.0),   # overlapping dog: kept (other class)
               (150, 150, 10, 10, 0.1, 0.0, 0.2)])  # below conf 0.25
    cands = decode(out, V8, (200, 200))
    np.testing.assert_allclose(cands.boxes[0], [40, 40, 60, 60])
    found = detections(cands, 0.25, 0.45, LABELS)
    assert [(d.candidate, d.label) for d in found] == [(0, "cat"), (2, "dog")]
    assert found[0].score == pytest.approx(0.9)


def test_nms_is_greedy_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.4]), 0.45).tolist() == [1, 2]


@pytest.mark.parametrize("spread", [10.0, 600.0])  # boxes piled up (few kept), spread out
@pytest.mark.parametrize("limit", [0, 1, 3, 10, 300])
def test_nms_of_the_best_boxes_first_equals_the_whole_greedy_pass(spread, limit) -> None:
    from explainer.detection import NMS_PREFIX, _greedy
    rng = np.random.default_rng(int(spread) + limit)
    corners = rng.uniform(0, spread, (8400, 2))
    sizes = rng.uniform(30 if spread == 10.0 else 5, 60, (8400, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    scores = np.round(rng.random(8400), 2)  # many ties, also at the prefix's cut
    classes = rng.integers(0, 3, 8400)
    offset = boxes + (classes * (float(np.abs(boxes).max()) * 2 + 1))[:, None]
    got = nms(boxes, scores, 0.45, classes, limit)
    np.testing.assert_array_equal(got, _greedy(offset, scores, 0.45, limit))
    best = scores >= np.sort(scores)[-NMS_PREFIX * limit]
    prefix_kept = len(_greedy(offset[best], scores[best], 0.45, limit))
    assert prefix_kept == limit or spread == 10.0  # piled up: the whole pass ran
    assert (spread, limit) != (10.0, 300) or prefix_kept < limit


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_a_detection_planners_seeds_are_its_seed_rows_by_their_terms(score) -> None:
    from explainer.sparse_seeds import SparseSeeds
    from explainer.tasks.registry import planner
    fmt = {"name": "yolov5", "outputs": {"predictions": "out"}, "classes": 3}
    plan = planner("detect", fmt, None, 3, "top2", score)
    explained = np.random.default_rng(3).random((2, 7, 8)).astype(np.float32)  # [B, A, 5+C]
    plans = [[DetectionTarget(None, [(1, 2)]), DetectionTarget(None, [(4, 0), (6, 1)])],
             [DetectionTarget(None, [(5, 2)])]]
    seeds = plan.seeds(explained, plans)
    assert isinstance(seeds, SparseSeeds) and seeds.shape == (2, 2, 7, 8)
    dense = np.asarray(seeds)
    for b, row in enumerate(plans):
        for k in range(2):
            want = (seed_row(explained[b], row[k], fmt, score) if k < len(row)
                    else np.zeros((7, 8), np.float32))
            np.testing.assert_array_equal(dense[b, k], want)
            assert want.any() or k >= len(row)  # objectness and class terms: nonzero


def test_yolov5_confidence_is_objectness_times_class() -> None:
    out = {"out": np.array([[10, 10, 4, 4, 0.5, 0.2, 0.8]], np.float32)}
    fmt = {"name": "yolov5", "outputs": {"predictions": "out"}, "classes": 2}
    np.testing.assert_allclose(decode(out, fmt, (32, 32)).scores, [[0.1, 0.4]], rtol=1e-6)


def test_yolox_boxes_are_decoded_per_stride() -> None:
    grid, stride = anchor_grid((64, 32), (8, 16, 32))
    assert len(grid) == 8 * 4 + 4 * 2 + 2 * 1
    raw = np.zeros((len(grid), 6), np.float32)
    raw[9, :4] = [0.5, 0.5, np.log(2.0), 0.0]  # stride 8, cell (x=1, y=2)
    raw[:, 4:] = 0.5
    fmt = {"name": "yolox", "outputs": {"predictions": "out"}, "classes": 1}
    boxes = decode({"out": raw}, fmt, (64, 32)).boxes
    np.testing.assert_allclose(boxes[9], [12 - 8, 20 - 4, 12 + 8, 20 + 4])
    with pytest.raises(UsageError, match="strides"):
        decode({"out": raw[:-1]}, fmt, (64, 32))


def test_selected_formats_keep_the_graphs_choice() -> None:
    fmt = {"name": "end2end", "outputs": {"predictions": "out"}}
    rows = np.array([[0, 0, 5, 5, 0.3, 2], [1, 1, 4, 4, 0.9, 0]], np.float32)
    found = detections(decode({"out": rows}, fmt, (8, 8)), 0.25, 0.45)
    assert [(d.candidate, d.class_id) for d in found] == [(1, 0), (0, 2)]  # no NMS, by score
    bsl = {"name": "boxes_scores_labels",
           "outputs": {"boxes": "b", "scores": "s", "labels": "l"}}
    cands = decode({"b": rows[:, :4], "s": rows[:, 4], "l": rows[:, 5].astype(np.int64)},
                   bsl, (8, 8))
    assert cands.selected and cands.scores.shape == (2, 3)


@pytest.fixture
def cands() -> Candidates:
    return decode(_v8([(50, 50, 20, 20, 0.9, 0.1, 0.0), (150, 50, 20, 20, 0.6, 0.0, 0.0),
                       (100, 150, 40, 20, 0.0, 0.0, 0.8)]), V8, (200, 200))


def test_targets_detections_top_class_and_box(cands: Candidates) -> None:
    assert len(plan_detections("detections", cands, labels=LABELS)) == 3
    top = plan_detections("top2", cands, labels=LABELS)
    assert [t.detection.candidate for t in top] == [0, 2]
    cat = plan_detections("cat", cands, labels=LABELS)  # one map over both cats
    assert len(cat) == 1 and cat[0].pairs == [(0, 0), (1, 0)] and cat[0].detection.count == 2
    assert cat[0].detection.box == (40.0, 40.0, 160.0, 60.0)
    box = plan_detections({"box": (82, 142, 118, 158), "class": "car"}, cands, labels=LABELS)
    assert box[0].pairs == [(2, 2)]
    both = plan_detections("top1+dog", cands, conf=0.05, labels=LABELS)
    assert [t.pairs for t in both] == [[(0, 0)], [(0, 1)]]


def test_bad_detection_targets_are_named(cands: Candidates) -> None:
    with pytest.raises(TargetError, match="IoU > 0.5"):
        plan_detections({"box": (0, 0, 10, 10), "class": "cat"}, cands, labels=LABELS)
    with pytest.raises(TargetError, match="outside"):
        plan_detections({"box": (300, 300, 400, 400)}, cands, labels=LABELS, size=(200, 200))
    with pytest.raises(TargetError, match="empty"):
        plan_detections({"box": (10, 10, 5, 20)}, cands, labels=LABELS)
    with pytest.raises(TargetError, match="unknown class name 'horse'"):
        check_spec("horse", LABELS, 3)
    with pytest.raises(TargetError, match="out of range"):
        check_spec(7, LABELS, 3)
    with pytest.raises(TargetError, match="conf"):
        plan_detections(None, cands, conf=1.5)
    assert plan_detections("detections", cands, conf=0.95) == []  # nothing: no error


@pytest.mark.parametrize("fmt, shape, pairs", [
    ({"name": "yolov8", "explained": "logits"}, (3, 5), [(4, 1)]),
    ({"name": "yolov8", "explained": "probabilities"}, (7, 5), [(2, 2), (3, 2)]),
    ({"name": "yolov5"}, (5, 8), [(1, 0), (4, 2)]),
    ({"name": "end2end"}, (5, 6), [(3, 0)]),
    ({"name": "boxes_scores_labels"}, (5,), [(2, 0)]),
])
@pytest.mark.parametrize("score", ["logit", "probability"])
def test_seeds_are_the_gradients_of_the_scores(fmt, shape, pairs, score) -> None:
    rng = np.random.default_rng(0)
    logits = fmt.get("explained") == "logits"
    values = rng.normal(0, 1, shape) if logits else rng.uniform(0.2, 0.8, shape)
    target = DetectionTarget(None, pairs)
    seed = seed_row(values, target, fmt, score).astype(np.float64)
    eps = 1e-6
    numeric = np.zeros(shape)
    for index in np.ndindex(*shape):
        step = np.zeros(shape)
        step[index] = eps
        up = target_scores((values + step)[None], [target], fmt, score)[0]
        down = target_scores((values - step)[None], [target], fmt, score)[0]
        numeric[index] = (up - down) / (2 * eps)
    np.testing.assert_allclose(seed, numeric, rtol=1e-4, atol=1e-6)


def test_letterbox_geometry_maps_boxes_back() -> None:
    pre = Preprocessing(resize=None, crop=None, letterbox=(320, 320))
    geometry = image_geometry((640, 480), pre)  # 640x480 -> 320x240, 40 px above and below
    assert geometry.scale == (0.5, 0.5) and geometry.offset == (0.0, 40.0)
    assert geometry.to_original((10, 50, 110, 90)) == (20.0, 20.0, 220.0, 100.0)
    stride = Preprocessing(resize=None, crop=None, letterbox=320, stride=32)
    assert image_geometry((640, 500), stride).offset == (0.0, 3.0)  # 250 -> 256: 3 and 3
    topleft = Preprocessing(resize=None, crop=None, letterbox=(320, 320),
                            letterbox_align="topleft")
    assert image_geometry((640, 480), topleft).offset == (0.0, 0.0)
    crop = image_geometry((300, 200), Preprocessing(resize=100, crop=100))
    assert isinstance(crop, Geometry) and crop.offset == (-25.0, 0.0)
    with pytest.raises(Exception, match="letterbox replaces resize"):
        Preprocessing(letterbox=320)


def _model(outputs: list[tuple[str, str, list[int]]]) -> onnx.ModelProto:
    """An image model [1, 3, 32, 32] -> outputs made by Reshape/ArgMax of a pooled map."""

    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"])]
    inits, infos = [], []
    for k, (name, kind, shape) in enumerate(outputs):
        if kind == "int":
            nodes.append(helper.make_node("ArgMax", ["pooled"], [name], axis=1, keepdims=0))
            infos.append(helper.make_tensor_value_info(name, TensorProto.INT64, shape))
            continue
        size = int(np.prod(shape))
        inits += [numpy_helper.from_array(np.ones((1, 3, 1, size), np.float32), f"w{k}"),
                  numpy_helper.from_array(np.array(shape, np.int64), f"s{k}")]
        nodes += [helper.make_node("Mul", ["pooled", f"w{k}"], [f"m{k}"]),
                  helper.make_node("ReduceMean", [f"m{k}"], [f"r{k}"], axes=[1], keepdims=0),
                  helper.make_node("Reshape", [f"r{k}", f"s{k}"], [name])]
        infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                   ["n"] + [None] * (len(shape) - 1)))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        infos, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_task_is_told_from_the_outputs_or_refused_with_all_of_them_listed() -> None:
    from exporters.errors import OnnxExportError
    from exporters.onnx_frontend.tasks import resolve_task

    anchors = 4 * 4 + 2 * 2 + 1  # strides 8, 16, 32 at 32x32
    v8 = resolve_task(_model([("out", "float", [1, 6, anchors])]))
    assert v8.task == "detect" and v8.format["name"] == "yolov8" and v8.format["classes"] == 2
    v5 = resolve_task(_model([("out", "float", [1, 3 * anchors, 7])]))
    assert v5.format["name"] in ("yolov5", "yolox") and v5.format["classes"] == 2
    with pytest.raises(OnnxExportError, match=r"'labels' \[1, 1, 1\] int64.*--task"):
        resolve_task(_model([("labels", "int", [1])]))  # argmax only: nothing to differentiate
    with pytest.raises(OnnxExportError) as err:
        resolve_task(_model([(f"o{k}", "float", [1, 5, 7, 3]) for k in range(3)]))
    assert all(f"'o{k}' [1, 5, 7, 3]" in str(err.value) for k in range(3))
    with pytest.raises(OnnxExportError, match="contradicts"):
        resolve_task(_model([("out", "float", [1, 6, anchors])]), format="yolov5")
    with pytest.raises(OnnxExportError, match="unknown format 'ssd'"):
        resolve_task(_model([("out", "float", [1, 6, anchors])]), format="ssd")
