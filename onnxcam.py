"""onnxcam: Grad-CAM and its family computed by ONNX Runtime, in one import.

::

    import onnxcam

    explanation = onnxcam.explain("model.onnx", "cat.jpg")          # one image
    explanations = onnxcam.explain("model.onnxcam", ["a.jpg", "b.jpg"], top_k=3)

The names of the runtime (:class:`Explainer`, :class:`Explanation`) and of the exporters
(:func:`export_onnx`, :func:`export_torch`) load on first use: ``import onnxcam`` loads neither
ONNX Runtime nor torch (:func:`export_torch` imports the torch front end when called). Every
error is an :class:`OnnxcamError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explainer import __version__
from explainer.errors import (
    BundleError,
    ExplainerError,
    ImageError,
    InputError,
    LabelError,
    MethodError,
    OnnxcamError,
    OutputError,
    ProviderError,
    TargetError,
    UsageError,
    VisualizeError,
)
from explainer.lazy import lazy_getattr

if TYPE_CHECKING:
    from explainer import Explainer, Explanation
    from explainer.evaluation import evaluate
    from exporters import export_onnx, export_torch
    from exporters.errors import (
        ExportError,
        GradientError,
        MissingGradientRule,
        OnnxExportError,
        SplitError,
    )

__all__ = [
    "BundleError",
    "ExplainerError",
    "ExportError",
    "GradientError",
    "ImageError",
    "InputError",
    "LabelError",
    "MethodError",
    "MissingGradientRule",
    "OnnxExportError",
    "OnnxcamError",
    "OutputError",
    "ProviderError",
    "SplitError",
    "TargetError",
    "UsageError",
    "VisualizeError",
    "Explainer",
    "Explanation",
    "__version__",
    "evaluate",
    "explain",
    "export_onnx",
    "export_torch",
]

# public name -> module that defines it (imported on first access)
_LAZY = {
    "Explainer": "explainer",
    "Explanation": "explainer",
    "evaluate": "explainer.evaluation",
    "export_onnx": "exporters",
    "export_torch": "exporters.torch",
    "ExportError": "exporters.errors",
    "GradientError": "exporters.errors",
    "MissingGradientRule": "exporters.errors",
    "OnnxExportError": "exporters.errors",
    "SplitError": "exporters.errors",
}

#: what a single image may be (anything else is taken as a sequence of images)
_ONE_IMAGE = (str, os.PathLike)


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _is_one_image(images: Any) -> bool:
    """A path, a PIL image or one image array (HxW or HxWxC), as opposed to a sequence of them."""
    if isinstance(images, _ONE_IMAGE):
        return True
    if type(images).__module__.startswith("PIL."):
        return True
    ndim = getattr(images, "ndim", None)
    return ndim in (2, 3)


def explain(
    model: str | os.PathLike[str],
    images: Any,
    targets: Any = None,
    *,
    top_k: int | None = None,
    method: str | None = None,
    layer: str | Sequence[str] = "auto",
    labels: str | Sequence[str] | None = None,
    preprocessing: Any = None,
    providers: str | Sequence[Any] | None = None,
    threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Explanation | list[Explanation]:
    """Explain one image, or each image of a list, with a deployed ``.onnx`` file or a bundle.

    The bundle of an ``.onnx`` file is built in memory (see :meth:`Explainer.from_onnx`; with
    ``cache_dir`` it is cached there), a bundle folder is loaded as it is; the ONNX Runtime
    sessions are released before returning.

    Args:
        model: an ``.onnx`` file or a bundle folder (``features.onnx``, ``head.onnx``,
            ``manifest.json``).
        images: one image (a path, a PIL image or a uint8 array) or a list of them.
        targets: what to explain, as for :meth:`Explainer.explain` (None: the top class, or
            every detection, region or character).
        top_k: explain the K top classes.
        method: the CAM method (None: the model's default).
        layer: ``.onnx`` files: the layer to explain, ``"auto"``, a tensor or node name, or a
            list of names for a layer sweep.
        labels: ``.onnx`` files: a label-set name (``"imagenet"``) or the class names.
        preprocessing: ``.onnx`` files: an :class:`explainer.Preprocessing` or a dict of its
            keys (default: told from the model).
        providers: ``"cpu"`` (default), ``"cuda"`` or ONNX Runtime providers.
        threads: intra-op threads.
        cache_dir: ``.onnx`` files: where to cache the built bundle.
        **options: more arguments of :meth:`Explainer.explain` (``contrast``, ``score``,
            ``fuse``, ``conf``, ``iou``, ``renormalize``, ``threshold``...).

    Returns:
        The image's :class:`Explanation` (a batch of one), or a list of them, one per image in
        order.

    Raises:
        BundleError: ``model`` is neither an existing ``.onnx`` file nor a bundle folder.
        UsageError: a ``.onnx``-only option given with a bundle folder.
        OnnxcamError: as :class:`Explainer` and :meth:`Explainer.explain_images` raise.
    """
    from explainer import Explainer

    path = Path(model)
    if path.is_dir():
        given = [name for name, value in (("layer", layer != "auto"), ("labels", labels),
                                          ("preprocessing", preprocessing),
                                          ("cache_dir", cache_dir)) if value]
        if given:
            raise UsageError(f"{model} is a bundle folder, which records its layer, labels and "
                             f"preprocessing; {', '.join(given)} apply to .onnx files only: "
                             "leave them out, or export the bundle again with them")
        explainer = Explainer(path, providers=providers, threads=threads)
    elif path.is_file():
        export = {"labels": labels, "preprocessing": preprocessing}
        explainer = Explainer.from_onnx(
            path, target=layer if isinstance(layer, str) else list(layer), providers=providers,
            cache_dir=cache_dir, threads=threads,
            **{key: value for key, value in export.items() if value is not None},
        )
    else:
        raise BundleError(f"{model}: no such .onnx file or bundle folder")
    one = _is_one_image(images)
    with explainer:
        explanations = [explainer.explain_images([image], targets=targets, top_k=top_k,
                                                 method=method, **options)
                        for image in ([images] if one else list(images))]
    return explanations[0] if one else explanations
