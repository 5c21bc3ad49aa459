"""Tasks and their output formats: one :class:`~explainer.tasks.spec.TaskSpec` per task and
one :class:`~explainer.tasks.spec.FormatSpec` per format (see :mod:`.registry`), and the
planners that turn an image's outputs into explained targets (see :mod:`.planners`).

Every task other than ``classify`` goes the same way in :meth:`Explainer.explain`: the head's
outputs of one image -> the targets of that image (a planner's :meth:`~Planner.plan`) -> one
seed over the explained tensor per target -> one gradient-head row per target -> the CAMs.

The names load on first access, so the format modules can import :mod:`.spec` without
loading the planners (which import them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_getattr

if TYPE_CHECKING:
    from .planners import DetectPlanner, Planner, SegmentPlanner, SequencePlanner
    from .registry import (
        FORMATS,
        TASKS,
        default_targets,
        format_help,
        format_names,
        format_spec,
        graph_classes,
        planner,
        task_of_format,
    )
    from .spec import FormatSpec, TaskSpec

__all__ = ["FORMATS", "TASKS", "DetectPlanner", "FormatSpec", "Planner", "SegmentPlanner",
           "SequencePlanner", "TaskSpec", "default_targets", "format_help", "format_names",
           "format_spec", "graph_classes", "planner", "task_of_format"]

#: name -> the module (of this package) that defines it
_LAZY = {
    "DetectPlanner": "planners", "Planner": "planners", "SegmentPlanner": "planners",
    "SequencePlanner": "planners", "FORMATS": "registry", "TASKS": "registry",
    "default_targets": "registry", "format_help": "registry", "format_names": "registry",
    "format_spec": "registry",
    "graph_classes": "registry", "planner": "registry", "task_of_format": "registry",
    "FormatSpec": "spec", "TaskSpec": "spec",
}


__getattr__ = lazy_getattr(__name__, _LAZY, __name__)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
