"""Import layers: the runtime modules of ``explainer`` never import ``exporters``, and neither
package has an import cycle among its modules.

What needs both (building a bundle from an ``.onnx`` file, the CLI) goes through
``explainer.bridge``, the one module of ``explainer`` that imports ``exporters``; the exporters
load neither ONNX Runtime nor Pillow.

The imports are read from the source: ``import`` and ``from ... import`` statements at any depth
(function bodies too; ``if TYPE_CHECKING:`` blocks excepted), ``import_module("...")`` calls with
a string (absolute, or relative with ``package=``), and the names a package's ``_LAZY`` table
(name -> module) loads on first access. Importing ``a.b.c`` also imports the packages ``a.b``
and ``a`` it is in (those the importing module is not in already).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import explainer

PACKAGE = Path(explainer.__file__).parent
ROOT = PACKAGE.parent
PACKAGES = ("explainer", "exporters")
RUNTIME_MODULES = [
    "access", "activations", "backward", "backward_window", "batch", "bundle", "colormaps",
    "detection",
    "detection_formats",
    "errors", "evaluation", "explained", "explanation", "fast_softmax", "graph_runner",
    "folder_run", "gradcheck",
    "image", "image_geometry", "image_load", "inputs", "labels", "layers", "lazy", "manifest",
    "maps",
    "methods", "outputs", "pixels", "preprocessing", "ray_data", "report", "run_options",
    "runner", "runtime", "seeds", "segmentation", "sequence", "session_build", "sessions",
    "sparse_seeds", "static_dims", "window_ops",
    "targets", "task_runs", "tasks", "visualize", "window_reach",
]
#: the command line: it reaches the exporters through the bridge only
CLI_MODULES = ["cli", "cli_commands", "cli_evaluate", "cli_help", "cli_messages"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: every module of both packages: dotted name -> file
MODULES = {_module_name(path): path
           for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _is_package(module: str) -> bool:
    return module in MODULES and MODULES[module].name == "__init__.py"


def _package_of(module: str) -> str:
    """The package a module's relative imports start from."""
    return module if _is_package(module) else module.rpartition(".")[0]


def _absolute(name: str, package: str) -> str:
    """``name`` made absolute as importlib does, relative to ``package`` when it starts with
    dots."""
    level = len(name) - len(name.lstrip("."))
    if not level:
        return name
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, name[level:]] if name[level:] else base)


@cache
def _lazy_table(package: str) -> dict[str, str]:
    """A package's ``_LAZY`` table (a module-level dict of string constants, name -> module,
    relative to the package unless it names a module itself), resolved to module names."""
    if not _is_package(package):
        return {}
    table = {}
    for node in ast.parse(MODULES[package].read_text()).body:
        names = [t.id for t in getattr(node, "targets", [getattr(node, "target", None)])
                 if isinstance(t, ast.Name)]
        if not any(name.startswith("_LAZY") for name in names) or not isinstance(
                getattr(node, "value", None), ast.Dict):
            continue
        for key, value in zip(node.value.keys, node.value.values, strict=True):
            if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                target = str(value.value)
                inside = _absolute(target if target.startswith(".") else f".{target}", package)
                table[str(key.value)] = inside if inside in MODULES else target
    return table


def _with_packages(target: str, importer: str) -> list[str]:
    """``target`` and the packages above it that importing it runs, less those the importer is
    in (they are imported already)."""
    parts = target.split(".")
    found = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    inside = {".".join(importer.split(".")[:k]) for k in range(1, importer.count(".") + 2)}
    return [name for name in found if name not in inside or name == target]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_module_target(call: ast.Call, module: str) -> str | None:
    """The module an ``import_module("name", package)`` call with constant arguments loads."""
    if not call.args or not isinstance(call.args[0], ast.Constant):
        return None
    name = str(call.args[0].value)
    if not name.startswith("."):
        return name
    anchor = call.args[1] if len(call.args) > 1 else next(
        (k.value for k in call.keywords if k.arg == "package"), None)
    if isinstance(anchor, ast.Constant):
        return _absolute(name, str(anchor.value))
    if isinstance(anchor, ast.Name) and anchor.id in ("__name__", "__package__"):
        return _absolute(name, module if anchor.id == "__name__" else _package_of(module))
    return None


def imports_of(module: str, path: Path | None = None) -> set[str]:
    """The absolute names of the modules ``module`` imports (see the module docstring); names
    outside both packages (``numpy``, ``onnx.helper``) as written."""
    path = path or MODULES[module]
    package = _package_of(module)
    found: set[str] = set()

    def add(target: str) -> None:
        if target.split(".")[0] in PACKAGES:
            found.update(_with_packages(target, module))
        else:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute("." * node.level + (node.module or ""), package)
            lazy = _lazy_table(base)
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    add(f"{base}.{alias.name}")
                else:
                    add(lazy.get(alias.name, base))
        elif isinstance(node, ast.Call) and (
                getattr(node.func, "id", None) == "import_module"
                or getattr(node.func, "attr", None) == "import_module"):
            target = _import_module_target(node, module)
            if target is not None:
                add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(module)
    return found


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (see :func:`imports_of`)."""
    return {name.split(".")[0] for name in imports_of(_module_name(path), path)}


def _module_files(module: str) -> list[Path]:
    """The file of a module, or every file of a subpackage (``explainer/methods/``)."""
    path = PACKAGE / module
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def find_cycles(package: str) -> list[list[str]]:
    """One import cycle per strongly connected set of ``package``'s modules (Tarjan), each as
    a path ``[a, b, ..., a]``."""
    nodes = sorted(name for name in MODULES if name.split(".")[0] == package)
    edges = {name: sorted(t for t in imports_of(name) if t in MODULES and t.split(".")[0]
                          == package) for name in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges[node]:
                groups.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(nodes)))
    try:
        for node in nodes:
            if node not in index:
                connect(node)
    finally:
        sys.setrecursionlimit(limit)
    return [_cycle_in(group, edges) for group in groups]


def _cycle_in(group: list[str], edges: dict[str, list[str]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for other in edges[node]:
            if other == start:
                return [*paths[node], start]
            if other in members and other not in paths:
                paths[other] = [*paths[node], other]
                queue.append(other)
    return group


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
    known = {*RUNTIME_MODULES, *CLI_MODULES, "__init__", "bridge"}
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert {path.stem for path in PACKAGE.glob("*.py")} | packages <= known


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    cycles = find_cycles(package)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


#: the PyTorch front end: the only modules of either package that import torch
TORCH_MODULES = {"exporters.torch", "exporters.torch_layers", "exporters.torch_padding",
                 "exporters.torch_reference", "exporters.torch_validate"}


def test_only_the_torch_front_end_imports_torch():
    importers = {m for m in MODULES
                 if any(t.split(".")[0] == "torch" for t in imports_of(m))}
    assert "exporters.torch" in importers
    assert importers <= TORCH_MODULES, sorted(importers - TORCH_MODULES)


def test_the_graph_reads_every_kind_of_import(tmp_path):
    """What counts as an import: statements at any depth, ``import_module`` strings (absolute
    and relative), names of a ``_LAZY`` table; not what ``TYPE_CHECKING`` guards."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from importlib import import_module\n"
        "from typing import TYPE_CHECKING\n"
        "from . import Explainer, errors\n"
        "if TYPE_CHECKING:\n"
        "    from .report import write_report\n"
        "def late():\n"
        "    from .methods.core import x\n"
        "    import_module('.bridge', package='explainer')\n"
        "    import_module('exporters.split')\n"
    )
    found = imports_of("explainer.probe", source)
    assert {"explainer.runtime", "explainer.errors", "explainer.methods.core",
            "explainer.methods", "explainer.bridge", "exporters.split", "exporters"} <= found
    assert "explainer.report" not in found and "explainer" not in found
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": []}
    assert _cycle_in(["a", "b", "c"], edges) == ["a", "b", "c", "a"]


def test_package_names_never_load_the_exporters():
    """Every name ``explainer`` loads on first access comes without the exporters."""
    code = (
        "import sys, explainer\n"
        "for name in explainer._LAZY:\n"
        "    getattr(explainer, name)\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'exporters']\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


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
