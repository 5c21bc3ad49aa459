"""A static HTML gallery of a folder run: ``index.html`` (and ``page-N.html``) beside
``summary.json``.

Offline by construction: one self-contained file per page, inline CSS, no script, no fonts or
anything else fetched; images are the run's own overlay PNGs, referenced by relative paths, so
the folder can be moved or archived as a whole. Large runs are split into pages of
``page_size`` entries, and images load lazily (``loading="lazy"``) as they scroll into view.
Every page lists the failed images at the top.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from .errors import UsageError
from .outputs import save_text
from .tasks.registry import TASKS

__all__ = ["BASE_CSS", "page_name", "write_report"]

#: the page base both HTML reports share (folder runs' and evaluations'): colours, header,
#: the run's facts (dl.meta)
BASE_CSS = """
:root { --fg: #1d2430; --muted: #5d6778; --line: #dde2ea; --bg: #f5f7fa; --accent: #2f6fde;
        --good: #107c41; --bad: #b42318; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 16px 24px; }
h1 { font-size: 20px; margin: 0 0 6px; }
dl.meta { display: flex; flex-wrap: wrap; gap: 4px 24px; margin: 0; color: var(--muted); }
dl.meta div { display: flex; } dl.meta dt { font-weight: 600; color: var(--fg); }
dl.meta dd { margin: 0 0 0 6px; word-break: break-all; }
main { max-width: 1400px; }
"""

_CSS = BASE_CSS + """
main { padding: 16px 24px; }
nav.pages { margin: 8px 0 16px; display: flex; gap: 6px; flex-wrap: wrap; }
nav.pages a, nav.pages span { padding: 2px 9px; border: 1px solid var(--line);
       border-radius: 4px; background: #fff; text-decoration: none; color: var(--accent); }
nav.pages span.current { background: var(--accent); color: #fff; border-color: var(--accent); }
section.errors { background: #fff4f2; border: 1px solid #f3c7c1; border-radius: 6px;
       padding: 8px 16px; margin-bottom: 16px; }
section.errors h2 { font-size: 15px; margin: 4px 0 8px; color: var(--bad); }
section.errors li { margin-bottom: 4px; word-break: break-all; }
.gallery { display: grid; gap: 14px; }
.entry { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px;
       display: grid; grid-template-columns: minmax(0, 1fr) 340px; gap: 6px 18px;
       align-items: start; }
.entry h3 { grid-column: 1 / -1; font-size: 14px; margin: 0; word-break: break-all; }
.entry h3 .index { color: var(--muted); font-weight: 400; margin-right: 6px; }
.entry img { max-width: 100%; height: auto; display: block; border-radius: 3px; }
.entry a.figure { display: block; min-width: 0; }
.entry.failed { border-color: #f3c7c1; }
.entry .error { grid-column: 1 / -1; color: var(--bad); word-break: break-word; }
table.classes { border-collapse: collapse; width: 100%; font-size: 13px; }
table.classes th, table.classes td { text-align: left; padding: 3px 4px;
       border-bottom: 1px solid var(--line); font-variant-numeric: tabular-nums; }
table.classes th { color: var(--muted); font-weight: 600; font-size: 12px; }
.bar { background: #e8edf5; border-radius: 3px; height: 8px; width: 60px; }
.bar i { display: block; height: 8px; border-radius: 3px; background: var(--accent); }
@media (max-width: 800px) { .entry { grid-template-columns: 1fr; } }
"""


def page_name(page: int) -> str:
    """File name of page ``page`` (1-based): ``index.html``, then ``page-2.html``, ..."""
    return "index.html" if page == 1 else f"page-{page}.html"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _display_name(row: dict[str, Any], root: str) -> str:
    image = row["image"]
    return os.path.relpath(image, root) if root else image


#: a task's explained items in a summary row: key -> (name column, extra column, empty note)
_ITEMS = {task.items: task.report for task in TASKS.values() if task.items and task.report}


def _items_table(row: dict[str, Any], key: str) -> str:
    """A detector's detections, a segmenter's regions or a text recognizer's characters
    (numbered as on the figure) with their boxes in the original image, or the note that there
    was none; a text line's decoded string above them."""
    name, extra, empty = _ITEMS[key]
    items = row[key]
    text = f"<p>read: <b>{_e(row['text'])}</b></p>" if "text" in row else ""
    if not items:
        return text + f"<p class='note'>{_e(row.get('note') or empty)}</p>"
    extra_head = f"<th>{extra}</th>" if extra else ""
    lines = [text, f"<table class='classes'><tr><th>#</th><th>{name}</th><th>score</th><th>"
             f"</th>{extra_head}<th>box (x1, y1, x2, y2)</th></tr>"]
    for k, item in enumerate(items, 1):
        label = item["text"] if key == "characters" else item.get("label")
        label = label if label is not None else item.get("class_id")
        more = ""
        if extra == "area":
            more = f"<td>{item['area']:.0f}</td>"
        elif extra == "timesteps":
            more = f"<td>{item['timesteps'][0]}-{item['timesteps'][-1]}</td>"
        box = item["image_box"] or item["box"]
        lines.append(
            f"<tr><td>{k}</td><td>{_e(label)}</td><td>{item['score']:.4f}</td><td><div "
            f"class='bar'><i style='width:{100 * item['score']:.1f}%'></i></div></td>"
            f"{more}<td>{_e(', '.join(f'{v:.0f}' for v in box))}</td></tr>")
    return "".join(lines) + "</table>"


def _classes_table(row: dict[str, Any]) -> str:
    for key in _ITEMS:
        if key in row:
            return _items_table(row, key)
    labels = row.get("labels") or [None] * len(row["class_ids"])
    lines = ["<table class='classes'><tr><th>class</th><th>id</th><th>probability</th><th></th>"
             "<th>logit</th></tr>"]
    for label, cid, prob, score in zip(labels, row["class_ids"], row["probabilities"],
                                       row["scores"]):
        lines.append(
            f"<tr><td>{_e(label if label is not None else cid)}</td><td>{cid}</td>"
            f"<td>{prob:.4f}</td><td><div class='bar'><i style='width:{100 * prob:.1f}%'></i>"
            f"</div></td><td>{score:.3f}</td></tr>"
        )
    return "".join(lines) + "</table>"


def _message(row: dict[str, Any]) -> str:
    """The error message without the image path it usually starts with (shown beside it)."""
    message = row["error"]["message"]
    prefix = f"{row['image']}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _entry(row: dict[str, Any], index: int, out: Path, root: str) -> str:
    name = _e(_display_name(row, root))
    head = f"<h3><span class='index'>#{index}</span>{name}</h3>"
    if row["status"] != "ok":
        if not row.get("error"):
            row = {**row, "error": {"type": "pending", "message": "not explained yet"}}
        return (f"<article class='entry failed' id='e{index}'>{head}<p class='error'>"
                f"{_e(row['error']['type'])}: {_e(_message(row))}</p></article>")
    size = ""
    try:
        with Image.open(out / row["overlay"]) as img:  # the header only: width/height attributes
            size = f" width='{img.width}' height='{img.height}'"
    except OSError:
        pass
    src = quote(row["overlay"])
    return (f"<article class='entry' id='e{index}'>{head}<a class='figure' href='{src}'>"
            f"<img src='{src}' loading='lazy' decoding='async' alt='{name}'{size}></a>"
            f"{_classes_table(row)}</article>")


def _header(summary: dict[str, Any]) -> str:
    target = summary.get("target") or {}
    counts = summary.get("counts") or {}
    items = [
        ("model", summary.get("model")),
        ("layer", f"{target.get('layer')} (tensor {target.get('tensor')}, "
                  f"{target.get('layout')})"),
        ("method", summary.get("method")),
        ("targets", summary.get("targets")),
        ("images", f"{counts.get('ok', 0)} explained, {counts.get('error', 0)} failed"
                   + (f", {counts['pending']} pending" if counts.get("pending") else "")),
    ]
    meta = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in items)
    return (f"<header><h1>onnxcam report</h1><dl class='meta'>{meta}</dl>"
            f"<div style='color:#8a93a3;font-size:12px;margin-top:4px'>onnxcam "
            f"{_e(summary.get('onnxcam', ''))}</div></header>")


def _nav(page: int, pages: int) -> str:
    if pages == 1:
        return ""
    links = [f"<span class='current'>{p}</span>" if p == page else
             f"<a href='{page_name(p)}'>{p}</a>" for p in range(1, pages + 1)]
    return f"<nav class='pages'>pages: {''.join(links)}</nav>"


def _errors(rows: Sequence[dict[str, Any]], root: str, page_size: int) -> str:
    failed = [(i, row) for i, row in enumerate(rows, 1) if row["status"] == "error"]
    if not failed:
        return ""
    items = "".join(
        f"<li><a href='{page_name((i - 1) // page_size + 1)}#e{i}'>"
        f"{_e(_display_name(row, root))}</a>: {_e(row['error']['type'])}: "
        f"{_e(_message(row))}</li>" for i, row in failed
    )
    return (f"<section class='errors'><h2>{len(failed)} image(s) failed</h2><ul>{items}</ul>"
            "</section>")


def write_report(out: str | os.PathLike[str], summary: dict[str, Any],
                 page_size: int = 100) -> list[Path]:
    """Write the gallery of ``summary`` (as :class:`explainer.batch.FolderRun` writes it) into
    ``out``; returns the page files, ``out/index.html`` first.

    Raises:
        UsageError: ``page_size`` below 1.
    """
    if page_size < 1:
        raise UsageError(f"report page size must be at least 1, got {page_size}")
    out = Path(out)
    rows = summary["images"]
    try:
        root = os.path.commonpath([os.path.dirname(r["image"]) for r in rows]) if rows else ""
    except ValueError:
        root = ""
    pages = max(1, -(-len(rows) // page_size))
    header, errors = _header(summary), _errors(rows, root, page_size)
    written = []
    for page in range(1, pages + 1):
        start = (page - 1) * page_size
        entries = "".join(_entry(row, start + i + 1, out, root)
                          for i, row in enumerate(rows[start : start + page_size]))
        nav = _nav(page, pages)
        document = (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>onnxcam report: {_e(summary.get('model', ''))} (page {page}/{pages})"
            f"</title><style>{_CSS}</style></head><body>{header}<main>{errors}{nav}"
            f"<div class='gallery'>{entries}</div>{nav}</main></body></html>\n"
        )
        written.append(save_text(document, out / page_name(page)))
    stale = pages + 1
    while (out / page_name(stale)).is_file():  # pages of an earlier, longer report
        (out / page_name(stale)).unlink()
        stale += 1
    return written
