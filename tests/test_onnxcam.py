"""The top-level ``onnxcam`` module: ``onnxcam.explain`` is the Explainer's explanation, the
runtime and exporter names load on first use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_tiny_cnn
from PIL import Image

import onnxcam
from explainer import Explainer


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(make_tiny_cnn(), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    paths = []
    for k, size in enumerate([(20, 24), (32, 18)]):
        path = folder / f"image{k}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _direct(model: Path, images: list[Path], **options):
    with Explainer.from_onnx(model) as explainer:
        return explainer.explain(explainer.preprocess([str(p) for p in images]), **options)


def test_explain_one_image_is_the_explainers_explanation(model, images):
    got = onnxcam.explain(model, images[0])
    assert isinstance(got, onnxcam.Explanation)
    want = _direct(model, images[:1])
    assert got.heatmaps.shape == want.heatmaps.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(got.heatmaps, want.heatmaps, atol=1e-6)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)


def test_explain_a_list_gives_one_explanation_per_image(model, images):
    got = onnxcam.explain(str(model), [str(p) for p in images], top_k=2, method="gradcam++")
    assert isinstance(got, list) and len(got) == 2
    want = _direct(model, images, top_k=2, method="gradcam++")
    for k, explanation in enumerate(got):
        assert explanation.heatmaps.shape == (1, 2, 16, 16)
        np.testing.assert_allclose(explanation.heatmaps[0], want.heatmaps[k], atol=1e-6)
        np.testing.assert_array_equal(explanation.class_ids[0], want.class_ids[k])


def test_explain_a_bundle_folder(model, images, tmp_path):
    bundle = onnxcam.export_onnx(model, target="act").save(tmp_path / "tiny.onnxcam")
    got = onnxcam.explain(bundle, Image.open(images[1]), targets=3)
    with Explainer.from_onnx(model, target="act") as explainer:
        want = explainer.explain(explainer.preprocess([str(images[1])]), targets=3)
    np.testing.assert_allclose(got.heatmaps, want.heatmaps, atol=1e-6)
    assert got.class_ids.tolist() == [[3]]
    with pytest.raises(onnxcam.UsageError, match="layer, labels"):
        onnxcam.explain(bundle, images[0], layer="act", labels="imagenet")


def test_a_missing_model_is_a_bundle_error(tmp_path, images):
    with pytest.raises(onnxcam.BundleError, match="no such .onnx file or bundle folder"):
        onnxcam.explain(tmp_path / "missing.onnx", images[0])
    assert issubclass(onnxcam.BundleError, onnxcam.OnnxcamError)


def test_public_names():
    import explainer
    import exporters.errors

    assert onnxcam.__version__ == explainer.__version__
    assert onnxcam.Explainer is Explainer
    assert onnxcam.ExportError is exporters.errors.ExportError
    assert onnxcam.TargetError is explainer.TargetError
    assert set(onnxcam.__all__) <= set(dir(onnxcam))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        onnxcam.nope  # noqa: B018


def test_import_loads_neither_onnx_runtime_nor_the_exporters():
    """``import onnxcam`` is light; the runtime loads with ``Explainer``, the exporters with
    ``export_onnx``, and the torch front end only with ``export_torch``."""
    code = (
        "import sys, onnxcam\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('onnxruntime', 'torch', 'exporters', 'PIL')]\n"
        "assert not heavy, heavy\n"
        "onnxcam.Explainer\n"
        "assert 'onnxruntime' in sys.modules and 'exporters' not in sys.modules\n"
        "onnxcam.export_onnx\n"
        "assert 'exporters' in sys.modules and 'exporters.torch' not in sys.modules\n"
        "assert 'torch' not in sys.modules\n"
    )
    env_path = str(Path(onnxcam.__file__).parent)
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": env_path})
