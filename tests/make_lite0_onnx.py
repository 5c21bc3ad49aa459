"""Export the pretrained EfficientNet-Lite0 to ONNX for the torch-free tests (needs torch).

Usage (in an environment with the torch and demo extras)::

    python tests/make_lite0_onnx.py build/lite0

writes ``efficientnet_lite0.onnx`` (dynamic batch, plain ``torch.onnx.export``, no tap),
``preprocessing.json``, the test photos ``chelsea.png`` and ``coffee.png`` and
``reference.npz`` (PyTorch autograd Grad-CAM at ``_head_act`` for the top class of each photo).
Then, in the torch-free environment::

    ONNXCAM_LITE0_DIR=build/lite0 python -m pytest tests/validation/test_onnx_lite0.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("chelsea", "coffee")


def make(out_dir: str | os.PathLike[str]) -> Path:
    """Write the files described in the module docstring into ``out_dir``."""
    import skimage.data
    import torch
    from PIL import Image

    sys.path.insert(0, str(ROOT / "examples"))
    sys.path.insert(0, str(ROOT))
    import efficientnet_lite0 as effl

    from exporters.torch import reference_gradcam

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = effl.efficientnet_lite0(pretrained=True).eval()
    data = Path(os.path.dirname(skimage.data.__file__))
    images = []
    for photo in PHOTOS:
        shutil.copyfile(data / f"{photo}.png", out / f"{photo}.png")
        with Image.open(out / f"{photo}.png") as image:
            images.append(image.convert("RGB"))
    x = effl.preprocess(images)
    program = torch.onnx.export(
        model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
        input_names=["input"], verbose=False,
    )
    program.save(str(out / "efficientnet_lite0.onnx"))
    with torch.no_grad():
        class_ids = model(x).argmax(dim=1, keepdim=True).numpy()
    cams, logits = reference_gradcam(model, effl.TARGET_LAYER, x.numpy(), class_ids)
    np.savez(out / "reference.npz", inputs=x.numpy(), class_ids=class_ids, cams=cams,
             logits=logits)
    (out / "preprocessing.json").write_text(json.dumps(effl.PREPROCESSING, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else "build/lite0"))
