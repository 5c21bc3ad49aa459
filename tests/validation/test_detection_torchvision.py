"""torchvision's detectors exported by torch.onnx with their post-processing inside (NMS, TopK,
Gather, RoiAlign), explained from the ``.onnx`` files and checked against torch autograd.

Each is exported as torchvision users export it: one ``[3, H, W]`` image in, ``boxes``,
``scores`` and ``labels`` out. The export gives it a batch axis, tells the format
(``boxes_scores_labels``), and cuts where the features enter the detection head (the FPN or
backbone maps, one per stride, found from the module scopes of the node names). Each layer's
map of a detection must equal the map of torch's float64 autograd gradient of that detection's
score at the same feature map (the gradient flows through the selected rows, the selection
indices held constant).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import detection_models as dm  # noqa: E402

from explainer import Explainer  # noqa: E402
from explainer.bridge import export_onnx  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

#: float32 against float64 autograd (FCOS: 8e-5 measured, torch's own float32 3e-4)
TOLERANCE = 2e-4


def _layercam(gradient: np.ndarray, activation: np.ndarray) -> np.ndarray:
    return np.maximum((np.maximum(gradient, 0) * activation).sum(axis=0), 0)


@pytest.mark.parametrize("name", sorted(dm.DETECTORS))
def test_torchvision_detector_maps_equal_torch_autograd(name: str, tmp_path) -> None:
    model, image = dm.build(name, seed=0)
    path = tmp_path / f"{name}.onnx"
    dm.export(model, path)
    bundle = export_onnx(path)
    manifest = bundle.manifest
    assert manifest["task"] == "detect" and manifest["format"]["name"] == "boxes_scores_labels"
    assert manifest["input"]["shape"][0] == 1  # [3, H, W] given a batch axis

    x = image[None].numpy()
    explanation = Explainer(bundle).explain(x, targets="top1", method="layercam",
                                            score="probability", conf=0.0)
    assert explanation.heatmaps.shape == (1, 1, *x.shape[2:])
    truth = dm.reference(model, image, 0, dtype=torch.float64)
    names = dm.head_inputs(onnx.load(path), image.numpy(), [f.astype(np.float32)
                                                            for f in truth.features])
    used = {name for name, g in zip(names, truth.gradients, strict=True) if np.any(g)}
    layers = {layer["tensor"]: layer["layer"] for layer in manifest["layers"]}
    assert used <= set(layers)  # every feature map the scores depend on is explained
    for k, detection in enumerate(explanation.detections[0]):
        reference = truth
        assert detection.candidate == k
        assert detection.score == pytest.approx(float(reference.outputs["scores"][k]), abs=1e-5)
        np.testing.assert_allclose(detection.box, reference.outputs["boxes"][k], atol=1e-3)
        for tensor, feature, gradient in zip(names, reference.features, reference.gradients,
                                             strict=True):
            if tensor not in layers:
                assert not np.any(gradient), tensor
                continue
            ours = explanation.layers[layers[tensor]].cams[0, k]
            expected = _layercam(gradient[0], feature[0])
            scale = max(np.linalg.norm(expected), 1e-30)
            error = np.linalg.norm(ours - expected) / scale if np.any(expected) else \
                float(np.abs(ours).max())
            assert error < TOLERANCE, (name, k, tensor, error)
