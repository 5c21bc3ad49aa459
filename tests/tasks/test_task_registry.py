"""The task and format registry (:mod:`explainer.tasks`): one spec per task and per output
format, and everything that lists tasks or formats (the exporters, the CLI, the manifest, the
report, the figures, the docs) derived from it. Torch-free."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from explainer import detection_formats, manifest, report, segmentation, sequence
from explainer.errors import TargetError, UsageError
from explainer.tasks import (
    FORMATS,
    TASKS,
    FormatSpec,
    Planner,
    TaskSpec,
    default_targets,
    format_names,
    format_spec,
    graph_classes,
    planner,
)
from explainer.visualize import ITEM_DRAWERS, item_boxes

ROOT = Path(__file__).resolve().parents[2]
SPEC_MODULES = (detection_formats, segmentation, sequence)
PLANNED = [name for name, spec in TASKS.items() if spec.planner is not None]


def test_names_are_unique_and_match_their_keys():
    every = [spec.name for module in SPEC_MODULES for spec in module.SPECS]
    assert len(every) == len(set(every)) == len(FORMATS)
    assert all(isinstance(spec, FormatSpec) and spec.name == name
               for name, spec in FORMATS.items())
    assert all(isinstance(spec, TaskSpec) and spec.name == name for name, spec in TASKS.items())
    assert not set(TASKS) & set(FORMATS)


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_belongs_to_a_planned_task(name):
    spec = FORMATS[name]
    assert spec.task in PLANNED
    assert spec.layout.startswith(("[", "boxes", "per stride")) and spec.doc
    assert default_targets(spec.task, {"name": name}) == (spec.default_targets
                                                          or TASKS[spec.task].default_targets)
    if spec.task == "detect":  # a detector is decoded and seeded in numpy
        assert spec.decode is not None and spec.terms is not None
        assert detection_formats.FORMATS[name] is spec
    if TASKS[spec.task].in_graph:  # the explanation graph chooses its targets itself
        assert spec.emit is not None


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_has_a_planner_a_drawer_and_a_report_row(name):
    spec = TASKS[name]
    assert spec.drawer in ITEM_DRAWERS
    if spec.planner is None:  # a classifier ranks its classes
        assert name == "classify" and not format_names(name) and spec.items is None
        return
    assert issubclass(spec.planner, Planner) and spec.planner.task == name
    assert format_names(name), f"task {name} has no format"
    assert report._ITEMS[spec.items] == spec.report
    assert spec.nothing and spec.default_targets


def test_planner_dispatches_by_the_registry():
    fmt = {"name": "yolov8", "outputs": {"predictions": "out"}, "classes": 3}
    plan = planner("detect", fmt, None, 3, None, "logit", conf=0.5)
    assert isinstance(plan, TASKS["detect"].planner) and plan.conf == 0.5
    seg = planner("segment", {"name": "binary", "outputs": {"masks": "m"}, "classes": 1},
                  None, 1, None, "logit")
    assert isinstance(seg, TASKS["segment"].planner)
    with pytest.raises(TargetError, match=r"conf.*do not apply to a segment bundle"):
        planner("segment", {"name": "masks", "outputs": {"masks": "m"}}, None, 3, None,
                "logit", conf=0.5)
    with pytest.raises(UsageError, match="'classify' has no target planner"):
        planner("classify", {}, None, 3, None, "logit")


def test_graph_classes_need_an_emitter_and_the_default_threshold():
    fmt = {"name": "masks", "outputs": {"masks": "m"}, "classes": 4}
    assert graph_classes(planner("segment", fmt, None, 4, [2, 1], "logit")) == [2, 1]
    assert graph_classes(planner("segment", fmt, None, 4, [2], "logit", threshold=0.3)) is None
    assert graph_classes(planner("segment", fmt, None, 4, "classes", "logit")) is None


def test_format_spec_names_the_unknown_format():
    assert format_spec({"name": "ctc"}) is FORMATS["ctc"]
    with pytest.raises(UsageError, match=r"unknown output format 'yolo9'.*'yolov8'"):
        format_spec("yolo9")


def test_segmentation_dispatch_reads_the_format():
    scores = np.array([[[0.2, 3.0], [-1.0, 0.1]]], np.float32)  # one binary map [1, 2, 2]
    binary = {"name": "binary", "explained": "logits"}
    assert segmentation.predicted(scores, binary).tolist() == [[0, 0], [-1, 0]]
    assert segmentation.predicted(scores, binary, 0.9).tolist() == [[-1, 0], [-1, -1]]
    masks = np.stack([scores[0], -scores[0]])  # two classes
    assert segmentation.predicted(masks, {"name": "masks"}).tolist() == [[0, 0], [1, 0]]
    assert segmentation.region_terms(None, binary) == ["regions"]
    assert segmentation.region_terms(None, {"name": "masks"}) == ["classes"]


def test_figures_draw_boxes_by_the_task_drawer():
    class Item:
        box = (1.0, 2.0, 3.0, 4.0)

    drawn = {name: item_boxes(spec.drawer, [Item()]) for name, spec in TASKS.items()}
    assert drawn["detect"] == drawn["segment"] == [Item.box]
    assert drawn["sequence"] is None and drawn["classify"] is None
    assert item_boxes(TASKS["detect"].drawer, None) is None


def test_manifest_tasks_equal_the_registry():
    assert tuple(manifest.TASKS) == tuple(TASKS)


def test_the_exporters_lists_equal_the_registry():
    tasks = pytest.importorskip("exporters.onnx_frontend.tasks")
    assert tasks.TASKS == tuple(TASKS)
    assert tasks.FORMATS == {t: format_names(t) for t in TASKS if format_names(t)}
    assert tasks.DETECT_FORMATS == format_names("detect")
    assert tasks.SEGMENT_FORMATS == format_names("segment") == segmentation.SEGMENT_FORMATS
    assert tasks.SEQUENCE_FORMATS == format_names("sequence")


def test_recognised_formats_record_only_their_parameters():
    """What the export's shape rules write in the manifest's format: the spec's records."""
    formats = pytest.importorskip("exporters.onnx_frontend.formats")
    f32 = TensorProto.FLOAT
    hw = (64, 64)
    anchors = sum((64 // s) ** 2 for s in (8, 16, 32))
    found = [
        formats.detect_format({"p": [1, 6, anchors]}, {"p": f32}, hw),
        formats.detect_format({"p": [1, anchors, 7]}, {"p": f32}, hw),
        formats.detect_format({"p": [1, 100, 6]}, {"p": f32}, hw),
        formats.detect_format({"boxes": [5, 4], "scores": [5], "labels": [5]},
                              {"boxes": f32, "scores": f32, "labels": TensorProto.INT64}, hw),
        formats.dense_format("segment", {"m": [1, 3, 64, 64]}, {"m": f32},
                             {"m": np.zeros((1, 3, 64, 64), np.float32)}, None, None, hw),
        formats.dense_format("segment", {"m": [1, 1, 64, 64]}, {"m": f32},
                             {"m": np.zeros((1, 1, 64, 64), np.float32)}, None, None, hw),
        formats.dense_format("sequence", {"l": [1, 20, 30]}, {"l": f32},
                             {"l": np.zeros((1, 20, 30), np.float32)}, None, None, hw),
    ]
    names = [fmt["name"] for fmt in found]
    assert names == ["yolov8", "yolov5", "end2end", "boxes_scores_labels", "masks", "binary",
                     "ctc"]
    for fmt in found:
        assert set(fmt) - {"name"} <= set(FORMATS[fmt["name"]].records), fmt


def test_cli_choices_equal_the_registry():
    from explainer.cli import build_parser

    parser = build_parser()
    for command in ("export", "inspect"):
        sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        actions = {a.dest: a for a in sub._actions}
        assert list(actions["task"].choices) == ["auto", *TASKS]
        listed = re.findall(r"[a-z0-9_]+", actions["format"].help)
        assert set(FORMATS) <= set(listed)


def test_docs_have_a_page_per_task_and_the_formats_table():
    pages = {path.stem for path in (ROOT / "docs" / "tasks").glob("*.md")}
    assert set(TASKS) <= pages
    formats_page = (ROOT / "docs" / "tasks" / "formats.md").read_text(encoding="utf-8")
    assert formats_page.count("<!-- formats-registry -->") == 1
    if importlib.util.find_spec("mkdocs") is None:
        return  # the hooks import mkdocs
    spec = importlib.util.spec_from_file_location("onnxcam_docs_hooks", ROOT / "docs/hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    table = hooks.render_formats(*hooks.load_task_registry())
    for name, fmt in FORMATS.items():
        assert f"| `{name}` | {fmt.task} |" in table
    for name in TASKS:
        assert f"(`{name}`)" in table
