"""An inter-process file lock for test helpers that build shared files under ``build/``.

Parallel test workers (``pytest -n 2``) may ask for the same cached file at the same time: the
first one builds it while holding the lock, the others wait and then find it built.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (tests then build shared files in one process only)
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder when missing).

    Not re-entrant: a process that takes the same lock twice, nested, waits on itself.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
