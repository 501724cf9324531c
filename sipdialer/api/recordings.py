"""``GET``/``HEAD /click2dial/recordings/{ref}``: a call's WAV recording.

The reference must look like one (:data:`sipdialer.rtp.recorder.RECORDING_REF`), otherwise
the answer is 404 before the file system is touched; the file is
``<[recording] directory>/<ref>.wav``, resolved and checked to lie directly in the
directory, opened without following a final symlink and with ``O_NONBLOCK`` (so a FIFO or
a device node planted under a recording's name is opened at once instead of waiting for
a writer or a device), and must be a regular file — any failure is 404 too, answered
without delay (``O_NONBLOCK`` changes nothing for reads of a regular file). What to send
(200, 206, 304, 412, 416) is decided by :func:`sipdialer.api.ranges.plan_download` from
one ``fstat`` of the open file, and the bytes are then streamed from that same
descriptor in chunks (a recording may be an hour of audio, ~115 MB; it is never read
whole). A recording of a call still running grows; its ETag changes with every write, so
``If-Range`` protects resumed downloads.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from aiohttp import web

from sipdialer.api.context import CONTEXT, json_error
from sipdialer.api.ranges import Validators, http_date, plan_download
from sipdialer.rtp.recorder import RECORDING_REF

__all__ = ["RECORDINGS_DIR", "get_recording", "open_recording", "setup"]

CHUNK = 256 * 1024
RECORDINGS_DIR = web.AppKey("recordings_dir", Path)


def setup(app: web.Application) -> None:
    """Resolve the recording directory once (relative paths: against the start-up cwd)."""
    app[RECORDINGS_DIR] = Path(app[CONTEXT].config.recording.directory).resolve()


def open_recording(directory: Path, ref: str) -> tuple[int, os.stat_result] | None:
    """(descriptor, stat) of ``ref``'s WAV in ``directory``, or None; blocking."""
    if not RECORDING_REF.fullmatch(ref):
        return None
    path = (directory / f"{ref}.wav").resolve()
    if path.parent != directory:
        return None
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


async def get_recording(request: web.Request) -> web.StreamResponse:
    ref = request.match_info["ref"]
    if not RECORDING_REF.fullmatch(ref):
        return json_error(404, "no such recording")
    loop = asyncio.get_running_loop()
    opened = await loop.run_in_executor(None, open_recording, request.app[RECORDINGS_DIR], ref)
    if opened is None:
        return json_error(404, "no such recording")
    fd, st = opened
    try:
        return await _send(request, fd, st, ref)
    finally:
        await loop.run_in_executor(None, os.close, fd)


async def _send(request: web.Request, fd: int, st: os.stat_result, ref: str) -> web.StreamResponse:
    validators = Validators.of(st.st_size, st.st_mtime_ns)
    plan = plan_download(request.method, request.headers, st.st_size, validators)
    headers = {
        "ETag": validators.etag,
        "Last-Modified": http_date(validators.last_modified),
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
    }
    if plan.status == 304:
        return web.Response(status=304, headers=headers)
    if plan.status == 412:
        return json_error(412, "precondition failed")
    if plan.status == 416:
        assert plan.content_range is not None
        return json_error(
            416,
            "range not satisfiable",
            headers={**headers, "Content-Range": plan.content_range},
            size=st.st_size,
        )
    if plan.content_range is not None:
        headers["Content-Range"] = plan.content_range
    headers["Content-Disposition"] = f'attachment; filename="{ref}.wav"'
    response = web.StreamResponse(status=plan.status, headers=headers)
    response.content_type = "audio/wav"
    response.content_length = plan.length
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    loop = asyncio.get_running_loop()
    offset, remaining = plan.start, plan.length
    while remaining > 0:
        chunk = await loop.run_in_executor(None, os.pread, fd, min(CHUNK, remaining), offset)
        if not chunk:
            break  # the file shrank (repaired?): the client sees a short body
        await response.write(chunk)
        offset += len(chunk)
        remaining -= len(chunk)
    await response.write_eof()
    return response
