"""The task and format registry: one :class:`TaskSpec` per task in :data:`TASKS`, one
:class:`FormatSpec` per output format in :data:`FORMATS`; the runtime's dispatch (the planner
of a bundle, its default targets), the exporters' name lists, the CLI's choices and the docs'
formats table are derived from them.

Adding a format is its :class:`FormatSpec` at the end of its task's module (``SPECS`` in
:mod:`explainer.detection_formats`, :mod:`explainer.segmentation` or :mod:`explainer.sequence`)
with its decoder function, and a row in the tests; adding a task is a planner in
:mod:`explainer.tasks.planners` and its spec here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import detection_formats, segmentation, sequence
from ..errors import TargetError, UsageError
from ..segmentation import DEFAULT_THRESHOLD, class_of, keyword, region_terms
from .planners import DetectPlanner, Planner, SegmentPlanner, SequencePlanner
from .spec import FormatSpec, TaskSpec

__all__ = ["FORMATS", "TASKS", "default_targets", "format_help", "format_names",
           "format_spec",
           "graph_classes", "planner", "task_of_format"]

_TASKS = (
    TaskSpec("classify", "Classify", None, "top1", None, "classes", None, "", True,
             "one score per class: `[N, C]` (or `[N, 1, ..., C]`)", "classifiers"),
    TaskSpec("detect", "Detect", DetectPlanner, "detections", "detections", "boxes",
             ("class", None, "no detection"), "no detection to explain", False,
             "boxes and class scores, decoded in numpy; one map per detection", "detectors"),
    TaskSpec("segment", "Segment", SegmentPlanner, "classes", "regions", "boxes",
             ("class", "area", "nothing to explain"), "no region to explain", True,
             "per-pixel class scores; one map per class or region over its predicted mask",
             "segmenters"),
    TaskSpec("sequence", "Sequence (text recognition)", SequencePlanner, "characters",
             "characters", "text", ("character", "timesteps", "nothing to explain"),
             "no character decoded", False,
             "per-timestep scores over a vocabulary (CTC); one map per decoded character",
             "text recognizers"),
)
#: every task, in display order: name -> spec
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _TASKS}

#: every output format, by task and in display order: name -> spec
FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for module in (detection_formats, segmentation, sequence)
    for spec in module.SPECS
}


def format_names(task: str) -> tuple[str, ...]:
    """The names of ``task``'s formats, in registry order (empty for ``classify``)."""
    return tuple(name for name, spec in FORMATS.items() if spec.task == task)


def format_help() -> str:
    """The formats by task, as the CLI's ``--format`` help lists them (``detectors yolov8,
    ...; segmenters masks, binary; ...``)."""
    return "; ".join(f"{spec.models} {', '.join(names)}" for task, spec in TASKS.items()
                     if (names := format_names(task)))


def task_of_format(name: str) -> str | None:
    """The task the format ``name`` belongs to, None for an unknown name."""
    spec = FORMATS.get(name)
    return spec.task if spec is not None else None


def format_spec(params: dict[str, Any] | str) -> FormatSpec:
    """The spec of a format, given its name or the manifest's ``format`` parameters.

    Raises:
        UsageError: an unknown format name, listing the known ones.
    """
    name = params.get("name") if isinstance(params, dict) else params
    spec = FORMATS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UsageError(f"unknown output format {name!r}; known formats: {list(FORMATS)}")
    return spec


def default_targets(task: str, params: dict[str, Any] | None = None) -> str:
    """The targets a ``task`` bundle of format ``params`` explains when none are given."""
    spec = FORMATS.get((params or {}).get("name", ""))
    if spec is not None and spec.default_targets is not None:
        return spec.default_targets
    return TASKS[task].default_targets


def planner(task: str, fmt: dict[str, Any], labels: Sequence[str] | None, num_classes: int,
            spec: Any, score: str, **options: Any) -> Planner:
    """The planner of ``task``; ``options`` are the task's own (``conf``, ``iou``,
    for detectors, ``threshold`` for segmenters, ``top_k``).

    Raises:
        UsageError: a task with no planner (``classify``) or an unknown one.
        TargetError: an option another task takes, or a malformed spec.
    """
    task_spec = TASKS.get(task)
    if task_spec is None or task_spec.planner is None:
        planned = [name for name, t in TASKS.items() if t.planner is not None]
        raise UsageError(f"task {task!r} has no target planner; the planned tasks: {planned}")
    cls: type[Planner] = task_spec.planner
    unknown = sorted(set(options) - {"top_k", *cls.options})
    if unknown:
        flags = ", ".join(f"--{o.replace('_', '-')}" for o in unknown)
        raise TargetError(f"{unknown} ({flags}) do not apply to a {task} bundle; its options: "
                          f"{list(cls.options) or 'none'} and top_k")
    return cls(fmt, labels, num_classes, spec, score, **options)


def graph_classes(plan: Planner) -> list[int] | None:
    """The class ids a segmenter's explanation graph can explain for ``plan`` (classes over
    their predicted masks, given by id or name, at the graph's threshold of 0.5), else None."""
    if not isinstance(plan, SegmentPlanner) or plan.threshold != DEFAULT_THRESHOLD:
        return None
    if FORMATS[plan.fmt["name"]].emit is None:
        return None
    classes = []
    for term in region_terms(plan.spec, plan.fmt):  # "classes", "regions", "topK", a dict: no
        if isinstance(term, dict) or keyword(term):
            return None
        classes.append(class_of(term, plan.labels, plan.num_classes))  # checked by the planner
    return classes if classes and len(set(classes)) == len(classes) else None
