"""The method registry is consistent: one spec per name, complete facts, pixel methods apart.
Torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from explainer import MethodError
from explainer.methods import (
    KINDS,
    METHODS,
    MethodSpec,
    classifier,
    compute_cams,
    eigen,
    get_method,
    gradient,
    in_graph_methods,
    perturbation,
    pixel,
)
from explainer.pixels import PIXEL_METHODS

#: the peer libraries ``MethodSpec.peers`` may name
LIBRARIES = {"pytorch-grad-cam", "torchcam"}
PIXEL = [m for m, spec in METHODS.items() if spec.kind == "pixel"]


def test_names_are_unique_and_match_their_specs():
    specs = [s for module in (gradient, eigen, classifier, perturbation, pixel)
             for s in module.SPECS]
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), f"a name registered twice: {names}"
    assert list(METHODS) == names
    assert all(isinstance(s, MethodSpec) and METHODS[s.name] is s for s in specs)
    assert len({s.title for s in specs}) == len(specs), "titles must tell methods apart"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_spec_is_complete(name):
    spec = METHODS[name]
    assert spec.kind in KINDS
    assert spec.title.strip() and spec.paper.strip() and spec.formula.strip()
    assert spec.name == name and name == name.strip().lower() and " " not in name
    assert set(spec.peers) <= LIBRARIES and all(spec.peers.values())
    assert spec.tolerance > 0
    if spec.kind == "pixel":
        assert spec.weights is None and spec.emit is None and not spec.per_position
    else:
        assert callable(spec.weights) and not spec.needs_cam
    if spec.emit is not None:
        assert callable(spec.emit) and spec.kind == "closed-form"


CLOSED_FORM = [m for m, s in METHODS.items() if s.kind == "closed-form"]


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_local_methods_map_zero_where_the_gradient_is(name):
    """A ``local`` method's map is zero wherever the gradient is, and on a region holding
    all of the gradient it equals the whole map's crop (what a detection's window relies
    on); every closed-form method that does so is marked."""
    rng = np.random.default_rng(3)
    activation = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    grad = np.zeros_like(activation)
    grad[..., 2:6, 3:7] = rng.standard_normal((2, 4, 4, 4))
    region = (Ellipsis, slice(2, 6), slice(3, 7))
    whole = compute_cams(activation, grad, name)
    local = np.zeros_like(whole)
    local[region] = compute_cams(activation[region], grad[region], name)
    outside = whole.copy()
    outside[region] = 0
    assert METHODS[name].local == (not outside.any() and np.allclose(local, whole, atol=1e-6))
    assert not METHODS[name].local or METHODS[name].per_position


def test_pixel_methods_come_from_the_registry():
    assert PIXEL == list(PIXEL_METHODS) and PIXEL
    assert PIXEL_METHODS == {m: METHODS[m].needs_cam for m in PIXEL}
    assert PIXEL_METHODS["guided-gradcam"] and not PIXEL_METHODS["guided-backprop"]
    assert not set(PIXEL) & set(in_graph_methods())


def test_get_method_rejects_pixel_and_unknown_names():
    assert get_method("gradcam") is METHODS["gradcam"]
    for name in PIXEL:
        with pytest.raises(MethodError, match=f"{name!r} is a pixel-space method.*gradcam"):
            get_method(name)
    with pytest.raises(MethodError, match=r"unknown CAM method 'nope'; available: ablationcam, "
                                          r"cam,.*guided-backprop"):
        get_method("nope")
    a = np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(MethodError, match="guided-gradcam"):
        compute_cams(a, a, "guided-gradcam")


def test_the_registry_imports_neither_torch_nor_exporters():
    code = ("import sys, explainer.methods, explainer.pixels; "
            "bad = {'torch', 'exporters'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
