"""LSTM/GRU gradient rules against torch autograd (a CRNN text-recognizer head exported by
``torch.onnx.export``) and the cases they refuse. Finite-difference rows of the rules are in
``tests/export/autodiff/test_autodiff_rules.py``."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from exporters.autodiff import GradientError, build_gradient_graph

RNN_OPS = ("LSTM", "GRU")


def _crnn(torch: Any, rnn: str, batch_first_output: bool) -> Any:
    """conv -> [T=W, N, C*H] sequence -> bidirectional LSTM/GRU -> Linear -> log_softmax over V,
    as CTC logits ``[T, N, V]`` (or ``[N, T, V]``)."""
    nn = torch.nn

    class CRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, padding=1)
            self.rnn = getattr(nn, rnn)(6, 4, bidirectional=True)
            self.fc = nn.Linear(8, 5)

        def features(self, image: Any) -> Any:
            f = torch.relu(self.conv(image))
            n, c, h, w = f.shape
            return f.reshape(n, c * h, w).permute(2, 0, 1)  # [T, N, C*H]

        def head(self, seq: Any) -> Any:
            y, _ = self.rnn(seq)
            logits = torch.log_softmax(self.fc(y), dim=-1)
            return logits.permute(1, 0, 2) if batch_first_output else logits

        def forward(self, image: Any) -> Any:
            return self.head(self.features(image))

    torch.manual_seed(0)
    return CRNN().eval()


def _export(torch: Any, model: Any, image: Any, dynamo: bool) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(model, (image,), dynamo=True, input_names=["image"],
                                     output_names=["logits"], verbose=False).model_proto
        f = io.BytesIO()
        torch.onnx.export(model, (image,), f, dynamo=False, input_names=["image"],
                          output_names=["logits"], opset_version=17,
                          dynamic_axes={"image": {0: "n", 3: "w"}})
        return onnx.load_from_string(f.getvalue())


def _check_against_torch(torch: Any, model: Any, onnx_model: onnx.ModelProto, op_type: str,
                         sizes: list[tuple[int, int]]) -> None:
    """The gradient of ``sum(seed * logits)`` w.r.t. the recurrent node's input ``X`` equals
    torch's w.r.t. the sequence the head reads, at each (batch, width)."""
    (rnn,) = [n for n in onnx_model.graph.node if n.op_type in RNN_OPS]
    assert rnn.op_type == op_type
    grad_model = build_gradient_graph(onnx_model, rnn.input[0], onnx_model.graph.output[0].name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(grad_model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, width in sizes:
        image = torch.from_numpy(rng.standard_normal((batch, 1, 2, width)).astype(np.float32))
        seq = model.features(image).detach().requires_grad_(True)
        out = model.head(seq)
        seed = torch.from_numpy(rng.standard_normal(tuple(out.shape)).astype(np.float32))
        (expected,) = torch.autograd.grad(out, seq, seed)
        (got,) = session.run(["gradient"], {"image": image.numpy(), "seed": seed.numpy()})
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize(("op_type", "batch_first_output"), [("LSTM", False), ("GRU", True)])
def test_crnn_gradient_matches_torch(op_type: str, batch_first_output: bool) -> None:
    """The default (dynamo) exporter writes one bidirectional ONNX LSTM/GRU node (GRU with
    ``linear_before_reset=1``, torch's form)."""
    torch = pytest.importorskip("torch")
    model = _crnn(torch, op_type, batch_first_output)
    onnx_model = _export(torch, model, torch.zeros(2, 1, 2, 6), dynamo=True)
    _check_against_torch(torch, model, onnx_model, op_type, [(2, 6)])


@pytest.mark.torch
@pytest.mark.parametrize("op_type", RNN_OPS)
def test_crnn_gradient_with_symbolic_sequence_length(op_type: str) -> None:
    """One gradient graph for every image width (sequence length) and batch size.

    Exported with the TorchScript exporter (``dynamo=False``): the dynamo exporter keeps the
    width symbolic up to the LSTM/GRU node but writes the example's sequence length into the
    Reshape that merges the two directions, so its model runs at the example width only.
    """
    torch = pytest.importorskip("torch")
    model = _crnn(torch, op_type, batch_first_output=False)
    onnx_model = _export(torch, model, torch.zeros(2, 1, 2, 6), dynamo=False)
    x_shape = [d.dim_param or d.dim_value
               for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
    assert x_shape == ["n", 1, 2, "w"]
    _check_against_torch(torch, model, onnx_model, op_type, [(2, 6), (3, 9), (1, 4)])


# --------------------------------------------------------------------------- refusals


def _rnn_model(op_type: str, inputs: list[str], graph_inputs: tuple[str, ...] = (),
               **attrs: Any) -> onnx.ModelProto:
    """One LSTM/GRU node ``rnn`` on ``x [T=4, N=2, I=3]`` with H=2; its other inputs (W, R, B,
    P, lens) are initializers unless listed in ``graph_inputs``."""
    gates = 4 if op_type == "LSTM" else 3
    rng = np.random.default_rng(0)
    values = {
        "x": rng.standard_normal((4, 2, 3)).astype(np.float32),
        "w": rng.standard_normal((1, gates * 2, 3)).astype(np.float32),
        "r": rng.standard_normal((1, gates * 2, 2)).astype(np.float32),
        "b": rng.standard_normal((1, gates * 4)).astype(np.float32),
        "p": rng.standard_normal((1, 6)).astype(np.float32),
        "lens": np.array([4, 2], np.int32),
    }
    info = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype),
                                          values[n].shape) for n in ("x", *graph_inputs)]
    inits = [numpy_helper.from_array(values[n], n) for n in inputs
             if n and n != "x" and n not in graph_inputs]
    node = helper.make_node(op_type, inputs, ["y"], name="rnn", hidden_size=2, **attrs)
    graph = helper.make_graph([node], "g", info, [helper.make_value_info("y", onnx.TypeProto())],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model


RNN_INPUTS = ["x", "w", "r", "b"]


@pytest.mark.parametrize(("op_type", "inputs", "attrs", "graph_inputs", "match"), [
    ("LSTM", [*RNN_INPUTS, "", "", "", "p"], {}, (), "peepholes"),
    ("LSTM", RNN_INPUTS, {"clip": 3.0}, (), "'clip'"),
    ("LSTM", RNN_INPUTS, {"input_forget": 1}, (), "'input_forget'"),
    ("GRU", RNN_INPUTS, {"activations": ["Sigmoid", "Relu"]}, (), "'activations'"),
    ("LSTM", [*RNN_INPUTS, "lens"], {}, (), "sequence_lens"),  # lengths 4 and 2
    ("GRU", [*RNN_INPUTS, "lens"], {}, ("lens",), "sequence_lens"),  # given at run time
    ("LSTM", RNN_INPUTS, {}, ("w",), "W"),  # W depends on wrt below
], ids=["peepholes", "clip", "input-forget", "activations", "short-sequence-lens",
        "runtime-sequence-lens", "weights"])
def test_unsupported_raises_gradient_error(op_type: str, inputs: list[str], attrs: dict,
                                           graph_inputs: tuple[str, ...], match: str) -> None:
    model = _rnn_model(op_type, inputs, graph_inputs, **attrs)
    if match == "W":  # make W depend on x: x -> ReduceSum -> + w
        g = model.graph
        g.node.insert(0, helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0))
        g.node.insert(1, helper.make_node("Add", ["w", "s"], ["w2"], name="shift"))
        g.node[2].input[1] = "w2"
    with pytest.raises(GradientError, match=rf"'rnn' \({op_type}\).*{match}"):
        build_gradient_graph(model, "x", "y")


def test_default_activations_given_explicitly_are_accepted() -> None:
    model = _rnn_model("LSTM", RNN_INPUTS, activations=["Sigmoid", "Tanh", "Tanh"])
    assert build_gradient_graph(model, "x", "y").graph.output[-1].name == "gradient"
