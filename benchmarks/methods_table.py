"""Print the README's table of CAM methods from ``bench_methods.py``'s rows.

One table per model: each method's formula and paper, how onnxcam ran it, and at each batch
size onnxcam's time, its ratio to plain inference, pytorch-grad-cam's and torchcam's times.
The formulas and papers are quoted from the methods' docstrings (``explainer/methods/*.py``,
and ``explainer/pixels.py`` for the pixel methods); :func:`check_docstrings` fails when a quote
is no longer in its docstring, or a registered method has none, so the table cannot drift
from the code.

Usage::

    python benchmarks/bench_methods.py --json benchmarks/methods_results.json
    python benchmarks/methods_table.py benchmarks/methods_results.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import explainer.pixels
from explainer.methods import METHODS
from explainer.pixels import PIXEL_METHODS

#: method -> (formula fragments, paper), each quoted verbatim (up to whitespace) from its
#: docstring; ``code`` is written as in the docstring and rendered as markdown code
QUOTES: dict[str, tuple[list[str], str]] = {
    "gradcam": (["``w_k = mean_ij g^k_ij``"], "Selvaraju et al., ICCV 2017"),
    "gradcam++": (["``alpha^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3)``",
                   "``w_k = sum_ij alpha^k_ij ReLU(g^k_ij)``"], "Chattopadhay et al., WACV 2018"),
    "xgradcam": (["``w_k = sum_ij (A^k_ij / sum_ab A^k_ab) g^k_ij``"], "Fu et al., BMVC 2020"),
    "hirescam": (["``ReLU(sum_k g^k A^k)``"], "Draelos & Carin, 2020"),
    "gradcam-elementwise": (["``ReLU(sum_k ReLU(g^k A^k))``"],
                            "pytorch-grad-cam's ``GradCAMElementWise``"),
    "layercam": (["``ReLU(sum_k ReLU(g^k) A^k)``"], "Jiang et al., IEEE TIP 2021"),
    "eigencam": (["``ReLU(p)``, ``p`` the first principal component projection of the "
                  "centered activation"], "Muhammad & Yeasin, IJCNN 2020"),
    "eigengradcam": (["``ReLU(p)``, ``p`` the first principal component projection of the "
                      "centered ``g * A``"], "pytorch-grad-cam's ``EigenGradCAM``"),
    "counterfactual": (["``w_k = mean_ij (-g^k_ij)``"], "Selvaraju et al., ICCV 2017"),
    "cam": (["For a head ``logits = W GAP(A) + b``, ``M_c = sum_k W_ck A^k``"],
            "Zhou et al., CVPR 2016"),
    "ablationcam": (["``w_k = (y_c - y_c^k) / y_c``"], "Desai & Ramaswamy, WACV 2020"),
    "scorecam": (["``s_k = y_c(X * H^k)``, and ``w = softmax_k(s_k)``"],
                 "Wang et al., CVPR Workshops 2020"),
    "guided-backprop": (["the gradient of the class score with respect to the input pixels, "
                         "where every ReLU passes only positive gradients"],
                        "Springenberg et al., ICLR 2015 workshop"),
    "guided-gradcam": (["the guided gradient times the Grad-CAM heatmap of the same class"],
                       "Selvaraju et al., ICCV 2017"),
}
#: the columns of one batch size: (row field, header)
COLUMNS = [("onnxcam_ms", "onnxcam ms"), ("vs_inference", "x inference"),
           ("pytorch_grad_cam_ms", "pytorch-grad-cam ms"), ("torchcam_ms", "torchcam ms")]


def _squash(text: str) -> str:
    return " ".join(text.split())


def docstring(method: str) -> str:
    """The docstring the method's quotes come from (whitespace collapsed)."""
    if method in PIXEL_METHODS:
        return _squash(explainer.pixels.__doc__ or "")
    return _squash(METHODS[method].__doc__ or "")


def check_docstrings() -> None:
    """Fail when a registered method has no quotes or a quote is not in its docstring."""
    problems = [f"{m}: no entry in QUOTES" for m in [*METHODS, *PIXEL_METHODS] if m not in QUOTES]
    for method, (formula, paper) in QUOTES.items():
        text = docstring(method) if method in METHODS or method in PIXEL_METHODS else ""
        problems += [f"{method}: {quote!r} is not in its docstring"
                     for quote in [*formula, paper] if _squash(quote) not in text]
    if problems:
        raise SystemExit("methods_table.py is out of date:\n" + "\n".join(problems))


def _markdown(text: str) -> str:
    return text.replace("``", "`").replace("|", "\\|")


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
        methods = [m for m in QUOTES if any(r["method"] == m for r in mine)]
        layer = mine[0].get("layer", "layer4")
        out.append(f"**{model}** (`{layer}`, {mine[0].get('threads', 2)} threads)")
        out.append("")
        head = ["method", "formula", "paper", "onnxcam path"]
        head += [f"b{b}: {name}" for b in batches for _, name in COLUMNS]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for method in methods:
            formula, paper = QUOTES[method]
            path = next((by_key[(method, b)].get("path", "") for b in batches
                         if (method, b) in by_key), "")
            cells = [f"`{method}`", _markdown("; ".join(formula)), _markdown(paper), path]
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
    """Check the quotes against the docstrings, then print the tables of ``path``'s rows."""
    check_docstrings()
    with open(path) as f:
        rows = json.load(f)
    print(to_markdown(rows), end="")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
