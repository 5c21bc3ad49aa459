"""torch.onnx exports of the slow test corpora, cached under ``build/exports/``.

An entry is named by the hash of everything its export is a function of: the model's weights,
the arguments of the export, the source of ``exporters/`` and ``explainer/`` and the versions of
torch, onnxscript and onnx. A cached run skips torch.onnx (5-40 s a model); a fresh clone, or
a change to any of those, exports again (and replaces the model's older entries).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locks import file_lock

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("ONNXCAM_EXPORT_CACHE", REPO / "build" / "exports"))
_HEX = 20


def export_key(model: Any, *arguments: Any) -> str:
    """The hash of ``model``'s weights (a torch module), the export's ``arguments``, the
    package sources and the exporting libraries' versions."""
    import onnx
    import onnxscript
    import torch

    key = hashlib.sha256(repr((arguments, torch.__version__, onnxscript.__version__,
                               onnx.__version__)).encode())
    for package in ("exporters", "explainer"):
        for path in sorted((REPO / package).rglob("*.py")):
            key.update(str(path.relative_to(REPO)).encode())
            key.update(path.read_bytes())
    for name, tensor in model.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return key.hexdigest()[:_HEX]


def cached(kind: str, name: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The folder ``ROOT/kind/name-key``, made by ``build(folder)`` where it is missing (in a
    folder renamed into place when complete; other workers wait for it): (the folder, whether
    it was built now)."""
    folder = ROOT / kind
    entry = folder / f"{name}-{key}"
    if entry.is_dir():
        return entry, False
    with file_lock(folder / f".{name}.lock"):
        if entry.is_dir():
            return entry, False
        for stale in folder.glob(f"{name}-" + "?" * _HEX):  # this model's other exports
            shutil.rmtree(stale, ignore_errors=True)
        partial = folder / f".{entry.name}.{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        build(partial)
        partial.rename(entry)
    return entry, True
