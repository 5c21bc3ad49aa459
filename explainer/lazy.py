"""Names of a module that load their defining module on first access (PEP 562)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(module: str, table: Mapping[str, str],
                 package: str | None = None) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module``: ``name`` -> the attribute of the module
    ``table[name]`` names (relative to ``package`` when given), imported on first access and
    then kept in ``module``'s globals."""

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        defining = import_module(f".{target}", package) if package else import_module(target)
        value = getattr(defining, name)
        setattr(import_module(module), name, value)
        return value

    return __getattr__
