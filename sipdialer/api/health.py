"""``GET /healthz``: is this instance ready to place calls, and what do its parts say.

Ready (200) unless (503, with ``problems`` saying why):

* the service registers with a trunk (``[trunk] registrar`` set, ``register = yes``) and
  holds no binding: the state is not ``registered`` — a refresh in flight
  (``registering``) still counts as registered while the previous binding has not
  expired;
* the notifier reports Redis down (``redis_ok`` false, or its ``status()`` fails) for
  longer than ``[redis] health_grace`` seconds (default 60) — counted from the notifier's
  ``down_since`` (Unix time) when it gives one, else from the first sample that saw it
  down (the API samples every second). Notifications wait in the
  disk outbox meanwhile, so a short Redis outage does not take the instance out of a
  load balancer, a long one does.

* recording is enabled and its disk is at fault (section ``recordings``): the directory
  (or, before the first call made it, its nearest existing parent) is not writable or
  does not answer ``statvfs`` within :data:`DISK_PROBE_TIMEOUT` seconds; or a recording
  write failed (disk full, I/O error: a recording was cut short or could not start) and
  none has succeeded since — for :data:`RECHECK_AFTER` seconds at least, then for as long
  as the free space stays under :data:`FREE_FLOOR` (freeing space clears it; a new call
  that writes clears it at once). The section shows the free and total bytes, the write
  failures and partial recordings counted since start, and the last error (its errno
  name and text, never a path: a recording's path holds its reference).

A trunk that takes no REGISTER (``register = no``) cannot be checked and counts as ready.
``/healthz`` is served without a token (load balancers); it shows no call data. The disk
is probed in a worker thread, one probe at a time, so a hung mount cannot stall the loop
or pile up threads.

The notifier is the CDR sink the service was given; when it has a ``status()`` method
returning a mapping with ``redis_ok``, ``outbox_depth``, ``last_error``, ``pushed_total``,
``last_push_at``, that is shown and used. A sink without one (tests, the in-memory sink)
shows ``null``. ``status()`` is called every second and on every ``/healthz``: it must be
cheap and must not block.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from sipdialer.api.context import CONTEXT, ApiContext
from sipdialer.engine.cdr import iso_utc
from sipdialer.rtp.recorder import describe_os_error, recordings_disk
from sipdialer.sip.registration import RegState

log = logging.getLogger("sipdialer.api")

__all__ = [
    "DISK_PROBE_TIMEOUT",
    "FREE_FLOOR",
    "HEALTH",
    "RECHECK_AFTER",
    "DiskProbe",
    "HealthTracker",
    "healthz",
    "notifier_status",
    "probe_directory",
    "setup",
]

#: Free bytes under which a recordings disk whose last write failed stays unhealthy.
FREE_FLOOR = 1 << 20
#: Seconds a failed recording write keeps ``/healthz`` unavailable in any case.
RECHECK_AFTER = 60.0
#: Seconds ``/healthz`` waits for the recordings directory's ``statvfs``.
DISK_PROBE_TIMEOUT = 2.0


@dataclasses.dataclass(frozen=True)
class DiskProbe:
    """What the file system says about the recordings directory (None: unknown)."""

    free_bytes: int | None
    total_bytes: int | None
    writable: bool | None
    error: str | None = None


def probe_directory(directory: Path) -> DiskProbe:
    """Free space and writability of ``directory`` (of its nearest existing parent while
    it does not exist yet: the dialer creates it). Blocking: run it in a thread."""
    existing = directory
    while not existing.is_dir() and existing.parent != existing:
        existing = existing.parent
    try:
        st = os.statvfs(existing)
    except OSError as exc:
        return DiskProbe(None, None, None, describe_os_error(exc))
    return DiskProbe(
        st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, os.access(existing, os.W_OK)
    )


def notifier_status(notifier: object) -> dict[str, Any] | None:
    """The notifier's ``status()`` as a dict; None when it has none; ``{"error": ...}``
    (and ``redis_ok`` false) when it raised."""
    status = getattr(notifier, "status", None)
    if not callable(status):
        return None
    try:
        value = status()
    except Exception as exc:
        log.warning("event=notifier_status_failed error=%r", exc)
        return {"redis_ok": False, "error": f"status() failed: {type(exc).__name__}"}
    if isinstance(value, Mapping):
        return dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return {"redis_ok": None, "error": "status() returned no mapping"}


class HealthTracker:
    """Remembers since when the notifier has reported Redis down (monotonic seconds)."""

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.clock = clock
        self.redis_down_since: float | None = None
        self.disk_probe: asyncio.Future[DiskProbe] | None = None  # the one in flight

    def observe(self, status: Mapping[str, Any] | None) -> float:
        """Record one notifier status; return for how long Redis has been down (0 if up)."""
        now = self.clock()
        if status is None or status.get("redis_ok") is not False:
            self.redis_down_since = None
            return 0.0
        if self.redis_down_since is None:
            self.redis_down_since = now
        down_for = now - self.redis_down_since
        since = status.get("down_since")  # the notifier's own record (Unix time), if any
        if isinstance(since, (int, float)) and not isinstance(since, bool):
            down_for = max(down_for, time.time() - since)
        return down_for

    def sample(self, ctx: ApiContext) -> None:
        self.observe(notifier_status(ctx.notifier))


HEALTH = web.AppKey("health", HealthTracker)


def setup(app: web.Application) -> None:
    app[HEALTH] = HealthTracker(app[CONTEXT].config.redis.health_grace)


def _trunk(ctx: ApiContext, problems: list[str]) -> dict[str, Any] | None:
    trunk = ctx.config.trunk
    if trunk.registrar is None:
        problems.append("no trunk configured")
        return None
    info: dict[str, Any] = {
        "registrar": trunk.label,
        "register": trunk.register,
        "state": "not_registering",
        "registered": None,
    }
    st = ctx.registration()
    if st is None:
        return info
    now = ctx.now()
    bound = st.state == RegState.REGISTERED or (
        st.state == RegState.REGISTERING and st.expires_at is not None and st.expires_at > now
    )
    info.update(
        state=st.state,
        registered=st.state == RegState.REGISTERED,
        aor=st.aor,
        expires_in=round(st.expires_at - now, 1) if st.expires_at is not None else None,
        last_failure=st.last_failure,
        failures=st.failures,
        retry_in=(
            round(st.next_attempt_at - now, 1)
            if st.next_attempt_at is not None and st.state == RegState.FAILED
            else None
        ),
    )
    if not bound:
        problems.append(f"trunk not registered ({st.state})")
    return info


def _recordings(ctx: ApiContext, disk: DiskProbe | None, problems: list[str]) -> dict[str, Any]:
    config = ctx.config.recording
    if not config.enabled:
        return {"enabled": False}
    state = recordings_disk(config.directory)
    info: dict[str, Any] = {
        "enabled": True,
        "free_bytes": disk.free_bytes if disk else None,
        "total_bytes": disk.total_bytes if disk else None,
        "writable": disk.writable if disk else None,
        "writes_failing": state.failing,
        "write_failures": state.failures,
        "partial_recordings": state.partial_recordings,
        "last_error": state.last_error,
        "last_error_at": iso_utc(state.last_error_at),
        "last_write_at": iso_utc(state.last_write_at),
    }
    if disk is not None and disk.error is not None:
        info["error"] = disk.error
        problems.append(f"recordings directory unusable ({disk.error})")
    elif disk is not None and disk.writable is False:
        problems.append("recordings directory not writable")
    if state.failing:
        free = disk.free_bytes if disk else None
        recent = state.last_error_at is not None and (
            time.time() - state.last_error_at < RECHECK_AFTER
        )
        if recent or free is None or free < FREE_FLOOR:
            problems.append(f"recording writes failing ({state.last_error})")
    return info


def health_report(
    ctx: ApiContext, tracker: HealthTracker, disk: DiskProbe | None = None
) -> tuple[bool, dict[str, Any]]:
    """(ready, the JSON document); ``disk``: the recordings directory's probe."""
    problems: list[str] = []
    trunk = _trunk(ctx, problems)
    recordings = _recordings(ctx, disk, problems)
    notifier = notifier_status(ctx.notifier)
    down_for = tracker.observe(notifier)
    if notifier is not None:
        notifier = {str(k): _json_value(v) for k, v in notifier.items()}
        notifier["redis_down_for"] = round(down_for, 1)
        if down_for > tracker.grace:
            problems.append(f"redis unreachable for {down_for:.0f} s")
    doc = {
        "status": "ok" if not problems else "unavailable",
        "ready": not problems,
        "problems": problems,
        "trunk": trunk,
        "notifier": notifier,
        "calls": {
            "active": ctx.calls.active_count(),
            "max_concurrent": ctx.config.calls.max_concurrent,
        },
        "recordings": recordings,
    }
    return not problems, doc


def _json_value(value: object) -> object:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


async def _probe_recordings(ctx: ApiContext, tracker: HealthTracker) -> DiskProbe | None:
    """Probe the recordings directory in a thread; a probe still running from an earlier
    request (a hung mount) is waited for again instead of starting another."""
    if not ctx.config.recording.enabled:
        return None
    probe = tracker.disk_probe
    if probe is None or probe.done():
        loop = asyncio.get_running_loop()
        directory = Path(ctx.config.recording.directory)
        probe = tracker.disk_probe = loop.run_in_executor(None, probe_directory, directory)
    try:
        return await asyncio.wait_for(asyncio.shield(probe), DISK_PROBE_TIMEOUT)
    except TimeoutError:
        return DiskProbe(None, None, None, f"no answer within {DISK_PROBE_TIMEOUT:g} s")


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    tracker = request.app[HEALTH]
    disk = await _probe_recordings(ctx, tracker)
    ready, doc = health_report(ctx, tracker, disk)
    return web.json_response(doc, status=200 if ready else 503)
