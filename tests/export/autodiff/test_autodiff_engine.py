"""Tests of the autodiff engine: accumulation, pruning, symbolic batch, seeds, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.autodiff import (
    GradientError,
    MissingGradientRule,
    build_gradient_graph,
    differentiable,
    gradient_path,
)
from exporters.graph import Graph

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers=(), opset: int = 20) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], name: str = "gradient"):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run([name], feeds)[0]


def _grad_ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node if n.name.startswith("grad/"))


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize(
    ("op_type", "expected"),
    [("Mul", lambda x, s: 2 * x * s), ("Add", lambda x, s: 2 * s)],
)
def test_value_used_twice_by_one_node(op_type, expected) -> None:
    model = _model(
        [helper.make_node(op_type, ["x", "x"], ["y"], name="n")],
        [("x", ["batch", 3])],
        [("y", ["batch", 3])],
    )
    grad_model = build_gradient_graph(model, "x", "y")
    x, seed = _f32(2, 3), _f32(2, 3)
    np.testing.assert_allclose(
        _run(grad_model, {"x": x, "seed": seed}), expected(x, seed), rtol=1e-6
    )


def test_residual_accumulates_both_branches() -> None:
    """y = x + tanh(x) * x: the gradient sums three uses of x."""
    nodes = [
        helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
        helper.make_node("Mul", ["t", "x"], ["m"], name="mul"),
        helper.make_node("Add", ["x", "m"], ["y"], name="residual"),
    ]
    model = _model(nodes, [("x", ["batch", 4])], [("y", ["batch", 4])])
    grad_model = build_gradient_graph(model, "x", "y")
    x, seed = _f32(3, 4), _f32(3, 4)
    t = np.tanh(x)
    expected = seed * (1 + t + x * (1 - t * t))
    np.testing.assert_allclose(_run(grad_model, {"x": x, "seed": seed}), expected, rtol=1e-5)
    assert _grad_ops(grad_model)["Add"] >= 2  # accumulation nodes


def test_gradient_of_output_itself_is_seed() -> None:
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", [2])], [("y", [2])]
    )
    grad_model = build_gradient_graph(model, "x", "x")
    seed = _f32(2)
    np.testing.assert_array_equal(_run(grad_model, {"x": _f32(2), "seed": seed}), seed)


# --------------------------------------------------------------------------- pruning


def _conv_head(extra_nodes=()) -> onnx.ModelProto:
    """A -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits."""
    nodes = [
        helper.make_node(
            "Conv", ["A", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "FW", "FB"], ["logits"], name="fc", transB=1),
        *extra_nodes,
    ]
    inits = [
        ("W", _f32(8, 4, 3, 3)),
        ("B", _f32(8)),
        ("FW", _f32(5, 8)),
        ("FB", _f32(5)),
        ("unused", _f32(7)),
    ]
    return _model(nodes, [("A", ["batch", 4, 7, 7])], [("logits", ["batch", 5])], inits)


def test_pruning_keeps_only_needed_nodes() -> None:
    dead = helper.make_node("Sigmoid", ["r"], ["dead"], name="dead_branch")
    grad_model = build_gradient_graph(_conv_head([dead]), "A", "logits")
    graph = grad_model.graph
    forward = Counter(n.op_type for n in graph.node if not n.name.startswith("grad/"))
    assert forward == Counter(["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"])
    # one node per VJP: Gemm, Reshape, Div and a Mul by ones (the pooled gradient spread
    # over the map), Greater+Where, ConvTranspose
    assert _grad_ops(grad_model) == Counter(
        ["Gemm", "Reshape", "Div", "ConstantOfShape", "Mul", "Greater", "Where", "ConvTranspose"]
    )
    used = {i for n in graph.node for i in n.input}
    assert {i.name for i in graph.initializer} <= used
    assert "unused" not in {i.name for i in graph.initializer}
    # no gradient w.r.t. the weights: they are only read by Conv/ConvTranspose/Gemm
    for node in graph.node:
        if "W" in node.input or "FW" in node.input:
            assert node.op_type in {"Conv", "ConvTranspose", "Gemm"}
    assert [i.name for i in graph.input] == ["A", "seed"]
    assert [o.name for o in graph.output] == ["logits", "gradient"]


def test_seed_and_gradient_types_keep_symbolic_batch() -> None:
    grad_model = build_gradient_graph(_conv_head(), "A", "logits", seed_name="s", gradient_name="g")
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*grad_model.graph.input, *grad_model.graph.output]
    }
    assert dims["s"] == ["batch", 5]
    assert dims["g"] == ["batch", 4, 7, 7]


def test_other_graph_inputs_are_constants() -> None:
    nodes = [
        helper.make_node("Mul", ["A", "K"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "K"], ["y"], name="add"),
    ]
    model = _model(nodes, [("A", ["batch", 3]), ("K", [3])], [("y", ["batch", 3])])
    grad_model = build_gradient_graph(model, "A", "y")
    assert [i.name for i in grad_model.graph.input] == ["A", "K", "seed"]
    a, k, seed = _f32(2, 3), _f32(3), _f32(2, 3)
    np.testing.assert_allclose(
        _run(grad_model, {"A": a, "K": k, "seed": seed}), seed * k, rtol=1e-6
    )


# --------------------------------------------------------------------------- errors


def test_missing_rule_names_op_and_node() -> None:
    nodes = [
        helper.make_node("Relu", ["A"], ["r"], name="relu"),
        helper.make_node("LRN", ["r"], ["n"], name="features.lrn", size=3),
        helper.make_node("ReduceSum", ["n"], ["y"], name="sum", keepdims=0),
    ]
    model = _model(nodes, [("A", [1, 4, 3, 3])], [("y", [])])
    graph = Graph(model, infer=True)
    path = gradient_path(graph, "A", "y")[0]
    assert [graph.nodes[i].name for i in path if not differentiable(graph.nodes[i])] == [
        "features.lrn"
    ]
    with pytest.raises(MissingGradientRule, match=r"'LRN'.*'features\.lrn'.*after this node"):
        build_gradient_graph(model, "A", "y")
    # differentiating from after the unsupported node works
    assert [graph.nodes[i].name for i in gradient_path(graph, "n", "y")[0]] == ["sum"]
    build_gradient_graph(model, "n", "y")


def test_path_ignores_integer_side_branches() -> None:
    """Shape/Gather on shapes depend on A but carry no gradient: not on the path."""
    nodes = [
        helper.make_node("Shape", ["A"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["b"], name="batch_size"),
        helper.make_node("Concat", ["b", "minus1"], ["t"], name="target", axis=0),
        helper.make_node("Reshape", ["A", "t"], ["y"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    graph = Graph(model, infer=True)
    assert [graph.nodes[i].name for i in gradient_path(graph, "A", "y")[0]] == ["flatten"]
    grad_model = build_gradient_graph(model, "A", "y")
    seed = _f32(2, 6)
    np.testing.assert_array_equal(
        _run(grad_model, {"A": _f32(2, 2, 3), "seed": seed}), seed.reshape(2, 2, 3)
    )


def test_errors() -> None:
    model = _conv_head()
    with pytest.raises(GradientError, match="not a value"):
        build_gradient_graph(model, "nope", "logits")
    with pytest.raises(GradientError, match="does not depend"):
        build_gradient_graph(model, "FW", "r")
    with pytest.raises(GradientError, match="already used"):
        build_gradient_graph(model, "A", "logits", seed_name="W")
    old = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", [2])], [("y", [2])], opset=12)
    with pytest.raises(GradientError, match="opset 12"):
        build_gradient_graph(old, "x", "y")
    pool = _model(
        [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2])],
        [("x", [1, 1, 4, 4])],
        [("y", [1, 1, 3, 3])],
        opset=15,
    )
    with pytest.raises(GradientError, match="opset 16"):
        build_gradient_graph(pool, "x", "y")


# --------------------------------------------------------------------------- vs torch


def _torch_head(torch):
    nn = torch.nn
    torch.manual_seed(0)
    head = nn.Sequential(
        nn.Conv2d(8, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()
    bn = head[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return head


def _onnx_head(head) -> onnx.ModelProto:
    """The same head written with onnx.helper (Conv, BN, Relu, Conv, Relu, GAP, Flatten, Gemm)."""
    conv1, bn, _, conv2, _, _, _, fc = head

    def arr(t):
        return t.detach().numpy()

    nodes = [
        helper.make_node(
            "Conv",
            ["A", "w1", "b1"],
            ["c1"],
            name="conv1",
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            kernel_shape=[3, 3],
        ),
        helper.make_node(
            "BatchNormalization",
            ["c1", "g", "beta", "mu", "var"],
            ["bn"],
            name="bn",
            epsilon=bn.eps,
        ),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], group=3
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc", transB=1),
    ]
    inits = [
        ("w1", arr(conv1.weight)),
        ("b1", arr(conv1.bias)),
        ("g", arr(bn.weight)),
        ("beta", arr(bn.bias)),
        ("mu", arr(bn.running_mean)),
        ("var", arr(bn.running_var)),
        ("w2", arr(conv2.weight)),
        ("b2", arr(conv2.bias)),
        ("fw", arr(fc.weight)),
        ("fb", arr(fc.bias)),
    ]
    return _model(nodes, [("A", ["batch", 8, 9, 9])], [("logits", ["batch", 4])], inits)


@pytest.mark.torch
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_conv_head_matches_torch_autograd_at_any_batch(batch: int) -> None:
    torch = pytest.importorskip("torch")
    head = _torch_head(torch)
    grad_model = build_gradient_graph(_onnx_head(head), "A", "logits")
    a = _f32(batch, 8, 9, 9)
    seed = np.eye(4, dtype=np.float32)[np.arange(batch) % 4]  # one-hot rows
    got = _run(grad_model, {"A": a, "seed": seed})
    ta = torch.from_numpy(a).requires_grad_(True)
    (expected,) = torch.autograd.grad(head(ta), ta, torch.from_numpy(seed))
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
def test_contrastive_seed_gives_seed_weighted_gradient() -> None:
    torch = pytest.importorskip("torch")
    head = _torch_head(torch)
    grad_model = build_gradient_graph(_onnx_head(head), "A", "logits")
    a = _f32(2, 8, 9, 9)
    seed = np.array([[1, -1, 0, 0], [0.5, 0, 0, -2]], np.float32)  # not one-hot
    got = _run(grad_model, {"A": a, "seed": seed})
    ta = torch.from_numpy(a).requires_grad_(True)
    (expected,) = torch.autograd.grad(head(ta), ta, torch.from_numpy(seed))
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    # linearity in the seed: rows combine the one-hot gradients
    basis = [
        _run(grad_model, {"A": a, "seed": np.tile(e, (2, 1))}) for e in np.eye(4, dtype=np.float32)
    ]
    combined = sum(seed[:, k, None, None, None] * basis[k] for k in range(4))
    np.testing.assert_allclose(got, combined, rtol=1e-4, atol=1e-5)


def test_gather_with_runtime_indices_sums_repeats() -> None:
    """Indices that are a graph input (as convnext's as_strided Gather): scatter-add."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["A", "idx"], ["y"], name="gather", axis=1)],
        "g",
        [
            helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", 5]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    grad_model = build_gradient_graph(model, "A", "y")
    a, idx, seed = _f32(3, 5), np.array([4, 0, -1, 4, 2]), _f32(3, 5)
    expected = np.zeros_like(a)
    np.add.at(expected, (slice(None), idx % 5), seed)
    got = _run(grad_model, {"A": a, "idx": idx, "seed": seed})
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.torch
def test_kink_conventions_match_torch() -> None:
    """At ties and bounds the gradient is the one torch.autograd gives."""
    torch = pytest.importorskip("torch")
    nodes = [
        helper.make_node("Max", ["x", "z"], ["m"], name="max"),
        helper.make_node("Clip", ["x", "lo", "hi"], ["c"], name="relu6"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Sum", ["m", "c", "r"], ["y"], name="sum"),
    ]
    model = _model(
        nodes,
        [("x", [6])],
        [("y", [6])],
        [("z", np.zeros(6)), ("lo", np.array(0.0)), ("hi", np.array(6.0))],
    )
    x = np.array([-1.0, 0.0, 0.5, 6.0, 7.0, 0.0], np.float32)
    seed = np.arange(1, 7, dtype=np.float32)
    got = _run(build_gradient_graph(model, "x", "y"), {"x": x, "seed": seed})
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = torch.maximum(tx, torch.zeros(6)) + torch.nn.functional.relu6(tx) + torch.relu(tx)
    (expected,) = torch.autograd.grad(ty, tx, torch.from_numpy(seed))
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)


def test_several_wrt_in_one_backward_pass() -> None:
    """Gradients w.r.t. the input and an intermediate tensor (a layer sweep) equal the
    gradients of two separate graphs."""
    nodes = [
        helper.make_node("Relu", ["A"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "w"], ["m"], name="mul"),
        helper.make_node("Tanh", ["m"], ["t"], name="tanh"),
        helper.make_node("ReduceSum", ["t"], ["y"], name="sum", keepdims=0),
    ]
    model = _model(nodes, [("A", ["batch", 4, 3])], [("y", [])], [("w", _f32(4, 3))])
    both = build_gradient_graph(model, ["A", "m"], "y", gradient_name=["dA", "dm"])
    feeds = {"A": _f32(2, 4, 3), "seed": np.array(0.7, np.float32)}
    session = ort.InferenceSession(both.SerializeToString(), providers=["CPUExecutionProvider"])
    d_a, d_m = session.run(["dA", "dm"], feeds)
    np.testing.assert_allclose(d_a, _run(build_gradient_graph(model, "A", "y"), feeds), rtol=1e-6)
    np.testing.assert_allclose(d_m, _run(build_gradient_graph(model, "m", "y"), feeds), rtol=1e-6)
    relus = Counter(n.op_type for n in both.graph.node)["Relu"]
    assert relus == 1  # one forward, one backward pass


def test_guided_relu_passes_positive_gradients_where_the_input_was_positive() -> None:
    from exporters.autodiff import GUIDED_RULES

    nodes = [helper.make_node("Relu", ["A"], ["y"], name="relu")]
    model = _model(nodes, [("A", [2, 5])], [("y", [2, 5])])
    guided = build_gradient_graph(model, "A", "y", rules=GUIDED_RULES)
    x = np.array([[1, -1, 2, -2, 3], [0.5, 0.5, -0.5, 4, -4]], np.float32)
    seed = np.array([[1, 1, -1, -1, 2], [-3, 3, 3, 1, -1]], np.float32)
    expected = np.where((x > 0) & (seed > 0), seed, 0)
    np.testing.assert_array_equal(_run(guided, {"A": x, "seed": seed}), expected)
    plain = _run(build_gradient_graph(model, "A", "y"), {"A": x, "seed": seed})
    np.testing.assert_array_equal(plain, np.where(x > 0, seed, 0))
