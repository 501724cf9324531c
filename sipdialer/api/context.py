"""What every API handler shares: :class:`ApiContext` (the part of the running service the
handlers may see), its typed application key :data:`CONTEXT`, and :func:`json_error`, the
one shape of every error answer (``{"error": "...", ...}``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sipdialer.api.counters import CallCounters, RtpTotals
from sipdialer.config import Config
from sipdialer.engine.directory import CallDirectory
from sipdialer.sip.registrar import Registrar
from sipdialer.sip.registration import RegistrationStatus

__all__ = ["CONTEXT", "ApiContext", "json_error"]


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _none_deleted() -> int:
    return 0


@dataclass
class ApiContext:
    """What the handlers see of the running service."""

    config: Config
    #: The calls: placed, live and recently finished (the dialer, as frozen views).
    calls: CallDirectory
    counters: CallCounters
    #: The CDR sink the service was given (the notifier in production); its optional
    #: ``status()`` feeds health and metrics.
    notifier: object
    #: The trunk registration's status, or None when the service does not register.
    registration: Callable[[], RegistrationStatus | None]
    rtp: RtpTotals = field(default_factory=RtpTotals)
    #: Recordings deleted by retention so far.
    recordings_deleted: Callable[[], int] = _none_deleted
    #: The extensions registrar (None when no [extensions] are configured).
    registrar: Registrar | None = None
    #: The clock of registration timestamps (the event loop's).
    now: Callable[[], float] = _loop_time
    #: The media worker processes (alive, restarts so far), or None when the relay runs
    #: in the service's process.
    media_workers: Callable[[], tuple[int, int] | None] = lambda: None


CONTEXT = web.AppKey("context", ApiContext)


def json_error(
    status: int, error: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """``{"error": error, **extra}`` with ``status``."""
    return web.json_response({"error": error, **extra}, status=status, headers=headers)
