"""What a folder run explains and writes: :class:`RunOptions`, checked before any image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .detection import DEFAULT_CONF, DEFAULT_IOU, check_renormalize
from .errors import TargetError, UsageError
from .layers import check_fuse
from .pixels import PIXEL_METHODS
from .segmentation import DEFAULT_THRESHOLD
from .targets import check_score, plan_targets
from .tasks import planner
from .visualize import COLORMAPS

__all__ = ["RunOptions"]


@dataclass
class RunOptions:
    """What a :class:`FolderRun` explains and writes.

    Attributes:
        targets: a target spec as for :meth:`Explainer.explain` (None: top-1).
        top_k: explain the K most probable classes.
        method: CAM method name.
        batch_size: images per ONNX Runtime batch.
        colormap: overlay colormap (see :data:`explainer.visualize.COLORMAPS`).
        alpha: overlay opacity in [0, 1].
        save_npy: also write the heatmaps, [K, H, W] float32, as ``<name>_cam.npy``.
        max_pixels: largest input image (width * height), see :func:`explainer.load_image`.
        overwrite: replace existing outputs.
        resume: skip images a previous run in the same folder finished; replace the rest.
        contrast: contrast classes, in the forms of ``targets`` (one per image or one per
            target): explain each target's score minus its contrast class's.
        score: ``"logit"`` or ``"probability"`` (see :data:`explainer.targets.SCORES`).
        fuse: how a layer sweep's top-level heatmaps combine the layers': ``"mean"``,
            ``"max"`` or None (the first layer's); see :func:`explainer.layers.fuse`.
        conf: a detector's confidence threshold.
        iou: a detector's NMS IoU threshold.
        renormalize: ``"boxes"``: each detection's (region's, character's) map rescaled
            inside its box, zero outside.
        threshold: a binary segmentation map's probability threshold.
    """

    targets: Any = None
    top_k: int | None = None
    method: str | None = "gradcam"
    batch_size: int = 8
    colormap: str = "jet"
    alpha: float = 0.5
    save_npy: bool = False
    max_pixels: int | None = None
    overwrite: bool = False
    resume: bool = False
    contrast: Any = None
    score: str = "logit"
    fuse: str | None = "mean"
    conf: float = DEFAULT_CONF
    iou: float = DEFAULT_IOU
    renormalize: str | None = None
    threshold: float = DEFAULT_THRESHOLD

    def check(self, num_classes: int, labels: list[str] | None = None,
              task: str = "classify", fmt: dict[str, Any] | None = None) -> None:
        """Raise a :class:`UsageError` (:class:`TargetError` for targets, contrast and score)
        for options no image could satisfy."""
        from .methods import METHODS

        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.colormap not in COLORMAPS:
            raise UsageError(f"unknown colormap {self.colormap!r}; choose one of {COLORMAPS}")
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError(f"max pixels must be positive, got {self.max_pixels}")
        check_score(self.score)
        check_fuse(self.fuse)
        if task != "classify":
            self._check_task(task, num_classes, labels, fmt or {})
            return
        plan = plan_targets(self.targets, self.top_k, 1, num_classes, labels)  # before any image
        if self.contrast is not None:
            against = plan_targets(self.contrast, None, 1, num_classes, labels).count
            if against not in (1, plan.count):
                raise TargetError(
                    f"contrast {self.contrast!r} gives {against} classes per image for "
                    f"{plan.count} targets; give one contrast class per image or one per target"
                )

    def _check_task(self, task: str, num_classes: int, labels: list[str] | None,
                    fmt: dict[str, Any]) -> None:
        if self.method in PIXEL_METHODS:
            raise UsageError(f"method {self.method!r} is for classifiers; a {task} model takes "
                             "the CAM methods")
        if self.contrast is not None:
            raise TargetError(f"--contrast is for classifiers; a {task} model explains its "
                              "own targets")
        check_renormalize(self.renormalize)
        options = self.explain_options(task)
        planner(task, fmt, labels, num_classes, options.pop("targets"), self.score,
                **{k: v for k, v in options.items()
                   if k not in ("method", "score", "fuse", "renormalize")})

    def explain_options(self, task: str = "classify") -> dict[str, Any]:
        """The keyword arguments of :meth:`Explainer.explain` these options set."""
        options = {"targets": self.targets, "top_k": self.top_k, "method": self.method,
                   "score": self.score, "fuse": self.fuse}
        if task == "classify":
            return {**options, "contrast": self.contrast}
        options["renormalize"] = self.renormalize
        if task == "detect":
            return {**options, "conf": self.conf, "iou": self.iou}
        if task == "segment":
            return {**options, "threshold": self.threshold}
        return options
