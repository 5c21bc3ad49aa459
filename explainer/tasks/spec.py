"""What a task and an output format are: one :class:`TaskSpec` per task, one
:class:`FormatSpec` per output format, holding the code and the facts the runtime, the
exporters, the CLI, the docs and the tests read.

The format specs sit next to their decoders (``SPECS`` at the end of
:mod:`explainer.detection_formats`, :mod:`explainer.segmentation` and
:mod:`explainer.sequence`); the task specs and the lookups are in
:mod:`explainer.tasks.registry`. This module imports nothing of ``explainer``, so the format
modules can use it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FormatSpec", "TaskSpec"]


@dataclass(frozen=True)
class FormatSpec:
    """One output format of a task (the manifest's ``format["name"]``).

    Attributes:
        name: the manifest's, the API's (``format=``) and the CLI's (``--format``) name.
        task: the task it belongs to (a key of :data:`explainer.tasks.TASKS`).
        layout: the outputs' layout, as text (``"[N, 4+C, A]"``).
        doc: what the outputs hold, one or two sentences of Markdown.
        records: the format parameters the manifest's ``format`` records, past ``name``.
        decode: ``(outputs, params, size) -> candidates`` of one image (detection formats).
        terms: ``(candidate, class, params) -> index tuples`` into one image's explained tensor
            whose product is the candidate's confidence: the seeds and the scores of a
            detection are built from them (detection formats).
        emit: the format's ONNX emitter for the explanation graph, where it has one:
            ``(builder, scores, params, classes) -> (predicted, probabilities, areas)`` for
            a segmentation format (see :func:`explainer.segmentation.emit_masks`).
        default_targets: the targets a bundle of this format explains when none are given
            (None: the task's).
    """

    name: str
    task: str
    layout: str
    doc: str
    records: tuple[str, ...] = ()
    decode: Callable[..., Any] | None = None
    terms: Callable[..., Any] | None = None
    emit: Callable[..., Any] | None = None
    default_targets: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One task a bundle can have.

    Attributes:
        name: the manifest's, the API's (``task=``) and the CLI's (``--task``) name.
        title: display name.
        planner: the :class:`~explainer.tasks.planners.Planner` class that picks an image's
            targets and builds their seeds (None for ``classify``, which ranks its classes).
        default_targets: the targets explained when none are given.
        items: the key under which a summary row lists the explained items
            (``"detections"``, ``"regions"``, ``"characters"``; None for ``classify``).
        drawer: how a figure shows an explained item: ``"classes"`` (no overlay),
            ``"boxes"`` (its box over the heatmap) or ``"text"`` (the decoded string in the
            title), a key of :data:`explainer.visualize.ITEM_DRAWERS`.
        report: the items table of a summary row: (name column, extra column or None, the
            note when there is nothing).
        nothing: what a row says when its image had nothing to explain.
        in_graph: the one-call explanation graph can serve the task (its targets are chosen
            inside the graph, not decoded in numpy).
        doc: one sentence about the task (the docs' formats table).
        models: what its models are called, plural (``"detectors"``; the CLI's help).
    """

    name: str
    title: str
    planner: type | None
    default_targets: str
    items: str | None
    drawer: str
    report: tuple[str, str | None, str] | None
    nothing: str
    in_graph: bool
    doc: str
    models: str = ""
