"""Print the README's table of CAM methods from ``bench_methods.py``'s rows.

One table per model: each method's formula and paper, how onnxcam ran it, and at each batch
size onnxcam's time, its ratio to plain inference, pytorch-grad-cam's and torchcam's times.
The formulas and papers are the methods' specs (``formula``, ``paper`` of
``explainer.methods.METHODS``), so the table cannot drift from the registry; rows are in
registry order.

Usage::

    python benchmarks/bench_methods.py --json benchmarks/methods_results.json
    python benchmarks/methods_table.py benchmarks/methods_results.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from explainer.methods import METHODS

#: the columns of one batch size: (row field, header)
COLUMNS = [("onnxcam_ms", "onnxcam ms"), ("vs_inference", "x inference"),
           ("pytorch_grad_cam_ms", "pytorch-grad-cam ms"), ("torchcam_ms", "torchcam ms")]


def check_specs() -> None:
    """Fail when a registered method has no formula or no paper to show."""
    problems = [f"{m}: no {what} in its spec" for m, spec in METHODS.items()
                for what in ("formula", "paper") if not getattr(spec, what).strip()]
    if problems:
        raise SystemExit("methods_table.py: incomplete method specs:\n" + "\n".join(problems))


def _markdown(text: str) -> str:
    """Markdown text as one table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _cell(row: dict[str, Any] | None, field: str) -> str:
    """One timing cell: the figure, ``(1 call)`` where it was timed once, or why it is empty."""
    if row is None:
        return "not timed"
    value = row.get(field)
    column = "onnxcam_ms" if field == "vs_inference" else field
    if value is None:
        note = row.get("note", "")
        if f"{column} skipped" in note:
            return "skipped"
        if f"{column} failed" in note:
            return "failed"
        peers = row.get("peers")
        if peers is None or field not in ("pytorch_grad_cam_ms", "torchcam_ms"):
            return "-"  # rows written before bench_methods.py recorded its peers
        return "not timed" if peers.get(field.removesuffix("_ms")) else "no peer"
    if field == "vs_inference":
        return f"{value}x"
    return f"{value} (1 call)" if column in row.get("single_call", []) else f"{value}"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The README tables (one per model), each followed by its rows' notes."""
    out: list[str] = []
    models = list(dict.fromkeys(r.get("model", "resnet18") for r in rows))
    for model in models:
        mine = [r for r in rows if r.get("model", "resnet18") == model]
        batches = sorted({r["batch"] for r in mine})
        by_key = {(r["method"], r["batch"]): r for r in mine}
        methods = [m for m in METHODS if any(r["method"] == m for r in mine)]
        layer = mine[0].get("layer", "layer4")
        out.append(f"**{model}** (`{layer}`, {mine[0].get('threads', 2)} threads)")
        out.append("")
        head = ["method", "formula", "paper", "onnxcam path"]
        head += [f"b{b}: {name}" for b in batches for _, name in COLUMNS]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for method in methods:
            spec = METHODS[method]
            path = next((by_key[(method, b)].get("path", "") for b in batches
                         if (method, b) in by_key), "")
            cells = [f"`{method}`", _markdown(spec.formula), _markdown(spec.paper), path]
            cells += [_cell(by_key.get((method, b)), field)
                      for b in batches for field, _ in COLUMNS]
            out.append("| " + " | ".join(cells) + " |")
        notes = [f"* `{r['method']}` batch {r['batch']}: {r['note']}"
                 for r in mine if r.get("note")]
        batched = {r["method"]: r["perturbation_batch"] for r in mine if "perturbation_batch" in r}
        notes += [f"* `{m}` rows per run: " + ", ".join(f"{k} {v}" for k, v in b.items())
                  for m, b in batched.items()]
        if notes:
            out += ["", *notes]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(path: str) -> None:
    """Check the specs, then print the tables of ``path``'s rows."""
    check_specs()
    with open(path) as f:
        rows = json.load(f)
    print(to_markdown(rows), end="")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
