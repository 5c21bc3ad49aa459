"""Transformers through the PyTorch front end: ViT tokens on their grid, Swin's channels-last
maps; CAMs against PyTorch autograd with the same reshape (pytorch-grad-cam's convention)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
from torchvision.models.swin_transformer import SwinTransformer  # noqa: E402
from torchvision.models.vision_transformer import VisionTransformer  # noqa: E402

from explainer import Explainer, MethodError  # noqa: E402
from explainer.activations import (  # noqa: E402
    from_channels_first,
    infer_token_grid,
    to_channels_first,
)
from exporters import export_torch  # noqa: E402
from exporters.torch import relative_l2, resolve_layer  # noqa: E402

pytestmark = pytest.mark.torch


def _reference(model, layer, x, class_ids, to_grid):
    """Grad-CAM by autograd, the activation and its gradient reshaped to [N, C, h, w]."""
    _, module = resolve_layer(model, layer)
    store = {}
    hook = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = model(torch.as_tensor(x))
    finally:
        hook.remove()
    cams = []
    for k in range(class_ids.shape[1]):
        score = logits.gather(1, torch.as_tensor(class_ids[:, k : k + 1])).sum()
        (grad,) = torch.autograd.grad(score, store["a"], retain_graph=True)
        a, g = to_grid(store["a"]), to_grid(grad)
        cams.append(torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1)).detach())
    return torch.stack(cams, dim=1).numpy()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                             hidden_dim=32, mlp_dim=64, num_classes=10).eval()


def test_vit_tokens_on_their_grid_match_autograd(vit):
    layer = "encoder.layers.encoder_layer_1.ln_1"  # the last block's first LayerNorm
    bundle = export_torch(vit, layer, input_shape=(1, 3, 64, 64))
    target = bundle.manifest["target"]
    assert target["layout"] == "NLC"
    assert target["token_grid"] == [4, 4] and target["prefix_tokens"] == 1
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    e = Explainer(bundle).explain(x, targets="top2")
    assert e.cams.shape == (2, 2, 4, 4) and e.heatmaps.shape == (2, 2, 64, 64)

    def to_grid(t):  # drop the class token, tokens row-major on the 4 x 4 grid
        return t[:, 1:].reshape(t.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    reference = _reference(vit, layer, x, e.class_ids, to_grid)
    assert relative_l2(e.cams, reference).max() < 1e-4


def test_vit_ablationcam_names_the_tensors_the_head_also_reads(vit):
    """At ln_1 the residual stream crosses the cut too: replacing the activation alone would
    be a different model, so Ablation-CAM refuses and names those tensors."""
    bundle = export_torch(vit, "encoder.layers.encoder_layer_1.ln_1", input_shape=(1, 3, 64, 64))
    x = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(MethodError, match="head also reads .*choose a later target layer"):
        Explainer(bundle).explain(x, method="ablationcam")


@pytest.mark.parametrize("target", [
    {"layout": "NCHW"}, {"layout": "NHWC"},
    {"layout": "NLC", "token_grid": [2, 3], "prefix_tokens": 0},
    {"layout": "NLC", "token_grid": [2, 3], "prefix_tokens": 2},
])
def test_from_channels_first_inverts_to_channels_first(target):
    rng = np.random.default_rng(0)
    shape = {"NCHW": (2, 5, 2, 3), "NHWC": (2, 2, 3, 5)}.get(
        target["layout"], (2, 6 + target.get("prefix_tokens", 0), 5))
    given = rng.normal(size=shape).astype(np.float32)
    channels_first, _ = to_channels_first(given, given[:, None], target)
    assert channels_first.shape == (2, 5, 2, 3)
    np.testing.assert_array_equal(from_channels_first(channels_first, target, given), given)


def test_token_grid_override_is_recorded(vit):
    bundle = export_torch(vit, "encoder.layers.encoder_layer_1.ln_1", input_shape=(1, 3, 64, 64),
                          token_grid=(2, 8), prefix_tokens=1)
    assert bundle.manifest["target"]["token_grid"] == [2, 8]
    assert Explainer(bundle).explain(np.zeros((1, 3, 64, 64), np.float32)).cams.shape[2:] == (2, 8)


@pytest.mark.parametrize("tokens, size, grid, prefix", [
    (197, (224, 224), (14, 14), 1), (198, (224, 224), (14, 14), 2), (196, None, (14, 14), 0),
    (129, (128, 256), (8, 16), 1),
])
def test_infer_token_grid(tokens, size, grid, prefix):
    assert infer_token_grid(tokens, size) == (grid, prefix)


def test_swin_channels_last_features_match_autograd():
    torch.manual_seed(0)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                           window_size=[4, 4], num_classes=7).eval()
    bundle = export_torch(swin, "features", input_shape=(1, 3, 32, 32), dynamic_size=False)
    assert bundle.manifest["target"]["layout"] == "NHWC"
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    e = Explainer(bundle).explain(x, targets="top2")
    reference = _reference(swin, "features", x, e.class_ids, lambda t: t.permute(0, 3, 1, 2))
    assert relative_l2(e.cams, reference).max() < 1e-4


def test_deployed_vit_auto_target_is_the_last_blocks_first_layernorm(vit, tmp_path):
    """A plain torch.onnx export (no tap), explained through the ONNX front end: the auto
    target is the LayerNorm feeding the last attention, and the CAMs equal autograd's there."""
    from exporters import auto_targets, candidate_layers, export_onnx

    path = tmp_path / "vit.onnx"
    torch.onnx.export(vit, (torch.randn(2, 3, 64, 64),), str(path), dynamo=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    first = auto_targets(candidate_layers(path))[0]
    assert first.layout == "NLC" and first.token_grid == (4, 4) and first.feeds_attention
    bundle = export_onnx(path)
    assert bundle.manifest["target"]["tensor"] == first.tensor
    x = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
    e = Explainer(bundle).explain(x, targets="top2")

    def to_grid(t):
        return t[:, 1:].reshape(t.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    reference = _reference(vit, "encoder.layers.encoder_layer_1.ln_1", x, e.class_ids, to_grid)
    assert relative_l2(e.cams, reference).max() < 1e-4
