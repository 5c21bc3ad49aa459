"""Which files a run explains, and the unique output name of each.

Paths on the command line may be files, folders (scanned for every suffix Pillow opens; with
``recursive`` their subfolders too) and glob patterns, expanded here as well for shells that do
not (``**`` with ``recursive``).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

from .errors import InputError

__all__ = ["IMAGE_SUFFIXES", "collect_images", "output_names", "unique_name"]

#: suffixes a folder scan picks up (every format Pillow can open)
IMAGE_SUFFIXES = frozenset(
    suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)
_GLOB = re.compile(r"[*?\[]")


def _scan(folder: Path, recursive: bool) -> list[Path]:
    """Image files of ``folder`` (hidden files and folders skipped), sorted."""
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path for path in entries
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def collect_images(
    paths: Iterable[str | os.PathLike[str]],
    recursive: bool = False,
    exclude: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Image files named by ``paths``: files as they are, folders scanned for image suffixes
    (their subfolders too with ``recursive``), glob patterns expanded (``**`` with
    ``recursive``). Resolved, in order, without duplicates. When ``exclude`` (the output
    folder) lies inside a scanned folder, the files under it are left out.

    Raises:
        InputError: a path that does not exist and matches nothing, or no image at all.
    """
    found: list[Path] = []
    skip = Path(exclude).resolve() if exclude is not None else None

    def scanned(path: Path) -> list[Path]:
        if not path.is_dir():
            return [path]
        files = _scan(path, recursive)
        if skip is None or not skip.is_relative_to(path.resolve()) or skip == path.resolve():
            return files  # the output folder is not strictly inside the scanned one
        return [f for f in files if not f.resolve().is_relative_to(skip)]

    for spec in map(str, paths):
        path = Path(spec)
        if path.exists():
            found.extend(scanned(path) if path.is_dir() else [path])
        elif _GLOB.search(spec):
            matches = sorted(glob.glob(spec, recursive=recursive))
            if not matches:
                raise InputError(f"{spec!r}: no file matches this pattern")
            for match in matches:
                found.extend(scanned(Path(match)))
        else:
            raise InputError(f"{spec}: no such file or folder")
    images = list(dict.fromkeys(path.resolve() for path in found))
    if not images:
        raise InputError(
            f"no image files found in {', '.join(map(str, paths))} (folders are scanned for "
            f"{', '.join(sorted(s for s in IMAGE_SUFFIXES if len(s) <= 5)[:8])}, ...; "
            "add --recursive for subfolders)"
        )
    return images


def output_names(images: Sequence[Path], taken: dict[Path, str] | None = None) -> dict[Path, str]:
    """A unique output name (no suffix, ``/``-separated) per image: its path relative to the
    images' common folder without the suffix, so same-named files of different folders keep
    apart; ``x.jpg`` beside ``x.png`` becomes ``x_png``. Names in ``taken`` are kept."""
    taken = dict(taken or {})
    used = {name.lower() for name in taken.values()}
    try:
        root: Path | None = Path(os.path.commonpath([p.parent for p in images])) if images else None
    except ValueError:  # different drives
        root = None
    names = {}
    for path in images:
        if path in taken:
            names[path] = taken[path]
            continue
        rel = path.relative_to(root) if root else Path(*path.parts[1:])
        base = (rel.parent / rel.stem).as_posix()
        if base.lower() in used:
            base = f"{base}_{path.suffix.lstrip('.').lower()}"
        names[path] = unique_name(base, used)
    return names


def unique_name(base: str, used: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... the first whose lower case is not in ``used``
    (which it joins): output names that differ only in case would clash on some disks."""
    name, count = base, 1
    while name.lower() in used:
        count += 1
        name = f"{base}_{count}"
    used.add(name.lower())
    return name
