"""Durable writes: a file's data, and a rename into a directory, on disk before we go on."""

from __future__ import annotations

import os
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush ``path``'s data to disk (a file written and closed elsewhere)."""
    _fsync(path, os.O_RDONLY)


def fsync_directory(path: Path) -> None:
    """Make a rename or a new file in the directory ``path`` durable."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
