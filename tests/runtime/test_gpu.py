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
    assert cuda.runner.on_cuda
    gpu = cuda.explain(x, targets=targets)
    np.testing.assert_array_equal(gpu.class_ids, cpu.class_ids)
    np.testing.assert_allclose(gpu.cams, cpu.cams, rtol=1e-3, atol=1e-4 * cpu.cams.max())


@pytest.mark.parametrize("targets", [None, "least+top2", [[0, 1], [2, 3]]])
def test_explanation_graph_on_cuda_matches_cpu_and_two_graphs(tiny_cnn, targets):
    """The explanation graph on the CUDA provider (input and outputs bound once): one run, the
    CPU's heatmaps, and the two-graph CUDA path's CAMs."""
    bundle = build_bundle(tiny_cnn, "act")
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    cpu = Explainer(bundle).explain(x, targets=targets)
    explainer = Explainer(bundle, providers="cuda")
    assert explainer.graph is not None and explainer.graph.on_cuda
    assert "CUDAExecutionProvider" in explainer.graph.session.get_providers()
    calls = []
    original = explainer.graph.session.run_with_iobinding
    explainer.graph.session.run_with_iobinding = lambda *a: calls.append(1) or original(*a)
    gpu = explainer.explain(x, targets=targets)
    assert len(calls) == 1
    two = Explainer(bundle, providers="cuda", explanation_graph=False).explain(x, targets=targets)
    np.testing.assert_array_equal(gpu.class_ids, cpu.class_ids)
    np.testing.assert_allclose(gpu.cams, cpu.cams, rtol=1e-3, atol=1e-4 * cpu.cams.max())
    np.testing.assert_allclose(gpu.cams, two.cams, rtol=1e-3, atol=1e-4 * cpu.cams.max())
    np.testing.assert_allclose(gpu.heatmaps, cpu.heatmaps, atol=1e-3)
