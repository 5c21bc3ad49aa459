"""The runtime never imports torch."""

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
from torchless import ASSERT_NO_TORCH, BLOCK_TORCH


def test_import_explainer_does_not_import_torch():
    code = (
        "import sys, explainer, explainer.runtime, explainer.visualize, explainer.labels\n"
        "import exporters, exporters.split, exporters.build\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_onnxcam_explains_without_torch(tmp_path):
    """``import onnxcam`` and ``onnxcam.explain`` of a tiny model, with torch unimportable: torch
    is never imported."""
    import onnxcam

    onnx.save(make_tiny_cnn(), tmp_path / "tiny.onnx")
    pixels = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "cat.png")
    code = BLOCK_TORCH + (
        "import onnxcam\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
        "explanation = onnxcam.explain('tiny.onnx', 'cat.png', top_k=2)\n"
        "assert explanation.heatmaps.shape == (1, 2, 16, 16), explanation.heatmaps.shape\n"
    ) + ASSERT_NO_TORCH
    # the onnxcam module under test: the installed one, or the checkout's
    path = os.pathsep.join(p for p in (str(Path(onnxcam.__file__).parent),
                                       os.environ.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": path})


def test_installed_package_is_used_when_required():
    """In the torch-free CI run (`make test-notorch`) the tests import the installed package."""
    import explainer

    if not os.environ.get("ONNXCAM_REQUIRE_INSTALLED"):
        pytest.skip("only in the torch-free run (ONNXCAM_REQUIRE_INSTALLED=1)")
    assert "site-packages" in Path(explainer.__file__).parts, explainer.__file__
    import onnxcam

    assert "site-packages" in Path(onnxcam.__file__).parts, onnxcam.__file__
