"""Recording retention: deletes recordings older than ``[recording] retention_days``.

Owns :func:`sweep` (one pass over the recording directory, blocking: run it in a thread)
and :class:`RetentionSweeper` (an asyncio task running a sweep at start-up and then every
hour). Only files named like a recording (``<ref>.wav``, the reference format of
:data:`sipdialer.rtp.recorder.RECORDING_REF`) directly in the directory are candidates, so
nothing else an operator keeps there is touched; age is the file's modification time,
which a recording's writer updates about every second while its call runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from sipdialer.rtp.recorder import RECORDING_REF

log = logging.getLogger("sipdialer.retention")

__all__ = ["SWEEP_INTERVAL", "RetentionSweeper", "sweep"]

SWEEP_INTERVAL = 3600.0


def sweep(directory: Path, max_age_seconds: float, now: float | None = None) -> int:
    """Delete ``<ref>.wav`` files in ``directory`` last modified more than
    ``max_age_seconds`` ago; returns how many were deleted. A missing directory is empty."""
    cutoff = (time.time() if now is None else now) - max_age_seconds
    deleted = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        name = entry.name
        if not name.endswith(".wav") or not RECORDING_REF.fullmatch(name[:-4]):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_file(follow_symlinks=False) or st.st_mtime >= cutoff:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("event=retention_delete_failed file=%s error=%s", name, exc.strerror)
            continue
        deleted += 1
    return deleted


class RetentionSweeper:
    """Runs :func:`sweep` at start and every ``interval`` seconds until :meth:`stop`."""

    def __init__(
        self, directory: Path, retention_days: float, interval: float = SWEEP_INTERVAL
    ) -> None:
        self.directory = Path(directory)
        self.max_age = retention_days * 86400.0
        self.interval = interval
        self.deleted_total = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep_once(self) -> int:
        deleted = await asyncio.to_thread(sweep, self.directory, self.max_age)
        self.deleted_total += deleted
        if deleted:
            log.info("event=recordings_expired deleted=%d dir=%s", deleted, self.directory)
        return deleted

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:  # never let housekeeping die; try again next time
                log.exception("event=retention_sweep_failed dir=%s", self.directory)
            await asyncio.sleep(self.interval)
