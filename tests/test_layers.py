"""Import layers: the runtime modules of ``explainer`` never import ``exporters``.

What needs both (building a bundle from an ``.onnx`` file, the CLI) goes through
``explainer.bridge``, the one module of ``explainer`` that imports ``exporters``; the exporters
load neither ONNX Runtime nor Pillow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import explainer

PACKAGE = Path(explainer.__file__).parent
RUNTIME_MODULES = [
    "activations", "batch", "bundle", "detection", "errors", "explanation", "explanation_graph",
    "gradcheck",
    "image", "layers",
    "inputs", "labels", "methods", "outputs", "pixels", "preprocessing", "ray_data", "report",
    "runtime", "seeds", "segmentation", "sequence", "sessions", "targets", "tasks", "visualize",
]


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth (function bodies too);
    relative imports count as ``explainer``."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("explainer" if node.level else (node.module or "").split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant):
                names.add(str(arg.value).lstrip(".").split(".")[0])
    return names


def _module_files(module: str) -> list[Path]:
    """The file of a module, or every file of a subpackage (``explainer/methods/``)."""
    path = PACKAGE / module
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


@pytest.mark.parametrize("module", RUNTIME_MODULES)
def test_runtime_module_does_not_import_exporters(module):
    for path in _module_files(module):
        assert "exporters" not in _imported_modules(path), path


def test_only_the_bridge_imports_exporters():
    importers = sorted(
        path.stem for path in PACKAGE.glob("*.py") if "exporters" in _imported_modules(path)
    )
    assert importers == ["bridge"]


def test_every_runtime_module_is_listed():
    """A new module of explainer must be placed: runtime (checked above), bridge or CLI."""
    known = {*RUNTIME_MODULES, "__init__", "bridge", "cli"}
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert {path.stem for path in PACKAGE.glob("*.py")} | packages <= known


def test_layers_at_run_time():
    """Loading the runtime loads no exporters; loading the exporters loads neither ONNX Runtime
    nor Pillow."""
    code = (
        "import sys, explainer.runtime, explainer.visualize, explainer.gradcheck\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'exporters']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code = (
        "import sys, exporters, exporters.onnx_frontend, exporters.autodiff\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('PIL', 'onnxruntime', 'torch')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
