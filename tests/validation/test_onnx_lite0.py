"""The pretrained EfficientNet-Lite0, exported once to ONNX, explained with torch absent.

The ONNX file comes from ``tests/make_lite0_onnx.py``: either a directory named by
``ONNXCAM_LITE0_DIR`` (how the torch-free environment gets it), or, where torch and the demo
extra are installed, one made here. The library and the CLI then run in a subprocess in which
importing torch fails, and must: pick ``_head_act`` on their own (the CAMs match PyTorch
autograd's at that layer), classify the photos right and pass the gradient self-check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from torchless import ASSERT_NO_TORCH, BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[2]
EGYPTIAN_CAT, ESPRESSO = 285, 967

LIBRARY = BLOCK_TORCH + """
import json
from pathlib import Path
import numpy as np
from explainer import Explainer, Preprocessing
from explainer import check_gradients
folder = Path(sys.argv[1])
pre = Preprocessing.from_dict(json.loads((folder / "preprocessing.json").read_text()))
explainer = Explainer.from_onnx(folder / "efficientnet_lite0.onnx", preprocessing=pre,
                                labels="imagenet")
x = explainer.preprocess([folder / "chelsea.png", folder / "coffee.png"])
reference = np.load(folder / "reference.npz")
explanation = explainer.explain(x, targets=reference["class_ids"])
cams, ref = explanation.cams.astype(np.float64), reference["cams"].astype(np.float64)
errors = np.sqrt(((cams - ref) ** 2).sum(axis=(-2, -1)) / (ref ** 2).sum(axis=(-2, -1)))
top = explainer.explain(x).class_ids[:, 0]
report = check_gradients(explainer.bundle, x, explainer=explainer)
""" + ASSERT_NO_TORCH + """
print(json.dumps({
    "target": explainer.bundle.manifest["target"],
    "top1": top.tolist(),
    "input_error": float(np.abs(x - reference["inputs"]).max()),
    "cam_errors": errors.ravel().tolist(),
    "check_error": report.max_error,
    "check_passed": report.passed,
}))
"""

CLI = BLOCK_TORCH + """
from explainer.cli import main
code = main(sys.argv[1:])
""" + ASSERT_NO_TORCH + """
sys.exit(code)
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True)


@pytest.mark.slow
def test_lite0_explained_by_the_library_without_torch(lite0_dir):
    result = _run(LIBRARY, str(lite0_dir))
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["target"]["shape"] == ["batch", 1280, 7, 7]
    assert facts["top1"] == [EGYPTIAN_CAT, ESPRESSO]
    assert facts["input_error"] < 1e-5  # our preprocessing = the example's
    assert max(facts["cam_errors"]) < 1e-4, facts  # the auto target is _head_act
    assert facts["check_passed"], facts


@pytest.mark.slow
def test_lite0_explained_by_the_cli_without_torch(lite0_dir, tmp_path):
    model = str(lite0_dir / "efficientnet_lite0.onnx")
    pre = str(lite0_dir / "preprocessing.json")
    photos = [str(lite0_dir / "chelsea.png"), str(lite0_dir / "coffee.png")]
    out = tmp_path / "out"
    result = _run(CLI, "explain", model, *photos, "--top-k", "3", "--labels", "imagenet",
                  "--preprocessing", pre, "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())["images"]
    assert [row["class_ids"][0] for row in summary] == [EGYPTIAN_CAT, ESPRESSO]
    assert summary[0]["labels"][0] == "Egyptian cat"
    assert all((out / row["overlay"]).is_file() for row in summary)

    result = _run(CLI, "check", model, "--images", *photos, "--preprocessing", pre)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
