"""Griffe extension: render the Sphinx roles of onnxcam's docstrings on the docs site.

The docstrings use Google sections with Sphinx roles (``:func:`x```, ``:class:`~a.B```,
``:meth:``, ``:data:``, ``:mod:``, ``:attr:``, ``:exc:``, ``:obj:``). mkdocstrings renders
Markdown, where those roles would show as raw text. This extension rewrites each role, at build
time and without touching the source files, into:

* a mkdocstrings cross-reference ``[`text`][full.path]`` when the target is an object the API
  reference pages render (so the link resolves under ``mkdocs build --strict``);
* inline code ``` `text` ``` otherwise (private helpers, other packages' objects).

Which objects are rendered is read from the ``::: identifier`` blocks of ``docs/**/*.md`` and
follows the options of ``mkdocs.yml`` (public members only, no submodules, objects without a
docstring left out).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import griffe

DOCS_DIR = Path(__file__).resolve().parent

#: ``:role:`target``` or ``:role:`text <target>```; ``~`` shows only the last component.
ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|meth|data|mod|attr|exc|obj|const):`(?P<body>[^`]+)`"
)

#: inline code spans (left as they are when escaping brackets)
CODE_SPAN = re.compile(r"(``.+?``|`[^`\n]+`)", re.DOTALL)

#: ``::: identifier`` blocks of the docs pages (mkdocstrings' autodoc), with their indented
#: options, of which ``members: [a, b]`` is read
AUTODOC = re.compile(r"^:::\s+(?P<identifier>[\w.]+)[ \t]*\n?(?P<options>(?:[ \t]+.*\n?)*)",
                     re.MULTILINE)
MEMBERS = re.compile(r"^\s*members:\s*\[(?P<names>[^\]]*)\]", re.MULTILINE)

#: a rendered root: (object path, whether its members are rendered with it)
Root = tuple[str, bool]


def documented_roots(docs_dir: Path = DOCS_DIR) -> list[Root]:
    """The objects every ``:::`` block of the docs pages renders, in file order: the block's
    identifier with its members, or, for a block with ``members: [a, b]``, the identifier
    alone plus each listed member with its own members."""
    roots: list[Root] = []
    for page in sorted(docs_dir.rglob("*.md")):
        for block in AUTODOC.finditer(page.read_text(encoding="utf-8")):
            identifier = block["identifier"]
            members = MEMBERS.search(block["options"])
            if members is None:
                roots.append((identifier, True))
                continue
            roots.append((identifier, False))
            names = [name.strip().strip("'\"") for name in members["names"].split(",")]
            roots.extend((f"{identifier}.{name}", True) for name in names if name)
    return roots


def _get(collection: griffe.ModulesCollection, path: str) -> griffe.Object | griffe.Alias | None:
    """The object at ``path`` in the loaded packages, or None."""
    try:
        return collection.get_member(path)
    except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError,
            griffe.CyclicAliasError):
        return None


def _final_path(obj: griffe.Object | griffe.Alias) -> str | None:
    """The path of the object an alias finally points to (its own path for a non-alias)."""
    try:
        return obj.final_target.path if isinstance(obj, griffe.Alias) else obj.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _has_docstring(obj: griffe.Object | griffe.Alias) -> bool:
    try:
        return bool(obj.docstring and obj.docstring.value.strip())
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False


def _rendered(obj: griffe.Object | griffe.Alias, path: str,
              members: bool = True) -> Iterator[tuple[str, str | None]]:
    """(rendered path, final path) of ``obj`` and, with ``members``, of the members
    mkdocstrings renders with it."""
    yield path, _final_path(obj)
    if not members:
        return
    try:
        kind = obj.kind
        members = dict(obj.members)
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return
    if kind not in (griffe.Kind.MODULE, griffe.Kind.CLASS):
        return
    for name, member in members.items():
        try:
            if member.is_module or not member.is_public or not _has_docstring(member):
                continue
            if kind is griffe.Kind.MODULE and member.is_alias and not member.is_exported:
                continue
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        yield from _rendered(member, f"{path}.{name}")


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring once a package is loaded."""

    def __init__(self, roots: Iterable[str | Root] | None = None) -> None:
        """Args:
        roots: objects rendered by the API pages, each a path (rendered with its members) or
            a :data:`Root` (default: the ``:::`` blocks of docs/).
        """
        super().__init__()
        given = roots if roots is not None else documented_roots()
        self._roots = [(root, True) if isinstance(root, str) else root for root in given]
        self._packages: list[griffe.Module] = []
        # docstrings as written, so that a package loaded later can turn more roles into links
        self._originals: dict[str, str] = {}

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the roles of ``pkg``'s docstrings (and of packages loaded before it)."""
        self._packages.append(pkg)
        collection = loader.modules_collection
        # rendered path by final path: a link goes to where the object is shown
        shown: dict[str, str] = {}
        for root, with_members in self._roots:
            obj = _get(collection, root)
            if obj is None:
                continue
            for rendered, final in _rendered(obj, root, with_members):
                shown.setdefault(rendered, rendered)
                if final:
                    shown.setdefault(final, rendered)
        for package in self._packages:
            for obj in _walk(package):
                if obj.docstring is not None:
                    original = self._originals.setdefault(obj.path, obj.docstring.value)
                    obj.docstring.value = _rewrite(original, obj, collection, shown)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined under it (aliases are skipped: their target is walked)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _scopes(obj: griffe.Object) -> list[str]:
    """Paths a relative role target is looked up in: the object, its parents, their modules."""
    scopes = []
    current: griffe.Object | None = obj
    while current is not None:
        scopes.append(current.path)
        current = current.parent
    return scopes


def _resolve(target: str, obj: griffe.Object, collection: griffe.ModulesCollection,
             shown: dict[str, str]) -> str | None:
    """The rendered path a role target links to, or None when it is not on the site."""
    target = target.lstrip(".")
    candidates = [target] + [f"{scope}.{target}" for scope in _scopes(obj)]
    for path in candidates:
        if path in shown:
            return shown[path]
        found = _get(collection, path)
        if found is not None:
            final = _final_path(found)
            if final in shown:
                return shown[final]
    # a name known only by its last components (``Explainer.explain`` from another module)
    matches = {rendered for path, rendered in shown.items() if path.endswith(f".{target}")}
    return matches.pop() if len(matches) == 1 else None


def _rewrite(text: str, obj: griffe.Object, collection: griffe.ModulesCollection,
             shown: dict[str, str]) -> str:
    """``text`` (a docstring of ``obj``) with its roles as cross-references or inline code."""

    def replace(match: re.Match[str]) -> str:
        body = match["body"].strip()
        explicit = re.fullmatch(r"(?P<text>.+?)\s*<(?P<target>[^>]+)>", body)
        if explicit:
            text, target = explicit["text"], explicit["target"].lstrip("~")
        else:
            target = body.lstrip("~")
            text = target.rsplit(".", 1)[-1] if body.startswith("~") else target.lstrip(".")
        if match["role"] in ("func", "meth"):
            text = text if text.endswith(")") else f"{text}()"
        path = _resolve(target, obj, collection, shown)
        return f"[`{text}`][{path}]" if path else f"`{text}`"

    text = ROLE.sub(replace, _escape_references(text))
    # reST literal-block markers: a lone "::" line goes, a paragraph's final "::" becomes ":"
    # (the indented block after it is already a Markdown code block)
    text = re.sub(r"^[ \t]*::[ \t]*$", "", text, flags=re.MULTILINE)
    return re.sub(r"(?<=\S)::[ \t]*$", ":", text, flags=re.MULTILINE)


def _escape_references(text: str) -> str:
    """Escape ``[a][b]`` outside code (shapes such as ``[B][K]``), which Markdown and autorefs
    would read as a reference link."""
    parts = CODE_SPAN.split(text)
    return "".join(part if i % 2 else part.replace("][", "]\\[") for i, part in enumerate(parts))
