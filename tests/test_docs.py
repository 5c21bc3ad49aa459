"""The README and the docs site: length, relative links, navigation, and the build-time code
(the methods page hook and the griffe extension that renders Sphinx roles).

The strict site build itself (``mkdocs build --strict``) runs in ``make test`` (``make docs``).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 320

#: inline links and images: [text](target) / ![alt](target), target up to a space or ")"
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: reference definitions: [id]: target
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:.|\n)+?\1")


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (the dev extra installs the docs tools)")


def _load(name: str) -> ModuleType:
    """A Python file of docs/ as a module (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"onnxcam_docs_{name}", DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_files() -> list[Path]:
    """README.md and every Markdown page of the docs site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def relative_links(text: str) -> list[str]:
    """Link targets of a Markdown text that point into the repository (no URL, no bare
    anchor), outside code blocks and code spans, with any ``#anchor`` removed."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = INLINE_LINK.findall(prose) + REFERENCE_DEF.findall(prose)
    links = []
    for target in targets:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto: ... and anchors within the page
        links.append(target.split("#", 1)[0])
    return links


def test_link_extraction_finds_links_and_skips_code() -> None:
    text = (
        "See [a](docs/a.md#x), ![img](images/i.png) and [web](https://example.com).\n"
        "[ref]: docs/b.md\n"
        "`[not](code.md)`\n"
        "```\n[not](fenced.md)\n```\n"
        "[anchor](#here)\n"
    )
    assert relative_links(text) == ["docs/a.md", "images/i.png", "docs/b.md"]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move the details to docs/"
    )


def test_readme_gives_the_two_commands_that_ci_runs() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(page: Path) -> None:
    missing = [
        link for link in relative_links(page.read_text(encoding="utf-8"))
        if link and not (page.parent / link).resolve().exists()
    ]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_readme_links_into_the_docs() -> None:
    links = relative_links(README.read_text(encoding="utf-8"))
    pages = {link for link in links if link.startswith("docs/") and link.endswith(".md")}
    assert len(pages) >= 10, f"the README links to only {sorted(pages)} of the docs"


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node] if node.endswith(".md") else []
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    return []


def test_every_nav_page_exists() -> None:
    _needs("mkdocs")
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = _nav_pages(config["nav"])
    assert len(pages) >= 15
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"
    assert (DOCS / "methods.md").read_text(encoding="utf-8").count("<!-- methods-registry -->") == 1


def test_methods_page_lists_every_registered_method() -> None:
    _needs("mkdocs")
    from explainer.methods import METHODS

    hooks = _load("hooks")
    page = hooks.render(hooks.load_registry())
    rows = [line for line in page.splitlines() if line.startswith("| [")]
    assert len(rows) == len(METHODS)
    for name, spec in METHODS.items():
        assert f"### {spec.title} {{#{hooks.slug(name)}}}" in page
        assert f"`--method {name}`" in page
    assert len({hooks.slug(name) for name in METHODS}) == len(METHODS)


def test_methods_page_refuses_a_registry_without_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    _needs("mkdocs")
    from mkdocs.exceptions import PluginError

    fake = types.ModuleType("explainer.methods")
    fake.METHODS = {"gradcam": lambda context: None}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "explainer.methods", fake)
    with pytest.raises(PluginError, match=r"METHODS\['gradcam'\].*not a MethodSpec.*title"):
        _load("hooks").load_registry()


def test_sphinx_roles_become_links_or_code(tmp_path: Path) -> None:
    _needs("griffe")
    import griffe

    package = tmp_path / "rolepkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""Package."""\n\nfrom .core import Thing, helper\n\n__all__ = ["Thing", "helper"]\n'
    )
    (package / "core.py").write_text(
        '"""Core: see :class:`Thing`, :func:`~rolepkg.core.helper`, :func:`_private` and\n'
        ':class:`numpy.ndarray`; shapes [B][K] stay text, ``x[0][1]`` stays code.\n\n'
        'Use it::\n\n    thing = Thing()\n"""\n\n\n'
        'class Thing:\n    """A thing; :meth:`run` runs it."""\n\n'
        '    def run(self) -> None:\n        """Run :class:`Thing`."""\n\n\n'
        'def helper() -> None:\n    """Help :meth:`Thing.run`."""\n\n\n'
        'def _private() -> None:\n    """Private."""\n'
    )
    roles = _load("griffe_roles")
    loaded = griffe.load(
        "rolepkg", search_paths=[str(tmp_path)],
        extensions=griffe.load_extensions(roles.SphinxRoles(roots=["rolepkg"])),
    )
    core = loaded["core"].docstring.value
    assert "[`Thing`][rolepkg.Thing]" in core
    assert "[`helper()`][rolepkg.helper]" in core
    assert "`_private()`" in core and "[`_private()`]" not in core
    assert "`numpy.ndarray`" in core and "[`numpy.ndarray`]" not in core
    assert "[B]\\[K]" in core and "``x[0][1]``" in core
    assert "Use it:\n\n    thing = Thing()" in core and "::" not in core
    assert loaded["core.Thing"].docstring.value == "A thing; [`run()`][rolepkg.Thing.run] runs it."
    assert "[`Thing.run()`][rolepkg.Thing.run]" in loaded["core.helper"].docstring.value


def test_rendered_roots_follow_the_members_option(tmp_path: Path) -> None:
    _needs("griffe")
    (tmp_path / "api.md").write_text(
        "# API\n\n::: pkg\n    options:\n      members: [explain, 'run']\n\n::: other.Thing\n"
    )
    roots = _load("griffe_roles").documented_roots(tmp_path)
    assert roots == [("pkg", False), ("pkg.explain", True), ("pkg.run", True),
                     ("other.Thing", True)]
