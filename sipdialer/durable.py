"""Durable, atomic file writes: the one way sipdialer commits a small file to disk.

Owns the sequence the call journal (:mod:`sipdialer.engine.journal`) and the notifier's
outbox (:mod:`sipdialer.notify.notifier`) rely on for crash safety: each file is written
as ``.<name>.tmp`` beside its final name and ``fsync``-ed, renamed over the final name,
and the directory ``fsync``-ed once for the batch. A reader (or a restart after a crash)
sees each file's old version or its new one, never a mix; a crash before a rename leaves
only a ``.tmp`` file, which the owner removes at start-up. Standard library only, so every
layer may use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["durable_write", "fsync_dir", "temp_path"]


def fsync_dir(directory: Path | str) -> None:
    """``fsync`` a directory, so that renames and unlinks in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """Where :func:`durable_write` writes ``path`` before renaming it: ``.<name>.tmp``."""
    return path.with_name(f".{path.name}.tmp")


def _write_synced(path: Path, data: bytes, flags: int, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(
    files: Sequence[tuple[Path, bytes]], *, mode: int = 0o600, exclusive: bool = False
) -> None:
    """Write each ``(path, data)`` atomically and durably, in order, all in one directory.

    Every file is written under :func:`temp_path` and ``fsync``-ed; then all are renamed
    to their names and the directory is ``fsync``-ed once. ``mode`` is the new files'
    permission bits; ``exclusive``: a temporary file already there is an error
    (``O_EXCL``) instead of being overwritten. On ``OSError`` the temporary files are
    removed and the error is raised; files already renamed stay (they are complete).
    """
    if not files:
        return
    directory = files[0][0].parent
    if any(path.parent != directory for path, _ in files):
        raise ValueError("durable_write: all files must be in one directory")
    flags = os.O_EXCL if exclusive else os.O_TRUNC
    temps: list[Path] = []
    try:
        for path, data in files:
            tmp = temp_path(path)
            temps.append(tmp)
            _write_synced(tmp, data, flags, mode)
        for tmp, (path, _) in zip(temps, files, strict=True):
            os.replace(tmp, path)
        fsync_dir(directory)
    except OSError:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
