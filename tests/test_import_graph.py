"""The exporters package has no import cycle, module-level or inside functions, and its torch-free
modules import no torch module."""

from __future__ import annotations

import ast
from pathlib import Path

import exporters

PACKAGE = Path(exporters.__file__).parent
#: the PyTorch front end: the only exporters modules that may import torch
TORCH_MODULES = {"exporters.torch", "exporters.torch_layers", "exporters.torch_padding",
                 "exporters.torch_reference", "exporters.torch_validate"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["exporters", *path.relative_to(PACKAGE).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imports(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the modules (of ``modules``, or external top-level names) it imports anywhere
    in its code, relative imports resolved."""
    edges: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        base = name.split(".") if is_package else name.split(".")[:-1]
        edges[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    module = ".".join(base[: len(base) - node.level + 1] + ([module] if module
                                                                             else []))
                targets = [module, *(f"{module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    edges[name].add(target)
                elif target and target.split(".")[0] not in ("exporters", ""):
                    edges[name].add("external:" + target.split(".")[0])
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target in edges and target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_exporters_has_no_import_cycle() -> None:
    edges = _imports(_modules())
    assert "exporters.torch_reference" in edges and len(edges) > 30
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_only_the_torch_front_end_imports_torch() -> None:
    edges = _imports(_modules())
    importers = {m for m, targets in edges.items() if "external:torch" in targets}
    assert "exporters.torch" in importers
    assert importers <= TORCH_MODULES, sorted(importers - TORCH_MODULES)
