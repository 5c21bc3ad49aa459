"""``report.html``: the evaluation of several CAM methods as one static page, written next to
``metrics.json`` from the same document.

A leaderboard (one row per method: each metric's mean with its 95% confidence interval, the
values averaged, the time per image, the sanity verdict) and the mean deletion and insertion
curves as inline SVG (one polyline per method, ``steps + 1`` points each). Self-contained:
inline CSS, no script, nothing fetched.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..report import BASE_CSS

__all__ = ["CURVES", "mean_curves", "render_report", "write_report"]

#: the metrics whose per-pair curves the report plots
CURVES = ("deletion", "insertion")
#: one colour per method, in order (repeated past the last)
_COLOURS = ("#2f6fde", "#d1495b", "#2a9d8f", "#edae49", "#7b52ab", "#00798c", "#8c564b",
            "#e377c2", "#6b7280", "#17becf")
_CSS = BASE_CSS + """
h2 { font-size: 16px; margin: 20px 0 8px; }
main { padding: 8px 24px 24px; }
table.leaderboard { border-collapse: collapse; background: #fff; border: 1px solid var(--line);
       font-variant-numeric: tabular-nums; }
table.leaderboard th, table.leaderboard td { padding: 5px 10px; text-align: right;
       border-bottom: 1px solid var(--line); white-space: nowrap; }
table.leaderboard th:first-child, table.leaderboard td:first-child { text-align: left; }
table.leaderboard td .ci { color: var(--muted); font-size: 12px; margin-left: 4px; }
table.leaderboard td.best { font-weight: 700; }
td.passed { color: var(--good); } td.failed { color: var(--bad); }
p.note { color: var(--muted); max-width: 900px; }
.curves { display: flex; flex-wrap: wrap; gap: 18px; }
figure.curve { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 6px;
       padding: 8px 10px; }
figure.curve figcaption { font-weight: 600; margin-bottom: 4px; }
ul.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 4px 16px; padding: 0;
       margin: 6px 0 0; }
ul.legend span.swatch { display: inline-block; width: 14px; height: 3px; margin-right: 6px;
       vertical-align: middle; }
svg text { font: 11px system-ui, sans-serif; fill: #5d6778; }
"""


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    return f"{float(value):.{digits}g}"


def mean_curves(method: dict[str, Any], metric: str) -> np.ndarray | None:
    """The mean over the (image, target) pairs of a method's ``metric`` curves (the details of
    its values in ``metrics.json``), or None where it has none."""
    curves = [v["details"]["curve"] for v in method.get("values", [])
              if v.get("metric") == metric and isinstance(v.get("details"), dict)
              and "curve" in v["details"]]
    if not curves or len({len(c) for c in curves}) != 1:
        return None
    return np.asarray(curves, np.float64).mean(axis=0)


def _leaderboard(document: dict[str, Any]) -> str:
    methods: dict[str, Any] = document["methods"]
    metrics = list(dict.fromkeys(m for r in methods.values() for m in r.get("means", {})))
    better = {m: next((r["better"][m] for r in methods.values() if m in r.get("better", {})),
                      "higher") for m in metrics}
    best = {}
    for metric in metrics:
        means = [r["means"].get(metric) for r in methods.values()]
        finite = [v for v in means if v is not None and math.isfinite(v)]
        if len(finite) > 1:
            best[metric] = max(finite) if better[metric] == "higher" else min(finite)
    head = "".join(
        f"<th title='{html.escape(better[m])} is better'>{html.escape(m)} "
        f"{'&uarr;' if better[m] == 'higher' else '&darr;'}</th>" for m in metrics)
    rows = []
    for name, result in methods.items():
        cells = [f"<td>{html.escape(name)}</td>"]
        for metric in metrics:
            mean = result["means"].get(metric)
            low, high = (result.get("ci95", {}).get(metric) or [None, None])
            interval = (f"<span class='ci'>[{_number(low)}, {_number(high)}]</span>"
                        if low is not None and high is not None else "")
            mark = " class='best'" if metric in best and mean == best[metric] else ""
            cells.append(f"<td{mark}>{_number(mean)}{interval}</td>")
        counts = result.get("count", {})
        cells.append(f"<td>{max(counts.values(), default=0)}</td>")
        seconds = result.get("seconds_per_image", {})
        cells.append(f"<td>{_number(seconds.get('explain'), 3)}</td>")
        cells.append(f"<td>{_number(seconds.get('evaluate'), 3)}</td>")
        sanity = result.get("sanity")
        if sanity is None:
            cells.append("<td>&ndash;</td>")
        else:
            verdict = "passed" if sanity.get("passed") else "failed"
            cells.append(f"<td class='{verdict}' title='{html.escape(sanity.get('message', ''))}'>"
                         f"{verdict} (&rho; {_number(sanity.get('spearman'), 3)})</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<table class='leaderboard'><thead><tr><th>method</th>{head}<th>n</th>"
            "<th>explain s/image</th><th>evaluate s/image</th><th>sanity</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _svg(curves: dict[str, np.ndarray], metric: str) -> str:
    """One plot: x the fraction of pixels changed, y the mean score; a polyline per method."""
    width, height, left, right, top, bottom = 460, 260, 48, 12, 10, 34
    values = np.concatenate(list(curves.values()))
    low, high = float(min(values.min(), 0.0)), float(values.max())
    if high - low < 1e-12:
        high = low + 1.0
    span_x, span_y = width - left - right, height - top - bottom

    def px(fraction: float) -> float:
        return left + fraction * span_x

    def py(value: float) -> float:
        return top + (high - value) / (high - low) * span_y

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role='img' aria-label='{metric} curves'>",
             f"<rect x='{left}' y='{top}' width='{span_x}' height='{span_y}' fill='#fff' "
             "stroke='#dde2ea'/>"]
    for i in range(5):
        fraction = i / 4
        value = low + fraction * (high - low)
        parts.append(f"<line x1='{px(fraction):.1f}' y1='{top + span_y}' "
                     f"x2='{px(fraction):.1f}' y2='{top + span_y + 4}' stroke='#5d6778'/>"
                     f"<text x='{px(fraction):.1f}' y='{top + span_y + 16}' "
                     f"text-anchor='middle'>{fraction:g}</text>")
        parts.append(f"<line x1='{left}' y1='{py(value):.1f}' x2='{left + span_x}' "
                     f"y2='{py(value):.1f}' stroke='#eef1f5'/>"
                     f"<text x='{left - 6}' y='{py(value) + 4:.1f}' "
                     f"text-anchor='end'>{value:.3g}</text>")
    parts.append(f"<text x='{left + span_x / 2}' y='{height - 4}' text-anchor='middle'>"
                 f"fraction of pixels {'removed' if metric == 'deletion' else 'inserted'}"
                 "</text>")
    for n, (name, curve) in enumerate(curves.items()):
        steps = len(curve) - 1
        points = " ".join(f"{px(i / max(steps, 1)):.2f},{py(v):.2f}"
                          for i, v in enumerate(curve))
        parts.append(f"<polyline class='method' data-method='{html.escape(name)}' "
                     f"fill='none' stroke='{_COLOURS[n % len(_COLOURS)]}' stroke-width='2' "
                     f"points='{points}'><title>{html.escape(name)}</title></polyline>")
    parts.append("</svg>")
    return "".join(parts)


def _curves(document: dict[str, Any]) -> str:
    figures = []
    for metric in CURVES:
        curves = {name: c for name, r in document["methods"].items()
                  if (c := mean_curves(r, metric)) is not None}
        if not curves:
            continue
        legend = "".join(
            f"<li><span class='swatch' style='background:{_COLOURS[n % len(_COLOURS)]}'>"
            f"</span>{html.escape(name)}</li>" for n, name in enumerate(curves))
        figures.append(f"<figure class='curve' data-metric='{metric}'><figcaption>{metric} "
                       f"(mean score over the pairs)</figcaption>{_svg(curves, metric)}"
                       f"<ul class='legend'>{legend}</ul></figure>")
    if not figures:
        return ""
    return f"<h2>Curves</h2><div class='curves'>{''.join(figures)}</div>"


def _meta(document: dict[str, Any]) -> str:
    first = next(iter(document["methods"].values()), {})
    options = first.get("options", {})
    items = [("model", document.get("model")), ("images", len(document.get("images", []))),
             ("task", first.get("task")), ("score", options.get("score")),
             ("steps", options.get("steps")), ("methods", len(document["methods"]))]
    return "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd></div>"
                   for k, v in items if v is not None)


def render_report(document: dict[str, Any]) -> str:
    """The page of a ``metrics.json`` document (see :func:`write_report`)."""
    definitions = document.get("metrics", {})
    notes = "".join(f"<li><b>{html.escape(m)}</b> ({html.escape(d.get('direction', ''))} is "
                    f"better): {html.escape(d.get('definition', ''))}</li>"
                    for m, d in definitions.items())
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>onnxcam evaluation</title><style>{_CSS}</style></head><body>"
        f"<header><h1>Evaluation</h1><dl class='meta'>{_meta(document)}</dl></header><main>"
        "<h2>Leaderboard</h2>" + _leaderboard(document) +
        "<p class='note'>Each cell: the mean over the (image, target) pairs and, in brackets, "
        "its 95% confidence interval by the normal approximation (mean &plusmn; 1.96 s / "
        "&radic;n); n: the pairs averaged; the best mean of each metric in bold. Times: "
        "wall-clock seconds per image of the explanation and of the evaluation.</p>"
        + _curves(document) +
        (f"<h2>Definitions</h2><ul>{notes}</ul>" if notes else "") +
        "</main></body></html>\n")


def write_report(path: str | Path, document: dict[str, Any],
                 methods: Sequence[str] | None = None) -> Path:
    """Write ``report.html`` for a ``metrics.json`` document (``methods``: a subset, in
    order; default all); returns its path."""
    if methods is not None:
        document = {**document, "methods": {m: document["methods"][m] for m in methods}}
    path = Path(path)
    path.write_text(render_report(document), encoding="utf-8")
    return path
