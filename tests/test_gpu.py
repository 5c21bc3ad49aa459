"""CUDA provider path: runs only where onnxruntime-gpu and a CUDA device are present."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from explainer import Explainer
from exporters import build_bundle

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="needs onnxruntime-gpu with a CUDA device",
    ),
]


@pytest.mark.parametrize("targets", [None, "top3+least", [[0, 1], [2, 3]]])
def test_cuda_matches_cpu(tiny_cnn, targets):
    bundle = build_bundle(tiny_cnn, "act")
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    cpu = Explainer(bundle).explain(x, targets=targets)
    cuda = Explainer(bundle, providers="cuda")
    assert cuda.on_cuda
    gpu = cuda.explain(x, targets=targets)
    np.testing.assert_array_equal(gpu.class_ids, cpu.class_ids)
    np.testing.assert_allclose(gpu.cams, cpu.cams, rtol=1e-3, atol=1e-4 * cpu.cams.max())
