"""mkdocs hooks: the CAM methods page and the formats table are generated from the registries.

``docs/methods.md`` holds the marker ``<!-- methods-registry -->``; at build time it is replaced
by a table of every entry of :data:`explainer.methods.METHODS` and one section per method, read
from the registry's ``MethodSpec`` fields. Nothing on the page is written by hand twice: a
method added to the registry appears on the site with its paper, formula and peers.

``docs/tasks/formats.md`` holds ``<!-- formats-registry -->``, replaced the same way by a table
of every task of :data:`explainer.tasks.TASKS` and every output format of
:data:`explainer.tasks.FORMATS` (``TaskSpec`` and ``FormatSpec`` fields).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Mapping
from typing import Any

from mkdocs.exceptions import PluginError

MARKER = "<!-- methods-registry -->"
METHODS_PAGE = "methods.md"
FORMATS_MARKER = "<!-- formats-registry -->"
FORMATS_PAGE = "tasks/formats.md"
#: the ``TaskSpec`` and ``FormatSpec`` fields the formats table is rendered from
TASK_FIELDS = ("name", "title", "planner", "default_targets", "in_graph", "doc")
FORMAT_FIELDS = ("name", "task", "layout", "doc", "records", "emit", "default_targets")

#: The ``MethodSpec`` fields the page is rendered from (the registry's shared contract).
SPEC_FIELDS = ("name", "title", "kind", "weights", "emit", "per_position", "needs_cam", "paper",
               "formula", "peers", "tolerance")

KINDS = {
    "closed-form": "weights from the activation and its gradient only",
    "model": "runs the model (or reads its weights) again",
    "pixel": "input-space map",
}

ROLE = re.compile(r":(?:py:)?\w+:`~?(?P<target>[^`]+)`")
CODE_SPAN = re.compile(r"(``.+?``|`[^`\n]+`)", re.DOTALL)


def load_registry() -> Mapping[str, Any]:
    """``explainer.methods.METHODS``, checked against the ``MethodSpec`` contract.

    Raises:
        PluginError: when the registry cannot be imported or its entries are not
            ``MethodSpec``-like, naming what is missing; the page is never filled by hand.
    """
    try:
        methods = importlib.import_module("explainer.methods")
    except ImportError as exc:
        raise PluginError(
            f"docs/hooks.py: cannot import explainer.methods ({exc}); build the docs in the "
            "environment where onnxcam is installed (`make docs`)"
        ) from exc
    registry = getattr(methods, "METHODS", None)
    if not isinstance(registry, Mapping) or not registry:
        raise PluginError("docs/hooks.py: explainer.methods.METHODS is missing or empty; the "
                          "methods page is generated from it")
    for name, spec in registry.items():
        missing = [field for field in SPEC_FIELDS if not hasattr(spec, field)]
        if missing:
            raise PluginError(
                f"docs/hooks.py: explainer.methods.METHODS[{name!r}] is a "
                f"{type(spec).__name__}, not a MethodSpec: it lacks {', '.join(missing)}. "
                "The methods page is rendered from MethodSpec entries (name, title, kind, "
                "weights, emit, per_position, needs_cam, paper, formula, peers, tolerance)"
            )
        if spec.name != name:
            raise PluginError(f"docs/hooks.py: METHODS[{name!r}] has name {spec.name!r}; the "
                              "key and MethodSpec.name must agree")
    return registry


def slug(name: str) -> str:
    """The anchor of a method's section (``gradcam++`` -> ``method-gradcampp``)."""
    return "method-" + re.sub(r"[^a-z0-9-]", "", name.lower().replace("+", "p"))


def _cell(text: str) -> str:
    """``text`` made safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _notes(function: Any) -> str:
    """The docstring of a method's weights function past its title line, up to its
    ``Args:``/``Returns:`` sections, Sphinx roles shown as code: its details and any
    deliberate difference from other libraries."""
    doc = inspect.getdoc(function) if function is not None else None
    if not doc:
        return ""
    paragraphs = []
    for paragraph in doc.split("\n\n")[1:]:
        if re.match(r"(Args|Arguments|Returns|Raises|Yields|Examples?):", paragraph):
            break
        text = " ".join(ROLE.sub(lambda m: f"`{m['target']}`", paragraph).split())
        # shapes such as [B][K] outside code would read as Markdown reference links
        parts = CODE_SPAN.split(text)
        paragraphs.append("".join(part if i % 2 else part.replace("][", "]\\[")
                                  for i, part in enumerate(parts)))
    return "\n\n".join(paragraphs)


def _peers(spec: Any) -> str:
    peers = dict(spec.peers or {})
    return ", ".join(f"{lib}: `{cls}`" for lib, cls in peers.items()) or "none"


def render(registry: Mapping[str, Any]) -> str:
    """The table and the per-method sections, in the registry's order."""
    lines = [
        "| method | name | kind | one-call explanation graph | per position |",
        "|---|---|---|---|---|",
    ]
    for name, spec in registry.items():
        lines.append(
            f"| [{_cell(spec.title)}](#{slug(name)}) | `{name}` | {spec.kind} | "
            f"{'yes' if spec.emit is not None else 'no'} | "
            f"{'yes' if spec.per_position else 'no'} |"
        )
    for name, spec in registry.items():
        lines += ["", f"### {spec.title} {{#{slug(name)}}}", ""]
        lines.append(f"`method=\"{name}\"` in Python, `--method {name}` on the command line.")
        lines.append("")
        details = [f"**Kind:** {spec.kind} ({KINDS.get(spec.kind, 'see the registry')})."]
        if spec.formula:
            details.append(f"**Formula:** {spec.formula}")
        if spec.paper:
            details.append(f"**Paper:** {spec.paper}")
        details.append(
            "**Where it runs:** "
            + ("the one-call explanation graph (an ONNX emitter) and the two-graph path."
               if spec.emit is not None else "the two-graph path (numpy after the graphs).")
        )
        if spec.per_position:
            details.append("**Weights:** per position (one weight per channel and position).")
        if spec.needs_cam:
            details.append("**Needs:** the Grad-CAM heatmap of the same target, which it "
                           "multiplies.")
        details.append(f"**Peers:** {_peers(spec)}.")
        details.append(f"**Tolerance against the PyTorch reference in the tests:** "
                       f"{spec.tolerance:g}.")
        lines += [f"* {d}" for d in details]
        notes = _notes(spec.weights)
        if notes:
            lines += ["", notes]
    return "\n".join(lines) + "\n"


def load_task_registry() -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """``explainer.tasks.TASKS`` and ``explainer.tasks.FORMATS``, checked against the
    ``TaskSpec``/``FormatSpec`` contract.

    Raises:
        PluginError: when the registry cannot be imported, is empty, or an entry lacks a field.
    """
    try:
        tasks = importlib.import_module("explainer.tasks")
        registries = (tasks.TASKS, tasks.FORMATS)
    except (ImportError, AttributeError) as exc:
        raise PluginError(
            f"docs/hooks.py: cannot load explainer.tasks.TASKS/FORMATS ({exc}); build the docs "
            "in the environment where onnxcam is installed (`make docs`)"
        ) from exc
    for registry, fields, kind in zip(registries, (TASK_FIELDS, FORMAT_FIELDS),
                                      ("TASKS", "FORMATS"), strict=True):
        if not isinstance(registry, Mapping) or not registry:
            raise PluginError(f"docs/hooks.py: explainer.tasks.{kind} is missing or empty; the "
                              "formats table is generated from it")
        for name, spec in registry.items():
            missing = [field for field in fields if not hasattr(spec, field)]
            if missing:
                raise PluginError(f"docs/hooks.py: explainer.tasks.{kind}[{name!r}] lacks "
                                  f"{', '.join(missing)}; the formats table is rendered from "
                                  f"its fields ({', '.join(fields)})")
    return registries


def render_formats(tasks: Mapping[str, Any], formats: Mapping[str, Any]) -> str:
    """The tasks table, then the formats table, in the registries' order."""
    lines = [
        "| task | outputs | default targets | one-call explanation graph | formats |",
        "|---|---|---|---|---|",
    ]
    for name, task in tasks.items():
        names = ", ".join(f"`{f}`" for f, spec in formats.items() if spec.task == name)
        lines.append(f"| [{_cell(task.title)}]({name}.md) (`{name}`) | {_cell(task.doc)} | "
                     f"`{task.default_targets}` | {'yes' if task.in_graph else 'no'} | "
                     f"{names or 'none'} |")
    lines += [
        "",
        "| format | task | layout | outputs | default targets | recorded in the manifest | "
        "in the explanation graph |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, spec in formats.items():
        targets = spec.default_targets or tasks[spec.task].default_targets
        records = ", ".join(f"`{r}`" for r in ("name", *spec.records))
        lines.append(f"| `{name}` | {spec.task} | `{_cell(spec.layout)}` | {_cell(spec.doc)} | "
                     f"`{targets}` | {records} | {'yes' if spec.emit is not None else 'no'} |")
    return "\n".join(lines) + "\n"


def _fill(markdown: str, page: str, marker: str, text: Any) -> str:
    if marker not in markdown:
        raise PluginError(f"docs/{page} lost its {marker} marker: the generated table goes "
                          "there")
    return markdown.replace(marker, text())


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill the methods page's and the formats page's markers with the rendered registries."""
    if page.file.src_uri == METHODS_PAGE:
        return _fill(markdown, METHODS_PAGE, MARKER, lambda: render(load_registry()))
    if page.file.src_uri == FORMATS_PAGE:
        return _fill(markdown, FORMATS_PAGE, FORMATS_MARKER,
                     lambda: render_formats(*load_task_registry()))
    return markdown
