"""The gradient head run as its forward once and its backward per target
(:mod:`explainer.backward`): the same gradients as the whole head, for a seed in one level of a
concatenated output (the pruned backward of that level) or across levels (the whole backward)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import DETECTOR_CLASSES as CLASSES
from conftest import make_onnx_detector
from onnx import TensorProto, helper

from explainer import Explainer
from explainer.backward import SplitHead, Window, concat_parts, part_backward, window_backward
from explainer.bridge import export_onnx


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
        got = runner.backward(forward, seed, list(split.gradients))
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


def test_detections_explain_the_same_with_the_split_head(bundle) -> None:
    x = np.random.default_rng(2).random((1, 3, 16, 16), dtype=np.float32)
    split = Explainer(bundle).explain(x, targets="top5", conf=0.0)
    whole = _whole_head(bundle).explain(x, targets="top5", conf=0.0)
    assert len(split.detections[0]) == 5
    np.testing.assert_allclose(split.heatmaps, whole.heatmaps, atol=1e-5)
    for layer in split.layers:
        np.testing.assert_allclose(split.layers[layer].cams, whole.layers[layer].cams,
                                   rtol=1e-5, atol=1e-6)


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
    # the seed; levels 1 and 2 reach the stem through strided convolutions: no window
    window = split.window(0)
    assert window is not None and window.radius == (1, 1)
    assert split.window(1) is None and split.window(2) is None
    x = np.random.default_rng(4).random((1, 3, 16, 16), dtype=np.float32)
    features = runner.features(x)
    forward = runner.predict(features)
    shape = forward[explainer.spec.head.logits].shape  # [1, C, 336]; level 0: 16x16 first
    rng = np.random.default_rng(5)
    runs = []
    monkeypatch.setattr(Window, "run", lambda self, *a: runs.append(1) or _run(self, *a))
    cases = {"corner": [0], "far corner": [255], "edge": [7 * 16], "inside": [5 * 16 + 9],
             "two close": [3 * 16 + 3, 4 * 16 + 6], "spread": [0, 255]}
    for case, positions in cases.items():
        seed = np.zeros(shape, np.float32)
        for position in positions:
            seed[..., position] = rng.standard_normal(CLASSES)
        expected = _whole(explainer, features, seed)
        got = runner.backward(forward, seed, list(split.gradients))
        for name, want, have in zip(split.gradients, expected, got, strict=True):
            scale = max(float(np.abs(want).max()), 1e-12)
            np.testing.assert_allclose(have, want, atol=1e-6 * scale, err_msg=f"{case}: {name}")
        stem = got[list(split.gradients.values()).index("stem.y")]
        rows, cols = np.nonzero(np.abs(stem).sum(axis=(0, 1)))
        assert rows.size and all(
            min(abs(r - p // 16) for p in positions) <= 1 for r in rows), case
    assert len(runs) == len(cases)
    # the windows ran where they pay; the seed spread over the map ran the dense backward
    assert window.run(runner._pool.get("window:0", lambda: window.model),
                      split.part_seed(seed, forward, 0), forward,
                      [g for g in split.gradients if g not in split.backward_model(0)[1]]
                      ) is None


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
])
def test_window_backward_finds_how_far_a_seed_reaches(nodes, radius) -> None:
    inits = [onnx.numpy_helper.from_array(np.float32(1), "one"),
             onnx.numpy_helper.from_array(np.ones((1, 1, 4, 4), np.float32), "map")]
    window = window_backward(_part(nodes, inits), "part", ["out"])
    assert (None if window is None else window.radius) == radius
    if window is not None:
        assert window.start == "g" and window.source == "m"
