"""The asyncio side of the extensions registrar: carries REGISTERs between the user agent
and the pure :class:`~sipdialer.registrar.Registrar`, keeps its bindings on disk and sends
its keep-alives.

Owns :class:`RegistrarRuntime`, which

* installs itself as ``ua.registrar`` (the user agent hands it every REGISTER outside a
  dialog) and answers through ``ua.answer``;
* loads the bindings from ``store_path`` on :meth:`~RegistrarRuntime.start`, so phones
  need not re-register after a deploy, and writes them back (JSON, temp file + fsync +
  rename + directory fsync) at most ``persist_delay`` seconds after each change, and once
  more on :meth:`~RegistrarRuntime.stop`;
* arms one timer for the registrar's next deadline (at most ``max_sleep`` away, so a jump
  of the wall clock is noticed) that runs ``expire()`` and sends the OPTIONS keep-alives
  ``keepalive_due()`` asks for to each binding's source address (a binding whose
  keep-alives keep failing is dropped by the registrar).

The registrar's ``now`` is wall-clock time (``clock``, default :func:`time.time`) since
binding expiries must mean the same thing after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sipdialer.aio.useragent import UserAgent
from sipdialer.logs import quote_value
from sipdialer.sip.events import (
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionTimeout,
    TransportError,
)
from sipdialer.sip.message import Request
from sipdialer.sip.registrar import Binding, Registrar

log = logging.getLogger("sipdialer.registrar")


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON so that a crash leaves the old or the new file
    whole: write a temp file (mode 0600) beside it, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"), sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class RegistrarRuntime:
    """Runs one :class:`Registrar` on one :class:`UserAgent` (after the UA has a transport).

    ``store_path=None`` keeps bindings in memory only.
    """

    def __init__(
        self,
        registrar: Registrar,
        ua: UserAgent,
        *,
        store_path: Path | str | None,
        persist_delay: float = 1.0,
        max_sleep: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registrar = registrar
        self.ua = ua
        self.store_path = Path(store_path) if store_path is not None else None
        self.persist_delay = persist_delay
        self.max_sleep = max_sleep
        self.clock = clock
        self.keepalives_sent = 0
        self.keepalives_answered = 0
        self.keepalives_failed = 0
        self._timer: asyncio.TimerHandle | None = None
        self._saver: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self._saved_generation = -1
        self._running = False

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the stored bindings, take over REGISTER from the UA, start the timers."""
        if self.ua.transport is None:
            raise RuntimeError("the user agent has no transport yet (start the service first)")
        self._load()
        self._saved_generation = self.registrar.generation
        self.ua.registrar = self.on_register
        self._running = True
        if self.store_path is not None:
            self._saver = asyncio.create_task(self._save_loop())
        self._arm()

    async def stop(self) -> None:
        """Stop answering REGISTERs and keep-alives; write the bindings one last time."""
        if not self._running:
            return
        self._running = False
        if self.ua.registrar == self.on_register:
            self.ua.registrar = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._saver is not None:
            self._stopping.set()
            self._dirty.set()
            await self._saver
            self._saver = None
        await self._save()

    # ---- REGISTER ---------------------------------------------------------------------------
    def on_register(self, event: RequestReceived) -> None:
        """The user agent's REGISTER handler."""
        reply = self.registrar.handle(event.request, event.source, event.transport, self.clock())
        self.ua.answer(event, reply.status, reply.reason, extra=list(reply.headers))
        self._after_change()
        self._arm()

    # ---- timer: expiry and keep-alives ------------------------------------------------------
    def _arm(self) -> None:
        if not self._running:
            return
        if self._timer is not None:
            self._timer.cancel()
        now = self.clock()
        deadline = self.registrar.next_timer()
        delay = self.max_sleep if deadline is None else deadline - now
        delay = min(max(delay, 0.01), self.max_sleep)
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._running:
            return
        now = self.clock()
        self.registrar.expire(now)
        for binding in self.registrar.keepalive_due(now):
            self._ping(binding)
        self._after_change()
        self._arm()

    def _ping(self, binding: Binding) -> None:
        transport = self.ua.transport
        assert transport is not None
        host, port = transport.endpoint.host, transport.endpoint.port
        host = f"[{host}]" if ":" in host else host
        request = Request(
            "OPTIONS",
            binding.contact_uri,
            [
                ("From", f"<sip:registrar@{host}:{port}>;tag={secrets.token_hex(6)}"),
                ("To", f"<{binding.contact_uri}>"),
                ("Call-ID", f"{secrets.token_hex(12)}@{host}"),
                ("CSeq", "1 OPTIONS"),
                ("Accept", "application/sdp"),
            ],
        )
        answered = False

        def on_event(event: Event) -> None:
            nonlocal answered
            if answered:
                return
            if isinstance(event, ResponseReceived):
                if event.response.status < 200:
                    return
                ok = True
            elif isinstance(event, TransactionTimeout | TransportError):
                ok = False
            else:
                return
            answered = True
            if ok:
                self.keepalives_answered += 1
            else:
                self.keepalives_failed += 1
            self.registrar.keepalive_result(binding, ok, self.clock())
            self._after_change()
            self._arm()

        self.keepalives_sent += 1
        try:
            self.ua.send_request(request, binding.target, binding.transport, on_event)
        except Exception as exc:  # a bad stored address must not stop the timer
            log.info(
                "event=registrar_keepalive_send_failed ext=%s error=%s",
                binding.extension,
                quote_value(exc),
            )
            answered = True
            self.keepalives_failed += 1
            self.registrar.keepalive_result(binding, False, self.clock())

    # ---- persistence --------------------------------------------------------------------------
    def _load(self) -> None:
        path = self.store_path
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self.registrar.load(data, self.clock())
        except (OSError, ValueError) as exc:
            log.warning(
                "event=registrar_store_unreadable path=%s error=%s",
                quote_value(path),
                quote_value(exc),
            )
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + ".unreadable"))

    def _after_change(self) -> None:
        if self.registrar.generation != self._saved_generation:
            self._dirty.set()

    async def _save_loop(self) -> None:
        while not self._stopping.is_set():
            await self._dirty.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.persist_delay)
            self._dirty.clear()
            await self._save()

    async def _save(self) -> None:
        if self.store_path is None:
            return
        generation = self.registrar.generation
        if generation == self._saved_generation:
            return
        data = self.registrar.dump()
        try:
            await asyncio.to_thread(write_json_atomic, self.store_path, data)
        except OSError as exc:
            log.warning(
                "event=registrar_store_write_failed path=%s error=%s",
                quote_value(self.store_path),
                quote_value(exc),
            )
            return
        self._saved_generation = generation
        log.debug("event=registrar_saved bindings=%d", len(data["bindings"]))
