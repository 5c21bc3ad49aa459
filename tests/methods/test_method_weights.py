"""Every CAM method's numpy weights on small arrays whose answer is worked out by hand.

Torch-free: the methods that run the model again get a fake :class:`ModelAccess` whose scores
are simple closed forms. ``test_every_cam_method_has_a_hand_case`` fails for a registered
method with no case here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from explainer.methods import METHODS, CamContext, compute_cams, eigen
from explainer.methods.core import Weights, weighted_sum

#: methods with a hand-worked case below
COVERED: set[str] = set()


def covers(*names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Record that the decorated test checks ``names`` by hand."""

    def mark(test: Callable[..., None]) -> Callable[..., None]:
        COVERED.update(names)
        return test

    return mark


def weights_of(method: str, activation: np.ndarray, gradient: np.ndarray | None = None,
               class_ids: np.ndarray | None = None, model: object = None) -> np.ndarray | Weights:
    """The registered numpy weights of ``method`` on float32 copies of the arrays."""
    a = np.asarray(activation, np.float32)
    g = np.zeros_like(a) if gradient is None else np.asarray(gradient, np.float32)
    weigh = METHODS[method].weights
    assert weigh is not None
    return weigh(CamContext(a, g, class_ids, model))


def test_every_cam_method_has_a_hand_case():
    cam_methods = {m for m, spec in METHODS.items() if spec.kind != "pixel"}
    assert cam_methods - COVERED == set(), "add a hand-worked case for each CAM method"


# --- closed-form gradient methods ----------------------------------------------------------------
@covers("gradcam", "counterfactual")
def test_gradcam_weights_are_the_mean_gradient():
    a = np.ones((1, 3, 2, 2))
    g = np.stack([np.full((2, 2), 0.5), [[1.0, 2.0], [3.0, 4.0]], np.zeros((2, 2))])[None]
    np.testing.assert_allclose(weights_of("gradcam", a, g), [[0.5, 2.5, 0.0]])
    np.testing.assert_allclose(weights_of("counterfactual", a, g), [[-0.5, -2.5, 0.0]])
    # the pipeline: ReLU(sum_k w_k A^k) = ReLU(0.5 + 2.5 + 0) on every position
    np.testing.assert_allclose(compute_cams(a.astype(np.float32), g.astype(np.float32)),
                               np.full((1, 2, 2), 3.0))
    assert not compute_cams(a.astype(np.float32), g.astype(np.float32), "counterfactual").any()


@covers("gradcam++")
def test_gradcam_plusplus_alpha_by_hand():
    # channel 0: A = 1 (S = 4), g = 0.5: alpha = g^2 / (2 g^2 + S g^3) = 0.25 / (0.5 + 0.5)
    #   = 0.25, w = 4 * 0.25 * 0.5 = 0.5
    # channel 1: g = -1: ReLU(g) = 0, w = 0
    # channel 2: A = -1 (S = -4), g = 0.5: 2 + S g = 0, alpha taken as 0, w = 0
    # channel 3: A = [[2, 0], [0, 0]] (S = 2), g = [[1, 0], [0, 0]]: alpha = 1 / (2 + 2) at
    #   the one nonzero gradient, w = 0.25
    a = np.stack([np.ones((2, 2)), np.ones((2, 2)), -np.ones((2, 2)), [[2, 0], [0, 0]]])[None]
    g = np.stack([np.full((2, 2), 0.5), -np.ones((2, 2)), np.full((2, 2), 0.5),
                  [[1, 0], [0, 0]]])[None]
    np.testing.assert_allclose(weights_of("gradcam++", a, g), [[0.5, 0.0, 0.0, 0.25]],
                               atol=1e-7)


@covers("xgradcam")
def test_xgradcam_weights_and_the_zero_activation_case():
    a = np.stack([[[1.0, 0.0], [0.0, 3.0]], np.zeros((2, 2))])[None]
    g = np.stack([[[2.0, 5.0], [7.0, 1.0]], np.ones((2, 2))])[None]
    # channel 0: (1 * 2 + 3 * 1) / (1 + 3) = 1.25; channel 1: 0 / 0 -> 0
    np.testing.assert_allclose(weights_of("xgradcam", a, g), [[1.25, 0.0]])


@covers("hirescam", "gradcam-elementwise", "layercam")
def test_per_position_weights_by_hand():
    a = np.array([[[[1.0, 1.0]], [[-1.0, -1.0]]]])  # [1, 2, 1, 2]
    g = np.array([[[[1.0, -1.0]], [[-2.0, 3.0]]]])
    np.testing.assert_array_equal(weights_of("hirescam", a, g), g)
    # g where g * A > 0: (1 * 1) and (-2 * -1) only
    np.testing.assert_array_equal(weights_of("gradcam-elementwise", a, g),
                                  [[[[1.0, 0.0]], [[-2.0, 0.0]]]])
    np.testing.assert_array_equal(weights_of("layercam", a, g), [[[[1.0, 0.0]], [[0.0, 3.0]]]])
    # maps: HiResCAM ReLU(1 + 2, -1 - 3) = [3, 0]; element-wise ReLU(1 + 2, 0) = [3, 0];
    # LayerCAM ReLU(1 * 1 + 0, 0 - 3) = [1, 0]
    f32 = (a.astype(np.float32), g.astype(np.float32))
    np.testing.assert_allclose(compute_cams(*f32, "hirescam"), [[[3.0, 0.0]]])
    np.testing.assert_allclose(compute_cams(*f32, "gradcam-elementwise"), [[[3.0, 0.0]]])
    np.testing.assert_allclose(compute_cams(*f32, "layercam"), [[[1.0, 0.0]]])


# --- eigen methods -------------------------------------------------------------------------------
def _rank_one(u: list[float], p: list[float], offsets: list[float]) -> np.ndarray:
    """[1, C, 1, P] activation A^k = u_k p + offset_k: rank 1 once centered per channel."""
    return (np.outer(u, p) + np.asarray(offsets)[:, None])[None, :, None, :]


def _projection(u: list[float], p: list[float]) -> np.ndarray:
    """The sign-corrected first-component projection of a rank-1 map: (p - mean p) |u|,
    negated when its most negative value outweighs its largest."""
    q = (np.asarray(p) - np.mean(p)) * np.linalg.norm(u)
    return -q if abs(q.min()) > abs(q.max()) else q


@covers("eigencam")
@pytest.mark.parametrize("p", [[0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, -5.0]])
def test_eigencam_of_a_rank_one_activation(p):
    u = [3.0, 4.0]  # |u| = 5
    a = _rank_one(u, p, [1.0, -2.0])
    weights = weights_of("eigencam", a)
    assert isinstance(weights, Weights)
    # the channel weights are the principal direction u / |u|, up to sign
    direction = weights.weights[0] / np.linalg.norm(weights.weights[0])
    assert min(np.abs(direction - [0.6, 0.8]).max(), np.abs(direction + [0.6, 0.8]).max()) < 1e-6
    # the map is ReLU of the projection, the peak (+-5 at the last position) made positive:
    # (p - mean p) * 5 = [-6.25, -6.25, -6.25, 18.75] for either sign of p
    expected = np.maximum(_projection(u, p), 0)
    np.testing.assert_allclose(expected, [0, 0, 0, 18.75])
    np.testing.assert_allclose(weighted_sum(a.astype(np.float32), weights)[0, 0], expected,
                               atol=1e-5)


@covers("eigengradcam")
def test_eigengradcam_is_eigencam_of_gradient_times_activation():
    u, p = [1.0, 2.0, 2.0], [4.0, 0.0, 0.0, 0.0]  # |u| = 3
    a = np.full((1, 3, 1, 4), 2.0)
    g = _rank_one(u, p, [0.0, 0.0, 0.0])  # g * A = 2 u p: rank 1, centered (p - 1) 2 u
    weights = weights_of("eigengradcam", a, g)
    expected = np.maximum(2 * _projection(u, p), 0)  # 2 * 3 * [3, -1, -1, -1] -> [18, 0, 0, 0]
    np.testing.assert_allclose(expected, [18, 0, 0, 0])
    np.testing.assert_allclose(weighted_sum(a.astype(np.float32), weights)[0, 0], expected,
                               atol=1e-5)


def _spectrum_matrix(positions: int, channels: int, ratio: float, seed: int = 0) -> np.ndarray:
    """[positions, channels] matrix whose Gram eigenvalues are 1, ``ratio`` and the rest below
    0.8 ``ratio`` (random singular vectors)."""
    rng = np.random.default_rng(seed)
    k = min(positions, channels)
    values = np.r_[1.0, ratio, ratio * rng.uniform(0, 0.8, k - 2)]
    u = np.linalg.qr(rng.standard_normal((positions, k)))[0]
    v = np.linalg.qr(rng.standard_normal((channels, k)))[0]
    return (u * np.sqrt(values)) @ v.T


def _top_eigenvectors(matrix: np.ndarray, count: int = 1) -> np.ndarray:
    """[C, count] eigenvectors of ``X^T X`` of the largest eigenvalues (LAPACK: tests only)."""
    return np.linalg.eigh(matrix.T @ matrix)[1][:, -count:]


@pytest.mark.parametrize(("shape", "ratio", "path"), [
    # large gap: power iteration with X itself converges (P > C, P <= C)
    ((300, 128), 0.3, ["converged"]),
    ((128, 300), 0.3, ["converged"]),
    # too slow with X: power iteration on the Gram matrix ([C, C], [P, P]) continues
    ((300, 128), 0.8, ["gave up", "converged"]),
    ((128, 300), 0.8, ["gave up", "converged"]),
    # small gap: both give up, repeated squaring of the Gram matrix
    ((300, 128), 0.999, ["gave up", "gave up", "squared"]),
    ((40, 200), 0.999, ["gave up", "gave up", "squared"]),
    ((200, 6), 0.5, ["squared"]),  # small: squaring only
])
def test_first_component_is_the_top_eigenvector(monkeypatch, shape, ratio, path):
    taken: list[str] = []
    power_iteration, squared = eigen._power_iteration, eigen._squared_eigenvector

    def power_spy(*args):
        vector, converged = power_iteration(*args)
        taken.append("converged" if converged else "gave up")
        return vector, converged

    def squared_spy(gram):
        taken.append("squared")
        return squared(gram)

    monkeypatch.setattr(eigen, "_power_iteration", power_spy)
    monkeypatch.setattr(eigen, "_squared_eigenvector", squared_spy)
    matrix = _spectrum_matrix(*shape, ratio)
    v = eigen.first_component(matrix)
    expected = _top_eigenvectors(matrix)[:, 0]
    assert min(np.abs(v - expected).max(), np.abs(v + expected).max()) < 1e-10
    assert taken == path


@pytest.mark.parametrize("shape", [(300, 128), (128, 300), (30, 20)])
def test_first_component_with_equal_top_eigenvalues_is_in_their_eigenspace(shape):
    matrix = _spectrum_matrix(*shape, 1.0)
    v = eigen.first_component(matrix)
    top = _top_eigenvectors(matrix, 2)
    assert np.isfinite(v).all() and abs(np.linalg.norm(v) - 1) < 1e-12
    assert np.linalg.norm(v - top @ (top.T @ v)) < 1e-9


def test_first_component_of_degenerate_matrices():
    rng = np.random.default_rng(0)
    u, w = rng.standard_normal(300), rng.standard_normal(128)
    for matrix in (np.outer(u, w), np.outer(w, u)):  # rank 1: the row direction
        direction = matrix[0] / np.linalg.norm(matrix[0])
        v = eigen.first_component(matrix)
        assert min(np.abs(v - direction).max(), np.abs(v + direction).max()) < 1e-12
    for shape in [(300, 128), (128, 300), (1, 5), (5, 1), (1, 1)]:
        np.testing.assert_array_equal(eigen.first_component(np.zeros(shape)), np.zeros(shape[1]))
    row = rng.standard_normal((1, 5))  # P = 1: the row itself
    v = eigen.first_component(row)
    np.testing.assert_allclose(np.abs(v), np.abs(row[0]) / np.linalg.norm(row[0]), rtol=1e-12)
    np.testing.assert_allclose(np.abs(eigen.first_component(rng.standard_normal((7, 1)))), [1.0])


# --- methods that run the model again --------------------------------------------------------
#: a linear head on global average pooling: logits = W mean_ij(A) + b, 3 classes x 2 channels
HEAD_W = np.array([[3.0, 1.0], [-1.0, 2.0], [0.5, 0.5]], np.float32)
HEAD_B = np.array([0.0, 10.0, -1.0], np.float32)


def _pooling_linear_head() -> onnx.ModelProto:
    """activation [N, 2, h, w] -> GlobalAveragePool -> Flatten -> Gemm(W, b) -> logits."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["act"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("act", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(HEAD_W, "W"), numpy_helper.from_array(HEAD_B, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class FakeModel:
    """A :class:`~explainer.methods.core.ModelAccess` with closed-form scores: the head is
    :func:`_pooling_linear_head`; the whole model scores a masked input by the mask's value at
    the top-left pixel times the class id plus one."""

    def __init__(self, inputs: np.ndarray, size: tuple[int, int]) -> None:
        self.inputs = inputs
        self.size = size
        self.calls: list[tuple[str, np.ndarray]] = []

    def head_graph(self) -> tuple[onnx.ModelProto, str, str, str]:
        return _pooling_linear_head(), "act", "logits", "NCHW"

    def activation_scores(self, rows: np.ndarray, activations: np.ndarray,
                          class_ids: np.ndarray) -> np.ndarray:
        self.calls.append(("activation", rows))
        logits = activations.mean(axis=(2, 3)) @ HEAD_W.T + HEAD_B
        return logits[np.arange(len(rows)), class_ids]

    def input_scores(self, rows: np.ndarray, masks: np.ndarray,
                     class_ids: np.ndarray) -> np.ndarray:
        self.calls.append(("input", rows))
        return masks[:, 0, 0] * (np.asarray(class_ids) + 1)

    def input_size(self) -> tuple[int, int]:
        return self.size


@covers("cam")
def test_cam_weights_are_the_classifier_row():
    a = np.ones((2, 2, 3, 3))
    model = FakeModel(np.zeros((2, 3, 3, 3), np.float32), (3, 3))
    weights = weights_of("cam", a, class_ids=np.array([1, 0]), model=model)
    np.testing.assert_array_equal(weights, [[-1.0, 2.0], [3.0, 1.0]])


@covers("ablationcam")
def test_ablationcam_weights_are_relative_score_drops():
    # class 0 of the head: y = 3 mean(A^0) + 1 mean(A^1) = 3 * 1 + 1 * 2 = 5;
    # zeroing channel 0 leaves 2, channel 1 leaves 3: w = [(5 - 2) / 5, (5 - 3) / 5]
    a = np.stack([np.ones((2, 2)), np.full((2, 2), 2.0)])[None]
    model = FakeModel(np.zeros((1, 3, 2, 2), np.float32), (2, 2))
    weights = weights_of("ablationcam", a, class_ids=np.array([0]), model=model)
    np.testing.assert_allclose(weights, [[0.6, 0.4]], rtol=1e-6)
    assert [kind for kind, _ in model.calls] == ["activation", "activation"]


@covers("scorecam")
def test_scorecam_weights_are_the_softmax_of_masked_scores():
    # input size = activation size, so the masks are the min-max scaled channels; their
    # top-left values are 1 (the channel's max), 0 (its min) and 0.5; the fake model scores
    # each masked input as that value times (class id + 1) = 2
    a = np.stack([[[4.0, 0.0], [0.0, 2.0]], [[-1.0, 3.0], [3.0, 3.0]], [[1.0, 0.0], [2.0, 0.0]]])
    model = FakeModel(np.zeros((1, 3, 2, 2), np.float32), (2, 2))
    weights = weights_of("scorecam", a[None], class_ids=np.array([1]), model=model)
    scores = np.array([1.0, 0.0, 0.5]) * 2
    np.testing.assert_allclose(weights, [np.exp(scores) / np.exp(scores).sum()], rtol=1e-6)
    assert [kind for kind, _ in model.calls] == ["input"]
    np.testing.assert_array_equal(model.calls[0][1], [0, 0, 0])  # image 0, one row a channel
