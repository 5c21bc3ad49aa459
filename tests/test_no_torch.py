"""The runtime never imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_import_explainer_does_not_import_torch():
    code = (
        "import sys, explainer, explainer.runtime, explainer.visualize, explainer.labels\n"
        "import exporters, exporters.split, exporters.build\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_installed_package_is_used_when_required():
    """In the torch-free CI run (`make test-notorch`) the tests import the installed package."""
    import os
    from pathlib import Path

    import explainer

    if not os.environ.get("ONNXCAM_REQUIRE_INSTALLED"):
        pytest.skip("only in the torch-free run (ONNXCAM_REQUIRE_INSTALLED=1)")
    assert "site-packages" in Path(explainer.__file__).parts, explainer.__file__
