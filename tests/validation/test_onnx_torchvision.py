"""target="auto" and the gradient self-check on the 12 torchvision models of the foundation matrix.

Each model (seeded random weights, BatchNorm statistics re-estimated) is exported the way a user
deploys it: ``torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...)`` with no tap.
:func:`exporters.export_onnx` then picks the target on its own; the test compares the picked
tensor *by value* with the output of the module we expect (a forward hook in PyTorch), since
names differ between exports. The expected modules follow the documented rule "last spatial
activation that every path goes through, with a differentiable head":

* VGG16 / AlexNet: ``features`` (after the last MaxPool; the adaptive average pool after it is
  an identity at 224x224, so either tensor holds these values);
* DenseNet-121: ``features`` after the final in-place ReLU of ``DenseNet.forward``;
* SqueezeNet 1.1: ``classifier.2``, the ReLU after the classifier's final 1x1 convolution;
* the others: the last stage before global pooling.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("onnxscript")

from export_cache import cached, export_key  # noqa: E402

from explainer import Explainer, check_gradients  # noqa: E402
from exporters import export_onnx  # noqa: E402
from exporters.torch import recalibrate_batchnorm  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]

EXPECTED = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "densenet121": "features",
    "vgg16": "features",
    "alexnet": "features",
    "mobilenet_v2": "features.18",
    "mobilenet_v3_large": "features.16",
    "efficientnet_b0": "features.8",
    "squeezenet1_1": "classifier.2",
    "convnext_tiny": "features.7",
    "regnet_y_400mf": "trunk_output",
    "googlenet": "inception5b",
}
KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True}}


@pytest.fixture(scope="module", params=list(EXPECTED))
def exported(request) -> tuple:
    """(name, input, Explainer of the auto-target bundle, reference activation) of one model.

    Module-scoped and parametrized: pytest runs every test of one model before exporting the
    next, so each model is exported once and only one is held in memory at a time.
    """
    name = request.param
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **KWARGS.get(name, {}))
    model = recalibrate_batchnorm(model, (4, 3, 112, 112), batches=1)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))

    def build(folder: Path) -> None:  # torch.onnx's file, cached in build/exports
        program = torch.onnx.export(
            model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
            input_names=["input"], verbose=False,
        )
        program.save(str(folder / f"{name}.onnx"))

    start = time.perf_counter()
    key = export_key(model, name, tuple(x.shape), "batch")
    entry, built = cached("torchvision_onnx", name, key, build)
    exported = time.perf_counter()
    explainer = Explainer(export_onnx(entry / f"{name}.onnx"))
    print(f"{name}: torch export {exported - start:.1f}s{'' if built else ' (cached)'}, "
          f"export_onnx + sessions {time.perf_counter() - exported:.1f}s")

    store = {}
    module = model.get_submodule(EXPECTED[name])
    hook = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    with torch.no_grad():
        model(x)
    hook.remove()
    return name, x.numpy(), explainer, store["a"].numpy()


def test_auto_target_is_the_expected_layer(exported):
    _, x, explainer, reference = exported
    target = explainer.bundle.manifest["target"]
    assert target["layout"] == "NCHW"
    ours = explainer.runner.features(x)[explainer.spec.target.tensor]
    assert ours.shape == reference.shape, (target, reference.shape)
    scale = np.abs(reference).max()
    assert scale > 0
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-4 * scale)


def test_gradient_self_check_agrees_with_finite_differences(exported):
    name, x, explainer, _ = exported
    report = check_gradients(explainer.bundle, x, explainer=explainer)
    print(f"{name}: max relative error {report.max_error:.2e}")
    assert report.passed, str(report)
