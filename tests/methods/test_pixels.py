"""Pixel-space methods: Guided Backpropagation and Guided Grad-CAM against PyTorch (ReLU
backward hooks, the reference implementation's way), and the error without the graph."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
from torch import nn  # noqa: E402

from explainer import Bundle, Explainer, MethodError  # noqa: E402
from exporters import export_torch  # noqa: E402

pytestmark = pytest.mark.torch


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2),
            nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _guided_reference(net, x, class_ids):
    """Guided Backpropagation by autograd: every ReLU's backward hook keeps positive gradients."""
    hooks = [m.register_full_backward_hook(lambda m, gi, go: (gi[0].clamp(min=0),))
             for m in net.modules() if isinstance(m, nn.ReLU)]
    try:
        out = []
        for k in range(class_ids.shape[1]):
            inputs = torch.as_tensor(x).clone().requires_grad_(True)
            score = net(inputs).gather(1, torch.as_tensor(class_ids[:, k:k + 1])).sum()
            (grad,) = torch.autograd.grad(score, inputs)
            out.append(grad.numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return np.stack(out, axis=1)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def bundle(net):
    return export_torch(net, "features", input_shape=(1, 3, 16, 16), input_gradient=True)


def test_guided_backprop_matches_relu_hooks(net, bundle, tmp_path):
    loaded = Bundle.load(bundle.save(tmp_path / "b"))  # the graph survives a round trip
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    e = Explainer(loaded).explain(x, targets="top2", method="guided-backprop")
    assert e.method == "guided-backprop" and e.pixels.shape == (2, 2, 3, 16, 16)
    reference = _guided_reference(net, x, e.class_ids)
    np.testing.assert_allclose(e.pixels, reference, rtol=1e-4, atol=1e-6)
    plain = Explainer(loaded).explain(x, targets=e.class_ids)
    np.testing.assert_array_equal(e.heatmaps, plain.heatmaps)  # the Grad-CAM heatmaps too


def test_guided_gradcam_is_the_product(net, bundle):
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    explainer = Explainer(bundle)
    e = explainer.explain(x, targets=[[1], [3]], method="guided-gradcam")
    reference = _guided_reference(net, x, e.class_ids) * e.heatmaps[:, :, None]
    np.testing.assert_allclose(e.pixels, reference, rtol=1e-4, atol=1e-6)


def test_a_bundle_without_the_graph_says_how_to_get_it(net):
    bundle = export_torch(net, "features", input_shape=(1, 3, 16, 16))
    with pytest.raises(MethodError, match="input_gradient=True"):
        Explainer(bundle).explain(np.zeros((1, 3, 16, 16), np.float32), method="guided-backprop")


def test_deployed_onnx_with_input_gradient(net, tmp_path):
    """export_onnx(input_gradient=True) on a plain torch.onnx export: weights restored into
    the input-gradient graph, guided gradients equal the hooks' ones."""
    from exporters import export_onnx

    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), str(path), dynamo=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    bundle = export_onnx(path, input_gradient=True)
    x = np.random.default_rng(2).normal(size=(2, 3, 16, 16)).astype(np.float32)
    e = Explainer(bundle).explain(x, targets="top1", method="guided-backprop")
    np.testing.assert_allclose(e.pixels, _guided_reference(net, x, e.class_ids),
                               rtol=1e-4, atol=1e-6)
