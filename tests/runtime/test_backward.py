"""The gradient head run as its forward once and its backward per target
(:mod:`explainer.backward`): the same gradients as the whole head, for a seed in one level of a
concatenated output (the pruned backward of that level) or across levels (the whole backward)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DETECTOR_CLASSES as CLASSES
from conftest import make_onnx_detector
from onnx import TensorProto, helper

import explainer.backward as backward_module
from explainer import Explainer, task_runs
from explainer.backward import SplitHead, concat_parts, part_backward
from explainer.backward_window import Window, window_backward
from explainer.bridge import export_onnx
from explainer.methods import METHODS
from explainer.sparse_seeds import SparseColumn, SparseSeeds


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = make_onnx_detector(tmp_path_factory.mktemp("det") / "det.onnx")
    return export_onnx(path, ["stem.y", "f1", "down2.y"], task="detect", format="yolov8")


def _whole_head(bundle) -> Explainer:
    """An Explainer that runs the whole gradient head per target (the split turned off)."""
    explainer = Explainer(bundle)
    explainer.runner.__dict__["split"] = None
    return explainer


def _whole(explainer: Explainer, features, seed: np.ndarray) -> list[np.ndarray]:
    """Every layer's gradient from one run of the whole gradient head."""
    runner, head = explainer.runner, explainer.spec.head
    names = list(runner.split.gradients)
    return runner.run(runner.head_session, {**features, head.seed: seed}, names)


def test_the_split_head_gives_the_whole_heads_gradients(bundle) -> None:
    explainer = Explainer(bundle)
    runner = explainer.runner
    split = runner.split
    assert split is not None and split.parts is not None and len(split.parts.tensors) == 3
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    features = runner.features(x)
    forward = runner.predict(features)
    shape = forward[explainer.spec.head.logits].shape  # [1, C, 336]
    rng = np.random.default_rng(1)
    seeds = {"level 0": (0, 5), "level 1": (256, 300), "level 2": (330, 331),
             "levels 0 and 2": (200, 330)}
    for case, (first, last) in seeds.items():
        seed = np.zeros(shape, np.float32)
        seed[..., first] = rng.standard_normal(CLASSES)
        seed[..., last] = rng.standard_normal(CLASSES)
        expected = _whole(explainer, features, seed)
        got = [g[:, 0] for g in runner.backward(forward, seed[:, None], list(split.gradients))]
        part = split.part_of(seed, forward)
        assert (part is None) == (case == "levels 0 and 2"), case
        for name, want, have in zip(split.gradients, expected, got, strict=True):
            scale = max(float(np.abs(want).max()), 1e-12)
            np.testing.assert_allclose(have, want, atol=1e-6 * scale, err_msg=f"{case}: {name}")
    # a level-2 seed does not reach the stem's output but through level 1 and level 2's convs;
    # its pruned backward skips level 0's and level 1's heads
    pruned, zeros = split.backward_model(2)
    whole, _ = split.backward_model(None)
    assert len(pruned.graph.node) < len(whole.graph.node) and not zeros
    # level 0's seed gives zero gradients at the later levels' tensors, not computed
    _, zeros = split.backward_model(0)
    assert zeros == {g for g, a in split.gradients.items() if a in ("f1", "down2.y")}


def test_the_prediction_runs_features_and_forward_as_one_graph(bundle) -> None:
    runner = Explainer(bundle).runner
    x = np.random.default_rng(6).random((1, 3, 16, 16), dtype=np.float32)
    features, forward = runner.prediction(x)
    apart = runner.features(x)
    assert features.keys() == apart.keys()
    expected = runner.predict(apart)
    assert forward.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(forward[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    model = runner.split.prediction_model(bundle.features)
    assert [i.name for i in model.graph.input] == [bundle.spec.input.name]
    outputs = [o.name for o in model.graph.output]
    assert len(outputs) == len(set(outputs)) == len(forward)
    produced = [o for n in model.graph.node for o in n.output]
    assert len(produced) == len(set(produced))  # constants both graphs hold: once


def test_detections_explain_the_same_with_the_split_head(bundle) -> None:
    x = np.random.default_rng(2).random((1, 3, 16, 16), dtype=np.float32)
    split = Explainer(bundle).explain(x, targets="top5", conf=0.0)
    whole = _whole_head(bundle).explain(x, targets="top5", conf=0.0)
    assert len(split.detections[0]) == 5
    np.testing.assert_allclose(split.heatmaps, whole.heatmaps, atol=1e-5)
    for layer in split.layers:
        np.testing.assert_allclose(split.layers[layer].cams, whole.layers[layer].cams,
                                   rtol=1e-5, atol=1e-6)


def test_a_detectors_fused_maps_are_the_mean_of_its_layers_heatmaps(bundle) -> None:
    """The fused heatmaps come from the layers' CAMs in one resize; the layers' own heatmaps,
    read afterwards, are their resized and scaled CAMs and average to the fused ones."""
    from explainer.layers import heatmaps_of
    from explainer.maps import normalize_maps

    explainer = Explainer(bundle)
    x = np.random.default_rng(6).random((2, 3, 16, 16), dtype=np.float32)
    explained = explainer.explain(x, targets="top4", conf=0.0)
    layers = list(explained.layers.values())
    assert len(layers) == 3 and not any(m.computed for m in layers)
    for m in layers:
        np.testing.assert_allclose(m.heatmaps, heatmaps_of([m.cams], (16, 16)), atol=0)
    mean = normalize_maps(sum(m.heatmaps for m in layers))
    np.testing.assert_allclose(explained.heatmaps, mean, atol=2e-6)
    assert explained.heatmaps.reshape(8, -1).max(axis=1) == pytest.approx(1.0)
    # the other fusions and renormalize="boxes" read the layers' heatmaps
    top = explainer.explain(x, targets="top4", conf=0.0, fuse="max")
    np.testing.assert_allclose(
        top.heatmaps, normalize_maps(np.maximum.reduce([m.heatmaps for m in layers])),
        atol=2e-6)
    first = explainer.explain(x, targets="top4", conf=0.0, fuse=None)
    np.testing.assert_allclose(first.heatmaps, layers[0].heatmaps, atol=2e-6)
    boxed = explainer.explain(x, targets="top4", conf=0.0, renormalize="boxes")
    assert all(m.computed for m in boxed.layers.values())


def _graph(nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str]
           ) -> onnx.ModelProto:
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs]
    graph = helper.make_graph(nodes, "g", values, [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_zeros_are_dropped_through_sums_and_kept_where_read_as_they_are() -> None:
    nodes = [helper.make_node("Mul", ["z", "a"], ["za"]),            # zero
             helper.make_node("Sub", ["za", "a"], ["neg"]),          # -a
             helper.make_node("Add", ["a", "za"], ["same"]),         # a
             helper.make_node("Shape", ["za"], ["shape"]),           # reads the zero itself
             helper.make_node("Concat", ["za", "a"], ["mixed"], axis=0)]
    model = _graph(nodes, ["z", "a"], ["neg", "same", "shape", "mixed", "za"])
    pruned, zeros = part_backward(model, {"z"})
    ops = {n.output[0]: n.op_type for n in pruned.graph.node}
    assert ops["neg"] == "Neg" and ops["same"] == "Identity"
    assert ops["za"] == "Mul"  # recomputed: Shape and Concat read it
    assert zeros == set()
    pruned, zeros = part_backward(_graph(nodes[:3], ["z", "a"], ["za", "neg"]), {"z"})
    assert zeros == {"za"} and [n.op_type for n in pruned.graph.node] == ["Neg"]


def test_no_parts_where_the_explained_tensor_is_no_concat() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["e"]),
             helper.make_node("Mul", ["seed", "x"], ["grad/x"], name="grad/x")]
    assert concat_parts(_graph(nodes, ["x", "seed"], ["e", "grad/x"]), "e", "seed") is None
    assert SplitHead.of(_graph(nodes, ["x", "seed"], ["e", "grad/x"]), ["x"], "e", "seed", [],
                        [("x", "grad/x")]) is not None


def test_parts_of_a_transposed_concatenation() -> None:
    # YOLOX's layout: levels [N, 6, A_l] concatenated to [N, 6, A], transposed to [N, A, 6]
    nodes = [helper.make_node("Concat", ["a", "b"], ["cat"], axis=2),
             helper.make_node("Transpose", ["cat"], ["e"], perm=[0, 2, 1]),
             helper.make_node("Transpose", ["seed"], ["grad/t"], name="grad/t", perm=[0, 2, 1]),
             helper.make_node("Split", ["grad/t", "sizes"], ["grad/a", "grad/b"],
                              name="grad/s", axis=2)]
    model = _graph(nodes, ["a", "b", "seed", "sizes"], ["e", "grad/a", "grad/b"])
    parts = concat_parts(model, "e", "seed")
    assert parts is not None and parts.gradients == ("grad/a", "grad/b")
    assert (parts.axis, parts.part_axis, parts.perm) == (1, 2, (0, 2, 1))
    forward = {"a": np.zeros((1, 6, 5)), "b": np.zeros((1, 6, 3))}
    seed = np.arange(48.0).reshape(1, 8, 6)
    assert parts.sizes(forward) == [5, 3]
    np.testing.assert_array_equal(parts.seed_of(seed, forward, 1), seed[:, 5:].transpose(0, 2, 1))
    # a backward that does not undo the transpose first has no parts
    nodes[2] = helper.make_node("Identity", ["seed"], ["grad/t"], name="grad/t")
    assert concat_parts(_graph(nodes, ["a", "b", "seed", "sizes"], ["e", "grad/a", "grad/b"]),
                        "e", "seed") is None


def test_a_method_without_gradients_runs_no_backward(bundle) -> None:
    x = np.random.default_rng(4).random((1, 3, 16, 16), dtype=np.float32)
    explainer = Explainer(bundle)
    eigen = explainer.explain(x, targets="top3", method="eigencam", conf=0.0)
    assert not any(key.startswith("backward") for key in explainer.runner._pool._sessions)
    whole = _whole_head(bundle).explain(x, targets="top3", method="eigencam", conf=0.0)
    np.testing.assert_allclose(eigen.heatmaps, whole.heatmaps, atol=1e-5)
    assert eigen.heatmaps.any()


def test_a_levels_backward_runs_on_a_window_around_its_seed(bundle, monkeypatch) -> None:
    explainer = Explainer(bundle)
    runner = explainer.runner
    split = runner.split
    # level 0's class head is one 3x3 convolution: its gradient reaches one position around
    # the seed; level 1's reaches the stem (twice as fine) through two strided convolutions
    # (twice as fine), level 2's the stem and level 1 (four and two times as fine)
    first, second, third = (split.window(level) for level in range(3))
    assert first is not None and first.radius == (1, 1)
    assert second is not None and second.radius == (2, 2)
    assert sorted(second.outputs.values()) == [1, 2]
    assert third is not None and set(third.scales.values()) == {1, 2}
    assert sorted(third.outputs.values()) == [1, 2, 4]
    # each gradient on its own window: level 2's own map reached one position around the
    # seed, though the stem's gradient reaches two of its positions (8 and 11 stem positions)
    assert third.radius == (2, 2)
    assert third.placed == {"gradient": ("box", 4, (7, 4, 7, 4)),
                            "gradient_f1": ("box", 2, (3, 2, 3, 2)),
                            "gradient_down2.y": ("box", 1, (1, 1, 1, 1))}
    # gradients padded with zeros where a convolution spreads them, forward tensors sliced
    assert {op for op, _, _ in third.moves.values()} == {"Pad", "Slice"}
    x = np.random.default_rng(4).random((1, 3, 16, 16), dtype=np.float32)
    features = runner.features(x)
    forward = runner.predict(features)
    shape = forward[explainer.spec.head.logits].shape  # [1, C, 336]: 16x16, 8x8, 4x4
    rng = np.random.default_rng(5)
    ran = []
    monkeypatch.setattr(Window, "run", lambda self, *a: ran.append(_run(self, *a)) or ran[-1])
    cases = {"corner": [0], "far corner": [255], "edge": [7 * 16], "inside": [5 * 16 + 9],
             "two close": [3 * 16 + 3, 4 * 16 + 6], "spread": [0, 255],
             "level 1 corner": [256], "level 1 inside": [256 + 3 * 8 + 4],
             "level 1 far edge": [256 + 8 * 8 - 2], "level 1 spread": [256, 256 + 63]}
    for case, positions in cases.items():
        seed = np.zeros(shape, np.float32)
        for position in positions:
            seed[..., position] = rng.standard_normal(CLASSES)
        expected = _whole(explainer, features, seed)
        got = [g[:, 0] for g in runner.backward(forward, seed[:, None], list(split.gradients))]
        for name, want, have in zip(split.gradients, expected, got, strict=True):
            scale = max(float(np.abs(want).max()), 1e-12)
            np.testing.assert_allclose(have, want, atol=1e-6 * scale, err_msg=f"{case}: {name}")
        assert np.abs(got[0]).max() > 0, case  # the stem's gradient (the first layer)
    # the windows ran where they pay; a seed spread over its map ran the dense backward
    assert ran == [not case.endswith("spread") for case in cases]



def test_target_columns_each_get_their_own_gradients(bundle) -> None:
    """K target columns in one call (windows at two levels, a seed spread over its map, a
    seed over two levels): each column's gradients, written in place, equal the whole head's
    for that column alone."""
    explainer = Explainer(bundle)
    runner = explainer.runner
    split = runner.split
    x = np.random.default_rng(6).random((1, 3, 16, 16), dtype=np.float32)
    features = runner.features(x)
    forward = runner.predict(features)
    shape = forward[explainer.spec.head.logits].shape  # [1, C, 336]: 16x16, 8x8, 4x4
    columns = [[0], [255], [5 * 16 + 9], [0, 255], [256], [256 + 3 * 8 + 4], [100, 330]]
    rng = np.random.default_rng(7)
    seeds = np.zeros((shape[0], len(columns), *shape[1:]), np.float32)
    for j, positions in enumerate(columns):
        for position in positions:
            seeds[:, j, :, position] = rng.standard_normal((shape[0], CLASSES))
    regions = {}
    got = runner.backward(forward, seeds, list(split.gradients), regions=regions)
    if runner._pool.workers > 1:  # the windows ran at once, on single-thread sessions
        assert {"window1:0", "window1:1"} <= set(runner._pool._sessions)
    for j in range(len(columns)):
        expected = _whole(explainer, features, seeds[:, j])
        for name, want, have in zip(split.gradients, expected, got, strict=True):
            scale = max(float(np.abs(want).max()), 1e-12)
            np.testing.assert_allclose(have[:, j], want, atol=1e-6 * scale,
                                       err_msg=f"column {j}: {name}")
            # where a window ran, its region holds all of the gradient
            region = regions[name][j]
            outside = have[:, j].copy()
            if region is not None:
                outside[region] = 0
                assert not outside.any(), (j, name)
    # windows at levels 0 and 1 (a region each); the spread seeds ran the dense backward
    assert [regions["gradient"][j] is None for j in range(len(columns))] == [
        False, False, False, True, False, False, True]


def _sparse(seeds: np.ndarray) -> SparseSeeds:
    """Dense seed rows [B, K, ...] as their nonzero elements."""
    out = SparseSeeds(seeds.shape)
    for b, k, *index in zip(*np.nonzero(seeds)):
        out.set(int(b), int(k), {tuple(int(i) for i in index): float(seeds[(b, k, *index)])})
    return out


def test_sparse_seeds_give_the_dense_seeds_gradients(bundle) -> None:
    """Seeds by their nonzero elements: the same windows, dense runs and gradients, bitwise."""
    runner = Explainer(bundle).runner
    split = runner.split
    x = np.random.default_rng(9).random((1, 3, 16, 16), dtype=np.float32)
    forward = runner.predict(runner.features(x))
    shape = forward[runner.spec.head.logits].shape
    columns = [[3], [256 + 9], [330], [0, 255], [100, 330]]  # windows; dense: small map, spread
    rng = np.random.default_rng(10)
    seeds = np.zeros((shape[0], len(columns), *shape[1:]), np.float32)
    for j, positions in enumerate(columns):
        for position in positions:
            seeds[:, j, rng.integers(0, CLASSES, 2), position] = rng.standard_normal(2)
    sparse = _sparse(seeds)
    np.testing.assert_array_equal(np.asarray(sparse), seeds)
    for j in range(len(columns)):
        column = sparse.column(j)
        np.testing.assert_array_equal(np.asarray(column), seeds[:, j])
        assert split.part_of(column, forward) == split.part_of(seeds[:, j], forward), j
    names = list(split.gradients)
    dense_regions, sparse_regions = {}, {}
    want = runner.backward(forward, seeds, names, regions=dense_regions)
    got = runner.backward(forward, sparse, names, regions=sparse_regions)
    assert sparse_regions == dense_regions
    assert [r is None for r in dense_regions["gradient"]] == [False, False, True, True, True]
    for name, a, b in zip(names, want, got, strict=True):
        np.testing.assert_array_equal(b, a, err_msg=name)


def test_a_sparse_column_cuts_a_part_as_the_dense_one() -> None:
    """``SparseColumn.part`` is ``Parts.seed_of``'s slice (a transposed concatenation too);
    ``live`` the positions of the nonzero elements along an axis; repeated terms summed."""
    from explainer.backward import Parts
    rng = np.random.default_rng(11)
    dense = np.zeros((2, 8, 6), np.float32)
    for index in [(0, 1, 2), (1, 5, 0), (1, 7, 5), (0, 4, 3)]:
        dense[index] = rng.standard_normal()
    column = SparseColumn(dense.shape, {tuple(int(i) for i in ix): float(dense[ix])
                                        for ix in zip(*np.nonzero(dense))})
    forward = {"a": np.zeros((2, 6, 5)), "b": np.zeros((2, 6, 3))}
    for parts in (Parts(1, ("a", "b"), ("ga", "gb"), (0, 2, 1), 2),  # [N, A, 6] of [N, 6, A]
                  Parts(1, ("a", "b"), ("ga", "gb"))):
        if parts.perm is None:
            forward = {"a": np.zeros((2, 5, 6)), "b": np.zeros((2, 3, 6))}
        for part in (0, 1):
            np.testing.assert_array_equal(parts.seed_of(column, forward, part),
                                          parts.seed_of(dense, forward, part))
    np.testing.assert_array_equal(column.live(1), [1, 4, 5, 7])
    seeds = SparseSeeds((1, 2, 3))
    seeds.set(0, 1, {(2,): 0.1})
    seeds.set(0, 1, {(2,): 0.2, (0,): 0.0})
    assert np.asarray(seeds)[0, 1, 2] == np.float32(0.1 + 0.2)
    assert seeds.column(1).live(1).tolist() == [2]  # a zero term is not live


def test_local_methods_weigh_a_detections_window_only(bundle, monkeypatch) -> None:
    """LayerCAM on a window's region gives the maps it gives on the whole gradients; the
    gradient arrays a window writes into are not zeroed first (they are NaN here), and
    nothing outside the windows' regions is read: not by a local method, which weighs the
    regions alone, nor by another one (Grad-CAM), which reads each region in zeros."""
    x = np.random.default_rng(8).random((1, 3, 16, 16), dtype=np.float32)
    explainer = Explainer(bundle)
    shapes = []
    real = task_runs.compute_cams
    monkeypatch.setattr(task_runs, "compute_cams",
                        lambda a, *rest: shapes.append(a.shape) or real(a, *rest))
    unset = []

    def nan_empty(shape, dtype):
        unset.append(shape)
        return np.full(shape, np.nan, dtype)

    monkeypatch.setattr(backward_module, "np", SimpleNamespace(**{**vars(np), "empty": nan_empty}))
    windowed = explainer.explain(x, targets="top4", method="layercam", conf=0.0)
    assert unset and all(s[:2] == (1, 4) for s in unset)  # every gradient array of the 4 maps
    full = {maps.cams.shape[2:] for maps in windowed.layers.values()}
    assert any(shape[2:] not in full for shape in shapes)  # weighed on windows
    spec = METHODS["layercam"]
    assert spec.local
    monkeypatch.setitem(METHODS, "layercam", dataclasses.replace(spec, local=False))
    unset.clear()
    shapes.clear()
    whole = explainer.explain(x, targets="top4", method="layercam", conf=0.0)
    assert unset and all(shape[2:] in full for shape in shapes)  # regions in zeros
    assert [d.candidate for d in windowed.detections[0]] == [
        d.candidate for d in whole.detections[0]]
    for name, maps in windowed.layers.items():
        np.testing.assert_array_equal(maps.cams, whole.layers[name].cams, err_msg=name)
    np.testing.assert_array_equal(windowed.heatmaps, whole.heatmaps)
    gradcam = explainer.explain(x, targets="top4", method="gradcam", conf=0.0)
    # a level's backward without a window writes its other levels' zero gradients itself
    monkeypatch.setitem(METHODS, "layercam", spec)
    monkeypatch.setattr(SplitHead, "window", lambda self, part: None)
    unset.clear()
    dense = explainer.explain(x, targets="top4", method="layercam", conf=0.0)
    assert unset
    for name, maps in dense.layers.items():
        np.testing.assert_array_equal(maps.cams, whole.layers[name].cams, err_msg=name)
    dense = explainer.explain(x, targets="top4", method="gradcam", conf=0.0)
    for name, maps in dense.layers.items():
        assert maps.cams.any()
        np.testing.assert_allclose(maps.cams, gradcam.layers[name].cams, rtol=1e-5,
                                   atol=1e-6 * np.abs(maps.cams).max(), err_msg=name)

_run = Window.run


def _conv(name: str, x: str, y: str, **attrs) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, f"{name}.w"], [y], name=name, **attrs)


def _part(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """A part backward: the part's seed reshaped to the forward map ``m``'s shape, then
    ``nodes`` from ``g`` (the reshaped seed) to ``out``; ``s`` a forward tensor."""
    head = [helper.make_node("Identity", ["seed"], ["part"]),
            helper.make_node("Shape", ["m"], ["shape"]),
            helper.make_node("Reshape", ["part", "shape"], ["g"])]
    model = _graph(head + nodes, ["seed", "m", "s"], ["out"])
    w = np.ones((2, 2, 3, 3), np.float32)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(w, "c.w"),
                                    onnx.numpy_helper.from_array(w, "d.w"), *inits])
    return model


@pytest.mark.parametrize(("nodes", "radius"), [
    ([_conv("c", "g", "out", kernel_shape=[3, 3], pads=[1, 1, 1, 1])], (1, 1)),
    ([_conv("c", "g", "h", kernel_shape=[3, 3], pads=[2, 1, 2, 1], dilations=[2, 1]),
      helper.make_node("Mul", ["h", "s"], ["k"]),
      _conv("d", "k", "out", kernel_shape=[3, 3], auto_pad="SAME_UPPER")], (3, 2)),
    ([helper.make_node("Sigmoid", ["s"], ["t"]), helper.make_node("Sub", ["one", "t"], ["u"]),
      helper.make_node("Mul", ["g", "u"], ["out"])], (0, 0)),
    # not a window: a strided conv, a conv that shrinks the map, a reshape, a per-position
    # constant, a forward tensor as a conv's weight
    ([_conv("c", "g", "out", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])], None),
    ([_conv("c", "g", "out", kernel_shape=[3, 3])], None),
    ([helper.make_node("Reshape", ["g", "shape"], ["out"])], None),
    ([helper.make_node("Mul", ["g", "map"], ["out"])], None),
    ([helper.make_node("Conv", ["g", "s"], ["out"], kernel_shape=[1, 1])], None),
    # the backward of a strided convolution: its result on a grid twice as fine
    ([helper.make_node("ConvTranspose", ["g", "c.w"], ["out"], kernel_shape=[3, 3],
                       strides=[2, 2], pads=[1, 1, 0, 0])], (1, 1)),
    ([helper.make_node("ConvTranspose", ["g", "c.w"], ["z"], kernel_shape=[3, 3],
                       strides=[2, 2]),
      helper.make_node("Pad", ["z", "pads"], ["zp"]),
      helper.make_node("Shape", ["s"], ["sh"]),
      helper.make_node("Slice", ["sh", "two", "four"], ["hw"]),
      helper.make_node("Add", ["hw", "starts"], ["end"]),
      helper.make_node("Slice", ["zp", "starts", "end", "axes"], ["out"])], (1, 1)),
    # not zero where the gradient is, a concatenation over space, a shape used as a value,
    # a transposed convolution of a fixed output shape
    ([helper.make_node("Add", ["g", "s"], ["out"])], None),
    ([helper.make_node("Sigmoid", ["g"], ["out"])], None),
    ([helper.make_node("Concat", ["g", "g"], ["out"], axis=2)], None),
    ([helper.make_node("Shape", ["s"], ["sh"]), helper.make_node("Mul", ["g", "sh"], ["out"])],
     None),
    ([helper.make_node("ConvTranspose", ["g", "c.w"], ["out"], kernel_shape=[3, 3],
                       strides=[2, 2], output_shape=[8, 8])], None),
])
def test_window_backward_finds_how_far_a_seed_reaches(nodes, radius) -> None:
    inits = [onnx.numpy_helper.from_array(np.float32(1), "one"),
             onnx.numpy_helper.from_array(np.ones((1, 1, 4, 4), np.float32), "map"),
             *(onnx.numpy_helper.from_array(np.array(v, np.int64), name) for name, v in (
                 ("pads", [0, 0, 0, 0, 0, 0, 1, 1]), ("two", [2]), ("four", [4]),
                 ("starts", [1, 1]), ("axes", [2, 3])))]
    model = _part(nodes, inits)
    window = window_backward(model, "part", ["out"])
    assert (None if window is None else window.radius) == radius
    if window is None:
        return
    assert window.start == "g" and window.source == "m"
    # the window's gradient is the dense backward's, for seeds near two corners
    rng = np.random.default_rng(0)
    fine = 8 * window.scales.get("s", 1)
    forward = {"m": np.zeros((1, 2, 8, 8), np.float32),
               "s": rng.standard_normal((1, 2, fine, fine)).astype(np.float32)}
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the rows' unused constants
    dense, session = (ort.InferenceSession(m.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
                      for m in (model, window.model))
    for row, column in ((1, 6), (6, 1)):
        seed = np.zeros((1, 2, 64), np.float32)
        seed[0, :, row * 8 + column] = rng.standard_normal(2)
        (want,) = dense.run(["out"], {"seed": seed, **forward})
        have = {"out": np.zeros_like(want)}
        assert window.run(session, seed, forward, have) and np.abs(want).max() > 0
        np.testing.assert_allclose(have["out"], want, rtol=1e-6, atol=1e-6)
