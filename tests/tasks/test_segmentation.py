"""Segmenters and text recognizers without torch: connected regions, CTC decoding, the seeds of
weighted scores (against finite differences), the targets' forms and errors, and small ONNX
segmenters and recognizers built with onnx.helper, explained end to end and checked against the
head's gradient computed in numpy."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from explainer import Explainer
from explainer.batch import FolderRun, RunOptions
from explainer.errors import LabelError, TargetError
from explainer.seeds import embedding_score, embedding_seed, weighted_scores, weighted_seed
from explainer.segmentation import Region, label_regions, plan_regions, predicted
from explainer.sequence import ctc_decode, plan_characters, sequence_labels
from exporters.errors import OnnxExportError
from exporters.onnx_frontend import export_onnx

RNG = np.random.default_rng(0)


def _flood(mask: np.ndarray) -> set[frozenset[tuple[int, int]]]:
    """8-connected components by a plain flood fill (the reference)."""
    seen, found = set(), set()
    for start in zip(*np.nonzero(mask)):
        if start in seen:
            continue
        stack, part = [start], set()
        seen.add(start)
        while stack:
            y, x = stack.pop()
            part.add((int(y), int(x)))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if (0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1] and mask[q]
                            and q not in seen):
                        seen.add(q)
                        stack.append(q)
        found.add(frozenset(part))
    return found


@pytest.mark.parametrize("density", [0.2, 0.45, 0.6])
def test_connected_regions_equal_a_flood_fill(density: float) -> None:
    mask = RNG.random((23, 31)) < density
    labels, n = label_regions(mask)
    ours = {frozenset((int(y), int(x)) for y, x in zip(*np.nonzero(labels == i)))
            for i in range(1, n + 1)}
    assert ours == _flood(mask)
    assert (labels > 0).sum() == mask.sum()


PARAMS = [
    ({"name": "masks", "explained": "logits", "activation": "softmax", "axis": 0}, "logit"),
    ({"name": "masks", "explained": "logits", "activation": "softmax", "axis": 0},
     "probability"),
    ({"name": "binary", "explained": "logits", "activation": "sigmoid", "axis": 0},
     "probability"),
    ({"name": "masks", "explained": "probabilities", "activation": "softmax", "axis": 0},
     "logit"),
    ({"name": "binary", "explained": "probabilities", "activation": "sigmoid", "axis": 0},
     "logit"),
    ({"name": "ctc", "explained": "logits", "activation": "softmax", "axis": -1},
     "probability"),
]


@pytest.mark.parametrize(("params", "score"), PARAMS)
def test_weighted_seeds_are_the_gradient_of_the_weighted_score(params: dict, score: str) -> None:
    shape = (4, 5, 3) if params["name"] == "ctc" else (3, 4, 5)
    if params["name"] == "binary":
        shape = (1, 4, 5)
    z = RNG.normal(size=shape)
    if params["explained"] == "probabilities":  # a softmax / sigmoid output
        axis = params["axis"]
        z = np.exp(z) / np.exp(z).sum(axis=axis, keepdims=True) if \
            params["activation"] == "softmax" else 1 / (1 + np.exp(-z))
    w = (RNG.random(shape) < 0.4).astype(np.float64)
    seed = weighted_seed(z, w, params, score).astype(np.float64)
    eps, numeric = 1e-6, np.zeros(shape)
    for index in np.ndindex(*shape):
        up, down = z.copy(), z.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = (weighted_scores(up[None], [w], params, score)[0]
                          - weighted_scores(down[None], [w], params, score)[0]) / (2 * eps)
    np.testing.assert_allclose(seed, numeric, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_embedding_seed_is_the_gradient_of_the_similarity(score: str) -> None:
    e, v = RNG.normal(size=6), RNG.normal(size=6)
    seed = embedding_seed(e, v, score)
    numeric = np.array([(embedding_score(e + d, v, score) - embedding_score(e - d, v, score))
                        / 2e-6 for d in np.eye(6) * 1e-6])
    np.testing.assert_allclose(seed, numeric, rtol=1e-4, atol=1e-5)
    with pytest.raises(TargetError, match="3 values"):
        embedding_seed(e, v[:3], score)


def test_ctc_greedy_decoding_keeps_each_characters_timesteps() -> None:
    steps = [1, 1, 0, 2, 0, 2, 2, 0, 0, 3]  # "a a _ b _ b b _ _ c" -> "abbc"
    z = np.full((len(steps), 4), -5.0)
    z[np.arange(len(steps)), steps] = 5.0
    params = {"explained": "logits", "blank": 0}
    t = ctc_decode(z, params, ["<blank>", "a", "b", "c"], width=100, height=8)
    assert t.text == "abbc"
    assert [c.timesteps for c in t.characters] == [(0, 1), (3,), (5, 6), (9,)]
    assert t.characters[0].box == (0.0, 0.0, 20.0, 8.0)
    assert ctc_decode(z, params, None, 100, 8).text == "#1#2#2#3"
    targets = plan_characters("string+1", t, z.shape)
    assert targets[0].item.index == -1 and targets[0].item.text == "abbc"
    assert targets[0].weights.sum() == 6 and targets[1].item.timesteps == (3,)
    assert targets[1].weights[3, 2] == 1 and targets[1].weights.sum() == 1
    blank = ctc_decode(np.tile([5.0, -5, -5, -5], (6, 1)), params, None, 60, 8)  # all blank
    assert blank.text == "" and plan_characters(None, blank, (6, 4)) == []


def test_vocabularies_follow_the_paddleocr_convention() -> None:
    assert sequence_labels(["a", "b"], 4) == ["<blank>", "a", "b", " "]
    assert sequence_labels(["a", "b", "c"], 4) == ["<blank>", "a", "b", "c"]
    assert sequence_labels(list("wxyz"), 4) == list("wxyz")
    with pytest.raises(LabelError, match="5 labels for a vocabulary of 4"):
        sequence_labels(list("abcde"), 4)


def test_region_targets_and_their_errors() -> None:
    params = {"name": "masks", "explained": "logits", "activation": "softmax", "axis": 0}
    z = np.zeros((3, 8, 8))
    z[1, :4, :4] = 5  # class 1 top-left, class 2 bottom-right, class 0 elsewhere
    z[2, 5:, 5:] = 5
    labels = ["background", "cat", "dog"]
    pred = predicted(z, params)
    assert set(np.unique(pred)) == {0, 1, 2}
    targets = plan_regions(None, z, params, labels, (16, 16))  # background left out
    assert [t.item.label for t in targets] == ["cat", "dog"]
    cat = targets[0].item
    assert isinstance(cat, Region) and cat.box == (0.0, 0.0, 8.0, 8.0) and cat.area == 64.0
    assert targets[0].weights[1].sum() == 16 and targets[0].weights[[0, 2]].sum() == 0
    by_box = plan_regions({"box": (10, 10, 16, 16)}, z, params, labels, (16, 16))[0]
    assert by_box.item.kind == "box" and by_box.item.class_id == 2
    mask = np.zeros((16, 16), bool)
    mask[:2, :2] = True
    assert plan_regions({"mask": mask, "class": "cat"}, z, params, labels,
                        (16, 16))[0].weights[1].sum() == 1
    with pytest.raises(TargetError, match=r"\[16, 16\].*\[8, 8\].*\[5, 5\]"):
        plan_regions({"mask": np.ones((5, 5))}, z, params, labels, (16, 16))
    with pytest.raises(TargetError, match="empty"):
        plan_regions({"mask": np.zeros((8, 8))}, z, params, labels, (16, 16))
    with pytest.raises(TargetError, match="out of range"):
        plan_regions(7, z, params, labels, (16, 16))
    with pytest.raises(TargetError, match="unknown class name 'bird'"):
        plan_regions("bird", z, params, labels, (16, 16))


# --- small ONNX models, explained end to end ------------------------------------------------------
def _conv(name: str, cin: int, cout: int, k: int | tuple[int, int], seed: int
          ) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    kh, kw = (k, k) if isinstance(k, int) else k
    w = np.random.default_rng(seed).normal(0, 0.5, (cout, cin, kh, kw)).astype(np.float32)
    b = np.random.default_rng(seed + 1).normal(0, 0.1, cout).astype(np.float32)
    return numpy_helper.from_array(w, name + "_w"), numpy_helper.from_array(b, name + "_b")


def segmenter(path, classes: int = 3) -> onnx.ModelProto:
    """x -> two conv branches merged by an Add (the decoder's input) -> 1x1 conv scores
    [N, C, H, W] (a Sigmoid map when C is 1)."""
    inits = [*_conv("c1", 3, 4, 3, 1), *_conv("c2", 4, 4, 3, 3), *_conv("c3", 4, 4, 1, 5),
             *_conv("head", 4, classes, 1, 7)]
    nodes = [helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["a0"], pads=[1] * 4),
             helper.make_node("Relu", ["a0"], ["a"]),
             helper.make_node("Conv", ["a", "c2_w", "c2_b"], ["b0"], pads=[1] * 4),
             helper.make_node("Relu", ["b0"], ["b"]),
             helper.make_node("Conv", ["a", "c3_w", "c3_b"], ["c"]),
             helper.make_node("Add", ["b", "c"], ["merged"]),
             helper.make_node("Conv", ["merged", "head_w", "head_b"], ["scores"])]
    out = "scores"
    if classes == 1:
        nodes.append(helper.make_node("Sigmoid", ["scores"], ["prob"]))
        out = "prob"
    graph = helper.make_graph(
        nodes, "segmenter", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", classes, "h", "w"])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime's other bindings (Node, web) load
    onnx.save(model, path)
    return model


def recognizer(path, vocabulary: int = 5) -> onnx.ModelProto:
    """x [N, 1, 8, W] -> conv over the height -> [N, 4, 1, W] -> [N, W, 4] -> MatMul ->
    Softmax: per-column class probabilities [N, T=W, V]."""
    w, b = _conv("c1", 1, 4, (8, 1), 11)
    m = numpy_helper.from_array(
        np.random.default_rng(13).normal(0, 1.0, (4, vocabulary)).astype(np.float32), "m")
    shape = numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["f0"]),
             helper.make_node("Relu", ["f0"], ["f"]),
             helper.make_node("Reshape", ["f", "shape"], ["seq"]),
             helper.make_node("Transpose", ["seq"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["tokens", "m"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(
        nodes, "recognizer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, "w"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", "w", vocabulary])],
        [w, b, m, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime's other bindings (Node, web) load
    onnx.save(model, path)
    return model


def _layercam(gradient: np.ndarray, activation: np.ndarray) -> np.ndarray:
    return np.maximum((np.maximum(gradient, 0) * activation).sum(axis=0), 0)


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_a_segmenter_explains_each_class_over_its_mask(tmp_path, score: str) -> None:
    model = segmenter(tmp_path / "seg.onnx", classes=3)
    bundle = export_onnx(tmp_path / "seg.onnx", labels=["sky", "road", "car"])
    manifest = bundle.manifest
    assert manifest["task"] == "segment" and manifest["format"]["name"] == "masks"
    assert manifest["target"]["tensor"] == "merged"  # the last merge every path goes through
    assert manifest["format"]["explained"] == "logits"
    x = RNG.normal(size=(2, 3, 12, 10)).astype(np.float32)
    with Explainer(bundle) as explainer:
        e = explainer.explain(x, method="layercam", score=score)
        merged = explainer.runner.run_features(x)["merged"]
    head = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "head_w"))
    bias = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "head_b"))
    z = np.einsum("oc,bchw->bohw", head[:, :, 0, 0], merged) + bias[None, :, None, None]
    for b in range(2):
        pred = z[b].argmax(0)
        assert [r.class_id for r in e.regions[b]] == sorted(
            np.unique(pred), key=lambda c: (-(pred == c).sum(), c))
        for k, region in enumerate(e.regions[b]):
            mask = (pred == region.class_id).astype(np.float64)
            weights = np.zeros_like(z[b])
            weights[region.class_id] = mask
            seed = weighted_seed(z[b], weights, manifest["format"], score)
            gradient = np.einsum("oc,ohw->chw", head[:, :, 0, 0], seed)
            np.testing.assert_allclose(e.cams[b, k], _layercam(gradient, merged[b]),
                                       rtol=1e-4, atol=1e-5)
            expected = weighted_scores(z[b][None], [weights], manifest["format"], score)[0]
            assert e.scores[b, k] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_a_binary_map_explains_each_region_and_a_folder_run_records_them(tmp_path) -> None:
    segmenter(tmp_path / "dbnet.onnx", classes=1)
    pre = {"resize": [24, 20], "crop": None}
    bundle = export_onnx(tmp_path / "dbnet.onnx", preprocessing=pre)
    assert bundle.manifest["format"]["name"] == "binary"
    x = RNG.normal(size=(1, 3, 24, 20)).astype(np.float32)
    with Explainer(bundle) as explainer:
        e = explainer.explain(x, threshold=0.5)
        assert e.task == "segment" and e.heatmaps.shape[1] == len(e.regions[0])
        assert all(r.kind == "region" for r in e.regions[0])
        none = explainer.explain(x, threshold=0.999999)
        assert none.heatmaps.shape[1] == 0 and "no predicted region" in none.notes[0]
        with pytest.raises(TargetError, match="threshold"):
            explainer.explain(x, threshold=1.5)
        with pytest.raises(TargetError, match=r"--conf"):
            explainer.explain(x, conf=0.3)
        from PIL import Image

        Image.fromarray(RNG.integers(0, 255, (30, 26, 3), dtype=np.uint8)).save(
            tmp_path / "page.png")
        run = FolderRun(explainer, [tmp_path / "page.png"], tmp_path / "out",
                        RunOptions(method=None, threshold=0.5))
        summary = run.run()
    row = summary["images"][0]
    assert row["status"] == "ok" and "regions" in row
    assert summary["task"] == "segment" and summary["threshold"] == 0.5
    assert (tmp_path / "out" / row["overlay"]).exists()
    json.dumps(summary)


def test_a_ctc_recognizer_explains_each_character_at_its_columns(tmp_path) -> None:
    model = recognizer(tmp_path / "rec.onnx", vocabulary=5)
    bundle = export_onnx(tmp_path / "rec.onnx", labels=["a", "b", "c"])  # PaddleOCR-style
    manifest = bundle.manifest
    assert manifest["task"] == "sequence" and manifest["format"]["name"] == "ctc"
    assert manifest["labels"] == ["<blank>", "a", "b", "c", " "]
    assert manifest["format"]["explained"] == "logits" and manifest["target"]["tensor"] == "f"
    x = RNG.normal(size=(1, 1, 8, 16)).astype(np.float32)
    m = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "m"))
    with Explainer(bundle) as explainer:
        e = explainer.explain(x, targets="string+characters")
        f = explainer.runner.run_features(x)["f"][0]  # [4, 1, W]
    z = f[:, 0, :].T @ m  # [T, V]
    transcript = e.sequence[0]
    best = z.argmax(1)
    assert transcript.text == ctc_decode(z, manifest["format"], manifest["labels"], 16, 8).text
    assert len(e.items[0]) == 1 + len(transcript.characters) and e.items[0][0].index == -1
    for k, item in enumerate(e.items[0]):
        weights = np.zeros_like(z)
        for t in item.timesteps:
            weights[t, best[t]] = 1
        gradient = (weights @ m.T).T[:, None, :]  # d/df of sum(W * z), [4, 1, W]
        np.testing.assert_allclose(e.cams[0, k], _layercam(gradient, f), rtol=1e-4, atol=1e-5)
        if item.index >= 0:  # a character's map lives in its own columns
            assert set(np.nonzero(e.cams[0, k][0])[0]) <= set(item.timesteps)


def test_a_recognizer_without_a_character_list_says_so_and_a_blank_line_is_a_note(
        tmp_path) -> None:
    recognizer(tmp_path / "rec.onnx", vocabulary=5)
    bundle = export_onnx(tmp_path / "rec.onnx")
    assert bundle.manifest["labels"] is None
    with Explainer(bundle) as explainer:
        x = RNG.normal(size=(2, 1, 8, 12)).astype(np.float32)
        e = explainer.explain(x)
        assert any("--labels" in note for note in e.notes)
        assert all(c.text.startswith("#") for row in e.items for c in row)
        with pytest.raises(TargetError, match="position"):
            explainer.explain(x, targets="word")
        with pytest.raises(TargetError, match="top_k"):
            explainer.explain(x, top_k=2)


def test_explain_with_seeds_and_bad_seeds(tmp_path) -> None:
    segmenter(tmp_path / "seg.onnx", classes=2)
    bundle = export_onnx(tmp_path / "seg.onnx")
    x = RNG.normal(size=(2, 3, 6, 6)).astype(np.float32)
    with Explainer(bundle) as explainer:
        seed = np.zeros((2, 6, 6), np.float32)
        seed[1, 2, 3] = 1  # one pixel of class 1
        e = explainer.explain(x, seeds={"scores": seed})
        z = explainer.runner.run_features(x)
        assert e.cams.shape[:2] == (2, 1) and e.score == "seed"
        by_hand = explainer.explain(x, targets={"box": (3, 2, 4, 3), "class": 1},
                                    method="gradcam")
        again = explainer.explain(x, seeds={"scores": seed}, method="gradcam")
        np.testing.assert_allclose(again.cams, by_hand.cams, rtol=1e-5, atol=1e-6)
        with pytest.raises(TargetError, match="differentiates 'scores'"):
            explainer.explain(x, seeds={"other": seed})
        with pytest.raises(TargetError, match=r"shape \[2, 6, 6\]"):
            explainer.explain(x, seeds={"scores": np.ones((3, 3))})
    assert z is not None


def test_integer_and_unreadable_outputs_are_refused_with_their_names(tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["s"]),
         helper.make_node("ArgMax", ["s"], ["mask"], axis=1, keepdims=1)],
        "argmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 1, 16, 16])],
        [numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "argmax.onnx")
    with pytest.raises(OnnxExportError, match=r"'mask' \[1, 1, 16, 16\].*ArgMax"):
        export_onnx(tmp_path / "argmax.onnx", task="segment")
    recognizer(tmp_path / "rec.onnx")
    with pytest.raises(OnnxExportError, match="contradicts task='segment'"):
        export_onnx(tmp_path / "rec.onnx", task="segment", format="ctc")


@pytest.mark.parametrize("method", ["gradcam", "layercam", "hirescam"])
def test_a_segmenters_explanation_graph_gives_the_two_graphs_maps(tmp_path, method: str) -> None:
    segmenter(tmp_path / "seg.onnx", classes=3)
    bundle = export_onnx(tmp_path / "seg.onnx", labels=["sky", "road", "car"])
    assert bundle.explanation is not None and bundle.manifest["explanation"]["file"]
    x = RNG.normal(size=(3, 3, 10, 12)).astype(np.float32)
    with Explainer(bundle) as explainer:
        assert explainer.graph is not None
        runs = []
        run = explainer.graph.run
        explainer.graph.run = lambda *a, **k: runs.append(1) or run(*a, **k)
        one_run = explainer.explain(x, targets="car+sky", method=method)
        assert runs == [1]  # one session run of the explanation graph
        graph, explainer.graph = explainer.graph, None  # the two graphs and numpy
        two = explainer.explain(x, targets="car+sky", method=method)
        explainer.graph = graph
    for b in range(3):
        ones, twos = ([r.to_dict() for r in e.regions[b]] for e in (one_run, two))
        assert [{**r, "score": 0} for r in ones] == [{**r, "score": 0} for r in twos]
        # float32 rounding: the graph's session is specialized to the input size
        np.testing.assert_allclose([r["score"] for r in ones], [r["score"] for r in twos],
                                   rtol=1e-6)
    np.testing.assert_allclose(one_run.cams, two.cams, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one_run.heatmaps, two.heatmaps, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one_run.scores, two.scores, rtol=1e-4, atol=1e-4)


def test_class_names_with_spaces_and_spaced_keywords() -> None:
    params = {"name": "masks", "explained": "logits", "activation": "softmax", "axis": 0}
    z = np.zeros((3, 4, 4))
    z[2, :2] = 5
    labels = ["background", "stop sign", "traffic light"]
    targets = plan_regions("traffic light + top 1", z, params, labels, (8, 8))
    assert [t.item.label for t in targets] == ["traffic light", "traffic light"]
