"""The metrics of detectors, segmenters and text recognizers, torch-free: small ONNX models built
with onnx.helper, each explained item's task score checked against the model itself run on the
perturbed images (onnxruntime on the original ``.onnx`` file, the scores read here by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from test_segmentation import recognizer, segmenter

from explainer import Explainer
from explainer.bridge import export_onnx
from explainer.cli import main
from explainer.evaluation import EvaluationError, evaluate
from explainer.evaluation.numeric import impute, minmax

#: the detector's grid: 8 x 8 cells of 4 x 4 pixels on a 32 x 32 input
CELL, GRID = 4, 8
#: the class-0 logit of a cell: 4 * (mean brightness of its 4 channels) - 6
DARK = 1 / (1 + np.exp(6.0))


def detector(path: Path) -> Path:
    """A YOLOv8-layout detector x [N, 3, 32, 32] -> [N, 4 + 2, 64]: each 4 x 4 cell is an
    anchor whose box is the cell; class 0's probability is ``sigmoid(4 * 4 * m - 6)``, m the
    cell's mean brightness (a bright cell is a detection, a dark one scores ``DARK``); class 1
    never fires."""
    w1 = np.full((4, 3, CELL, CELL), 1 / (3 * CELL * CELL), np.float32)
    w2 = np.stack([np.full((4, 1, 1), 4.0), np.full((4, 1, 1), -1.0)]).astype(np.float32)
    ys, xs = np.mgrid[0:GRID, 0:GRID] * float(CELL) + CELL / 2
    grid = np.stack([xs, ys, np.full_like(xs, CELL), np.full_like(xs, CELL)])[None]
    arrays = {"w1": w1, "b1": np.zeros(4, np.float32), "w2": w2,
              "b2": np.array([-6.0, -3.0], np.float32),
              "wb": np.zeros((4, 4, 1, 1), np.float32), "bb": np.zeros(4, np.float32),
              "grid": grid.astype(np.float32), "s4": np.array([0, 4, GRID * GRID], np.int64),
              "s2": np.array([0, 2, GRID * GRID], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["f0"], strides=[CELL, CELL]),
             helper.make_node("Relu", ["f0"], ["f"]),
             helper.make_node("Conv", ["f", "w2", "b2"], ["cls"]),
             helper.make_node("Conv", ["f", "wb", "bb"], ["zero"]),
             helper.make_node("Add", ["zero", "grid"], ["boxes"]),
             helper.make_node("Reshape", ["boxes", "s4"], ["boxes_flat"]),
             helper.make_node("Reshape", ["cls", "s2"], ["cls_flat"]),
             helper.make_node("Sigmoid", ["cls_flat"], ["prob"]),
             helper.make_node("Concat", ["boxes_flat", "prob"], ["out"], axis=1)]
    graph = helper.make_graph(
        nodes, "detector", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 6, GRID * GRID])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def scenes() -> np.ndarray:
    """Image 0: two bright cells (rows 2 and 5); image 1: one (the top-left cell)."""
    x = np.zeros((2, 3, 32, 32), np.float32)
    x[0, :, 8:12, 12:16] = 1.0
    x[0, :, 20:24, 20:24] = 1.0
    x[1, :, 0:4, 0:4] = 1.0
    return x


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    path = detector(tmp_path_factory.mktemp("det") / "det.onnx")
    explainer = Explainer(export_onnx(path, labels=["box", "other"], task="detect",
                                      format="yolov8"))
    x = scenes()
    return path, explainer, x, explainer.explain(x, method="layercam")


def _run(path: Path, images: np.ndarray, output: int = 0) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: images.astype(np.float32)})[output].astype(np.float64)


def _deletion_copies(image: np.ndarray, heatmap: np.ndarray, steps: int) -> np.ndarray:
    """Deletion's copies, written out: copy i zeroes the round(i * H * W / steps) pixels of
    the highest map values (ties in raster order)."""
    flat = minmax(heatmap).ravel()
    order = sorted(range(flat.size), key=lambda j: (-flat[j], j))
    copies = []
    for i in range(steps + 1):
        removed = np.zeros(flat.size, bool)
        removed[order[:int(np.rint(i * flat.size / steps))]] = True
        copies.append(np.where(removed.reshape(heatmap.shape)[None], 0.0, image))
    return np.stack(copies)


# --- detectors --------------------------------------------------------------------------------
def test_a_detections_score_falls_once_its_box_is_deleted(det):
    _, explainer, x, explanation = det
    first = explanation.detections[0][0]
    x1, y1, x2, y2 = (int(v) for v in first.box)
    assert first.score > 0.99 and x[0, :, y1:y2, x1:x2].min() == 1.0
    result = evaluate(explainer, x, explanation, ["deletion"], steps=8, progress=False)
    curve = np.array(next(v.details["curve"] for v in result.values
                          if (v.image, v.target) == (0, 0)))
    assert len(curve) == 9
    assert curve[0] == pytest.approx(first.score, rel=1e-5)
    # the map's top eighth of the pixels holds the box: the score is the dark cell's after one step
    assert curve[1] == pytest.approx(DARK, rel=1e-3) and curve[-1] == pytest.approx(DARK, rel=1e-3)
    reversed_maps = explanation.heatmaps.max() - explanation.heatmaps
    worse = evaluate(explainer, x, _with_maps(explanation, reversed_maps), ["deletion"],
                     steps=8, progress=False)
    assert worse.table("deletion")[0, 0] > 5 * result.table("deletion")[0, 0]


def _with_maps(explanation, heatmaps):
    from dataclasses import replace

    return replace(explanation, heatmaps=heatmaps.astype(np.float32))


def test_per_detection_rows_equal_the_model_run_on_the_perturbed_images(det):
    path, explainer, x, explanation = det
    steps = 4
    result = evaluate(explainer, x, explanation, ["avg-drop", "increase", "deletion", "energy",
                                                  "pointing"], steps=steps, progress=False)
    pairs = [(b, k) for b, row in enumerate(explanation.detections) for k in range(len(row))]
    assert pairs == [(0, 0), (0, 1), (1, 0)]  # image 1's second column is padding: no rows
    assert {(v.image, v.target) for v in result.values} == set(pairs)
    assert len(result.values) == 5 * len(pairs)
    assert np.isnan(result.table("deletion")[1, 1])
    rows = {(r["image"], r["target"]): r for r in result.to_dict()["targets"]}
    for b, k in pairs:
        d = explanation.detections[b][k]
        e = minmax(explanation.heatmaps[b, k].astype(np.float64))
        read = 4 + d.class_id, d.candidate
        y = _run(path, x[b:b + 1])[0][read]
        o = _run(path, (e * x[b])[None])[0][read]
        copies = _deletion_copies(x[b], explanation.heatmaps[b, k], steps)
        curve = _run(path, copies)[:, 4 + d.class_id, d.candidate]
        values = {v.metric: v for v in result.values if (v.image, v.target) == (b, k)}
        assert values["avg-drop"].details == pytest.approx({"original": y, "masked": o},
                                                           rel=1e-5)
        assert values["avg-drop"].value == pytest.approx(100 * max(0.0, y - o) / y, abs=1e-3)
        assert values["increase"].value == 100.0 * (o > y)
        np.testing.assert_allclose(values["deletion"].details["curve"], curve, rtol=1e-5)
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        assert values["energy"].value == pytest.approx(e[y1:y2, x1:x2].sum() / e.sum())
        assert values["pointing"].value == float(
            y1 <= np.unravel_index(e.argmax(), e.shape)[0] < y2
            and x1 <= np.unravel_index(e.argmax(), e.shape)[1] < x2)
        assert rows[b, k]["item"]["candidate"] == d.candidate and rows[b, k]["class_id"] == 0
    logit = evaluate(explainer, x, explanation, ["avg-drop"], score="logit", progress=False)
    y = _run(path, x[:1])[0][4, explanation.detections[0][0].candidate]
    assert logit.values[0].details["original"] == pytest.approx(np.log(y / (1 - y)), rel=1e-4)


def test_a_class_target_is_scored_over_its_candidates(det):
    path, explainer, x, _ = det
    explanation = explainer.explain(x[:1], targets=0, method="layercam")
    (target,) = explanation.detections[0]
    assert target.candidate == -1 and target.count == 2
    result = evaluate(explainer, x[:1], explanation, ["avg-drop"], progress=False)
    probabilities = _run(path, x[:1])[0][4]
    best = np.sort(probabilities)[-2:]
    assert result.values[0].details["original"] == pytest.approx(best.mean(), rel=1e-5)


def test_the_sanity_check_explains_the_same_detections(det):
    _, explainer, x, explanation = det
    result = evaluate(explainer, x, explanation, ["sanity"], independent=False,
                      progress=False)
    verdict = result.sanity
    assert verdict["layers"] >= 1 and len(verdict["cascading"]) == verdict["layers"]
    assert np.isfinite(result.table("sanity")[0]).all()
    assert np.isnan(result.table("sanity")[1, 1])  # no detection there


# --- segmenters and text recognizers ----------------------------------------------------------
def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_a_segmenters_regions_keep_their_masks(tmp_path):
    segmenter(tmp_path / "seg.onnx", classes=3)
    explainer = Explainer(export_onnx(tmp_path / "seg.onnx", labels=["sky", "road", "car"]))
    x = np.random.default_rng(3).normal(size=(2, 3, 12, 10)).astype(np.float32)
    explanation = explainer.explain(x, method="layercam")
    result = evaluate(explainer, x, explanation, ["avg-drop", "increase", "deletion"], steps=5,
                      progress=False)
    for b, row in enumerate(explanation.regions):
        z = _run(tmp_path / "seg.onnx", x[b:b + 1])[0]
        mask = z.argmax(0)  # the region's mask on the original image, held fixed
        for k, region in enumerate(row):
            e = minmax(explanation.heatmaps[b, k].astype(np.float64))
            inside = mask == region.class_id
            y = _softmax(z, 0)[region.class_id][inside].mean()
            o = _softmax(_run(tmp_path / "seg.onnx", (e * x[b])[None])[0],
                         0)[region.class_id][inside].mean()
            values = {v.metric: v for v in result.values if (v.image, v.target) == (b, k)}
            assert y == pytest.approx(region.score, rel=1e-5)
            assert values["avg-drop"].details == pytest.approx({"original": y, "masked": o},
                                                               rel=1e-5)
            curve = values["deletion"].details["curve"]
            assert len(curve) == 6 and curve[0] == pytest.approx(y, rel=1e-5)
    assert len(result.values) == 3 * sum(map(len, explanation.regions))


def test_a_binary_maps_regions_and_a_given_mask(tmp_path):
    segmenter(tmp_path / "dbnet.onnx", classes=1)
    explainer = Explainer(export_onnx(tmp_path / "dbnet.onnx"))
    x = np.random.default_rng(4).normal(size=(1, 3, 24, 20)).astype(np.float32)
    explanation = explainer.explain(x, method="layercam", threshold=0.5)
    assert explanation.regions[0] and all(r.kind == "region" for r in explanation.regions[0])
    result = evaluate(explainer, x, explanation, ["avg-drop"], progress=False)
    originals = [v.details["original"] for v in result.values]
    assert originals == pytest.approx([r.score for r in explanation.regions[0]], rel=1e-5)
    mask = np.zeros((24, 20), bool)
    mask[2:9, 3:17] = True
    given = explainer.explain(x, targets=[{"mask": mask, "class": 0}], method="layercam")
    with pytest.raises(EvaluationError, match="task_options"):
        evaluate(explainer, x, given, ["avg-drop"], progress=False)
    held = evaluate(explainer, x, given, ["avg-drop"], progress=False,
                    task_options={"targets": [{"mask": mask, "class": 0}]})
    p = _run(tmp_path / "dbnet.onnx", x)[0, 0]  # the model's sigmoid map
    assert held.values[0].details["original"] == pytest.approx(p[mask].mean(), rel=1e-5)


def test_a_recognizers_characters_and_string(tmp_path):
    recognizer(tmp_path / "rec.onnx", vocabulary=5)
    explainer = Explainer(export_onnx(tmp_path / "rec.onnx", labels=["a", "b", "c"]))
    x = np.random.default_rng(5).normal(size=(1, 1, 8, 16)).astype(np.float32)
    explanation = explainer.explain(x, targets="string+characters", method="layercam")
    items = explanation.items[0]
    assert items[0].index == -1 and len(items) > 1
    result = evaluate(explainer, x, explanation, ["avg-drop", "deletion"], steps=4,
                      progress=False)
    p = _run(tmp_path / "rec.onnx", x)[0]  # [T, V] probabilities
    for k, item in enumerate(items):
        read = explanation.sequence[0].characters if item.index < 0 else [item]
        picked = [p[t, c.index] for c in read for t in c.timesteps]
        e = minmax(explanation.heatmaps[0, k].astype(np.float64))
        q = _run(tmp_path / "rec.onnx", (e * x[0])[None])[0]
        masked = [q[t, c.index] for c in read for t in c.timesteps]
        values = {v.metric: v for v in result.values if v.target == k}
        assert values["avg-drop"].details == pytest.approx(
            {"original": np.mean(picked), "masked": np.mean(masked)}, rel=1e-5)
        assert values["deletion"].details["curve"][0] == pytest.approx(np.mean(picked),
                                                                       rel=1e-5)
        if item.index >= 0:
            assert np.mean(picked) == pytest.approx(item.score, rel=1e-5)


def test_what_the_task_metrics_cannot_score_is_named(det, tmp_path):
    _, explainer, x, explanation = det
    with pytest.raises(EvaluationError, match="task_options"):
        evaluate(explainer, x, explanation, ["avg-drop"], task_options={"nms": 0.5},
                 progress=False)
    seeded = explainer.explain(x, seeds={"cls_flat": np.ones((2, 64), np.float32)})
    with pytest.raises(EvaluationError, match="seeds="):
        evaluate(explainer, x, seeded, ["avg-drop"], progress=False)
    with pytest.raises(EvaluationError, match="boxes="):
        evaluate(explainer, x, explanation, ["pointing"], boxes=[[[0, 0, 4, 4]]],
                 progress=False)
    nothing = explainer.explain(np.zeros_like(x), method="layercam")
    with pytest.raises(EvaluationError, match="no target"):
        evaluate(explainer, np.zeros_like(x), nothing, ["avg-drop"], progress=False)


# --- command line -----------------------------------------------------------------------------
PRE = json.dumps({"resize": [32, 32], "crop": None, "scale": 1 / 255,
                  "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]})


def test_the_command_line_writes_a_row_per_detection(tmp_path, capsys):
    model = detector(tmp_path / "det.onnx")
    images = []
    for name, picture in zip(("two.png", "one.png"), scenes(), strict=True):
        pixels = (np.moveaxis(picture, 0, -1) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / name)
        images.append(str(tmp_path / name))
    out = tmp_path / "eval"
    (tmp_path / "labels.txt").write_text("box\nother\n")
    code = main(["evaluate", str(model), *images, "--task", "detect", "--format", "yolov8",
                 "--labels", str(tmp_path / "labels.txt"),
                 "--preprocessing", PRE, "--methods", "layercam,gradcam", "--metrics",
                 "avg-drop,deletion,pointing", "--steps", "4", "--conf", "0.5", "--out",
                 str(out), "--quiet"])
    assert code == 0
    document = json.loads((out / "metrics.json").read_text())
    for method in ("layercam", "gradcam"):
        result = document["methods"][method]
        assert result["task"] == "detect"
        rows = result["targets"]
        assert [(r["image"], r["target"]) for r in rows] == [(0, 0), (0, 1), (1, 0)]
        assert all(r["item"]["label"] == "box" and r["item"]["image_box"] for r in rows)
        assert set(rows[0]["metrics"]) == {"avg-drop", "deletion", "pointing"}
        assert np.isfinite(result["means"]["deletion"])
        assert result["seconds_per_image"]["explain"] > 0
    assert document["methods"]["layercam"]["means"]["pointing"] == 1.0  # peaks in its box
    assert (out / "report.html").is_file()
    printed = capsys.readouterr().out
    assert "report.html" in printed and "layercam" in printed
    code = main(["evaluate", str(model), *images, "--task", "detect", "--format", "yolov8",
                 "--preprocessing", PRE, "--threshold", "0.3", "--out", str(out), "--quiet"])
    assert code == 2 and "--threshold does not apply" in capsys.readouterr().err


# --- ROAD and each item's own region, for every task -------------------------------------------
def _columns(timesteps, steps: int, height: int, width: int) -> np.ndarray:
    """The input columns of ``timesteps`` of ``steps``: pixel x is in timestep t's span when
    ``t W / T <= x < (t + 1) W / T``, i.e. x from ceil(t W / T) to ceil((t + 1) W / T) - 1."""
    mask = np.zeros((height, width), bool)
    for t in timesteps:
        mask[:, int(np.ceil(t * width / steps)):int(np.ceil((t + 1) * width / steps))] = True
    return mask


@pytest.fixture(scope="module", params=["detect", "segment", "sequence"])
def task_case(request, tmp_path_factory):
    """(model path, explainer, x, explanation, read(b, k, outputs) -> per-row task scores,
    own(b, k) -> the item's own region [H, W]) of each task's small model."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "detect":
        path = detector(folder / "det.onnx")
        explainer = Explainer(export_onnx(path, labels=["box", "other"], task="detect",
                                          format="yolov8"))
        x = scenes()
        explanation = explainer.explain(x, method="layercam")

        def read(b, k, out):
            d = explanation.detections[b][k]
            return out[:, 4 + d.class_id, d.candidate]

        def own(b, k):
            x1, y1, x2, y2 = (int(round(v)) for v in explanation.detections[b][k].box)
            mask = np.zeros(x.shape[2:], bool)
            mask[y1:y2, x1:x2] = True
            return mask
    elif request.param == "segment":
        path = folder / "seg.onnx"
        segmenter(path, classes=3)
        explainer = Explainer(export_onnx(path, labels=["sky", "road", "car"]))
        x = np.random.default_rng(3).normal(size=(2, 3, 12, 10)).astype(np.float32)
        explanation = explainer.explain(x, method="layercam")
        argmax = _run(path, x).argmax(1)  # the regions' masks on the original images

        def read(b, k, out):
            inside = argmax[b] == explanation.regions[b][k].class_id
            return _softmax(out, 1)[:, explanation.regions[b][k].class_id][:, inside].mean(1)

        def own(b, k):
            return argmax[b] == explanation.regions[b][k].class_id
    else:
        path = folder / "rec.onnx"
        recognizer(path, vocabulary=5)
        explainer = Explainer(export_onnx(path, labels=["a", "b", "c"]))
        x = np.random.default_rng(5).normal(size=(1, 1, 8, 16)).astype(np.float32)
        explanation = explainer.explain(x, targets="string+characters", method="layercam")
        steps = _run(path, x).shape[1]

        def chars(b, k):
            item = explanation.items[b][k]
            return explanation.sequence[b].characters if item.index < 0 else [item]

        def read(b, k, out):
            return np.mean([out[:, t, c.index] for c in chars(b, k) for t in c.timesteps],
                           axis=0)

        def own(b, k):
            return _columns([t for c in chars(b, k) for t in c.timesteps], steps,
                            *x.shape[2:])
    return path, explainer, x, explanation, read, own


def test_road_equals_the_model_run_on_the_imputed_copies(task_case):
    path, explainer, x, explanation, read, _ = task_case
    percentiles, noise, seed = (25, 50, 75), 0.01, 3
    result = evaluate(explainer, x, explanation, ["road-morf", "road-lerf", "road"],
                      percentiles=percentiles, noise=noise, seed=seed, progress=False)
    rng = np.random.default_rng(seed)  # drawn pair by pair, MoRF then LeRF, as documented
    n, pairs = len(percentiles), 0
    for b, row in enumerate(explanation.items):
        for k in range(len(row)):
            e = minmax(explanation.heatmaps[b, k].astype(np.float64))
            image = x[b].astype(np.float64)
            copies = [image] + [impute(image, order < np.percentile(order, q), noise, rng)
                                for order in (e, 1 - e) for q in percentiles]
            s = read(b, k, _run(path, np.stack(copies)))
            morf, lerf = s[1:n + 1] - s[0], s[n + 1:] - s[0]
            values = {v.metric: v for v in result.values if (v.image, v.target) == (b, k)}
            np.testing.assert_allclose(values["road"].details["morf"], morf, rtol=1e-4,
                                       atol=1e-6)
            np.testing.assert_allclose(values["road"].details["lerf"], lerf, rtol=1e-4,
                                       atol=1e-6)
            assert values["road-morf"].value == pytest.approx(morf.mean(), rel=1e-4, abs=1e-6)
            assert values["road"].value == pytest.approx((lerf.mean() - morf.mean()) / 2,
                                                         rel=1e-4, abs=1e-6)
            pairs += 1
    assert pairs >= 2 and len(result.values) == 3 * pairs


def test_pointing_and_energy_use_each_items_own_region(task_case):
    _, explainer, x, explanation, _, own = task_case
    result = evaluate(explainer, x, explanation, ["pointing", "energy"], progress=False)
    regions = {(b, k): own(b, k) for b, row in enumerate(explanation.items)
               for k in range(len(row))}
    assert all(r.any() and not r.all() for r in regions.values())
    for (b, k), region in regions.items():
        e = minmax(explanation.heatmaps[b, k].astype(np.float64))
        values = {v.metric: v.value for v in result.values if (v.image, v.target) == (b, k)}
        assert values["energy"] == pytest.approx(e[region].sum() / e.sum(), rel=1e-6)
        assert values["pointing"] == float(region.flat[int(np.argmax(e))])
    inside = np.zeros(explanation.heatmaps.shape, np.float32)
    for (b, k), region in regions.items():
        inside[b, k] = np.where(region, 1.0, 0.01)
    concentrated = evaluate(explainer, x, _with_maps(explanation, inside),
                            ["pointing", "energy"], progress=False)
    outside = evaluate(explainer, x, _with_maps(explanation, 1.0 - inside),
                       ["pointing", "energy"], progress=False)
    for (b, k) in regions:
        assert concentrated.table("pointing")[b, k] == 1.0
        assert concentrated.table("energy")[b, k] == pytest.approx(1.0)
        assert outside.table("pointing")[b, k] == 0.0
        assert outside.table("energy")[b, k] == pytest.approx(0.0, abs=1e-9)
