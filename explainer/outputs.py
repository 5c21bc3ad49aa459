"""Files written atomically: a temporary file in the same directory, then ``os.replace``.

A reader (or a run killed at any instant) sees either the previous complete file or the new
complete file, never a half-written one. Temporary files are named ``.<name>.<random>``
plus :data:`TEMP_SUFFIX`; a killed run can leave them behind and :func:`remove_stale_temps`
clears them.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from .errors import OutputError

__all__ = [
    "TEMP_SUFFIX",
    "atomic_write",
    "remove_stale_temps",
    "save_json",
    "save_npy",
    "save_png",
    "save_text",
]

TEMP_SUFFIX = ".onnxcam-tmp"


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], durable: bool = False
) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it into place.

    Args:
        path: the file to (re)place; its directory is created if needed.
        write: called with the open binary temporary file.
        durable: fsync the file before the rename (survives a power loss, not only a kill).

    Raises:
        OutputError: the file cannot be written (the temporary file is removed).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open honours the umask (mkstemp would leave the file private, mode 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(err, OSError):
            raise OutputError(f"{path}: cannot be written ({err})") from err
        raise
    return path


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Save a PIL image as PNG, atomically."""
    return atomic_write(path, lambda file: image.save(file, format="PNG"))


def save_npy(array: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Save an array as ``.npy``, atomically."""
    return atomic_write(path, lambda file: np.save(file, array))


def save_text(text: str, path: str | os.PathLike[str], durable: bool = False) -> Path:
    """Save UTF-8 text, atomically."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")), durable=durable)


def save_json(data: Any, path: str | os.PathLike[str], durable: bool = True) -> Path:
    """Save JSON (indented, trailing newline), atomically and by default fsynced."""
    return save_text(json.dumps(data, indent=2) + "\n", path, durable=durable)


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete the temporary files a killed run left anywhere under ``folder``; returns how many."""
    count = 0
    for tmp in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        try:
            tmp.unlink()
            count += 1
        except OSError:
            pass
    return count
