"""The bridge between the runtime and the exporters: the one module of ``explainer`` that
imports ``exporters``.

The runtime modules (bundle, runtime, methods, targets, image, visualize, labels) run a bundle
and import nothing from ``exporters``; a test keeps it so. What needs both lives here: building
(and caching) a bundle from a deployed ``.onnx`` file for :meth:`Explainer.from_onnx` and the
``onnxcam`` command. It needs what the ONNX exporter needs (onnx, numpy), never torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from exporters.onnx_frontend import (
    auto_targets,
    candidate_layers,
    export_onnx,
    file_digest,
    inspect_model,
)

from .bundle import Bundle
from .errors import BundleError

__all__ = ["auto_targets", "bundle_from_onnx", "candidate_layers", "export_onnx",
           "inspect_model"]

log = logging.getLogger(__name__)


def bundle_from_onnx(
    path: str | os.PathLike[str],
    target: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    **export_kwargs: Any,
) -> Bundle:
    """The bundle of a deployed ONNX file, built by :func:`exporters.export_onnx`.

    With ``cache_dir`` it is saved there under a key made of the file's SHA-256 (external data
    included), the target and the export options, and loaded from there next time (an
    unreadable cache entry is rebuilt).
    """
    if cache_dir is None:
        return export_onnx(path, target=target, **export_kwargs)
    options = json.dumps({"target": target, **export_kwargs}, sort_keys=True, default=str)
    key = hashlib.sha256((file_digest(path) + options).encode()).hexdigest()[:20]
    cached = Path(cache_dir) / f"{Path(path).stem}-{key}"
    if (cached / "manifest.json").is_file():
        try:
            log.info("loading cached bundle %s", cached)
            return Bundle.load(cached)
        except BundleError as err:
            log.warning("cached bundle %s is unreadable (%s); rebuilding it", cached, err)
    bundle = export_onnx(path, target=target, **export_kwargs)
    bundle.save(cached)
    log.info("cached bundle in %s", cached)
    return bundle
