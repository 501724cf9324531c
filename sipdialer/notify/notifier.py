"""Never-lost call notifications on Redis LISTs (SPEC §3): a durable disk outbox + a pusher.

Owns the :class:`Outbox` (an on-disk FIFO of documents waiting for Redis) and the
:class:`Notifier` (the :class:`~sipdialer.cdr.CdrSink` the call engine hands CDRs to, and
the background task that LPUSHes them). Knows nothing of SIP or HTTP.

Delivery guarantee: at-least-once, in order
============================================

* :meth:`Notifier.submit` writes the call's documents to the outbox and then calls the
  engine's ``on_durable``: from then on a power cut, a crash, a restart or a Redis outage
  of any length loses nothing. It never touches the network and never raises. In the
  service (``background=True``) the writing is done by the outbox's writer thread, never
  on the event loop: ``submit`` returns at once and the thread commits every call that
  ended meanwhile with one ``durable_write`` (group commit: one directory fsync for the
  batch), then calls each ``on_durable`` on the loop. The engine keeps the call's journal
  entry (:mod:`sipdialer.engine.journal`) until then, so a crash in the milliseconds
  between ends the call again from the journal at the next start (a ``crashed`` CDR)
  rather than losing it.
* The pusher LPUSHes entries oldest first and deletes an entry only after Redis has
  acknowledged it. An entry pushed but not yet deleted when the process dies is pushed
  **again** on the next start: clients may see a duplicate (never a gap). Every document
  carries the call id — ``payload.call_id`` in the ``cdr`` envelope; the legacy ``c2d``
  document has no id field (its shape is frozen by SPEC), so de-duplicate it by
  ``call_ref`` or take the ``cdr`` key — and a client that must not count a call twice
  remembers the ids it has seen (e.g. ``SET cdr-seen:<call_id> 1 NX EX 86400``).
* Order: on each key, documents arrive in the order the calls ended. A later entry is
  never pushed before an earlier one of the same key; entries are sent in batches inside
  one ``MULTI``/``EXEC`` so a connection lost mid-batch applies all or none of it.
* Redis errors (down, refusing, timing out, a wrong-typed key) are retried with
  exponential back-off, 0.5 s doubling up to 30 s, ±20 % jitter (never above 30 s);
  calls are never blocked. While nothing is queued the pusher PINGs every 10 s so
  :meth:`Notifier.status` tells the truth about Redis.

The outbox on disk
==================

One file per entry in the outbox directory, named ``<seq:017d>-<rand8>.entry``.
``seq`` is the creation time in microseconds, forced to be above every sequence number
already in the directory and every one handed out before (monotonic within a run and
across restarts, even if the clock steps back); the random part keeps two writers from
ever overwriting each other. Pending entries are read in ``seq`` order. A file is::

    {"v":1,"key":"enigma:notifications:cdr","call_id":"…","created_at":…,"bytes":N,"sha256":"…"}\\n
    <exactly the N bytes of UTF-8 JSON that are LPUSHed>

Writing (:func:`sipdialer.durable.durable_write`): the file is written as ``.<name>.tmp``,
``fsync``-ed, renamed to its final name, and the directory ``fsync``-ed (one directory sync
for the two entries of a call). Why
one file per entry rather than an append-only log with fsync: a log needs a second,
equally durable record of what was delivered (an offset file or tombstones) and
compaction, and a torn tail can take a neighbour with it; with files, the rename is the
commit, deleting is the acknowledgement, a corrupt file is confined to one entry, and an
operator can read the backlog with ``ls`` and ``cat``. The volume (two small files per
finished call) makes the per-file cost irrelevant: about two fsyncs of a file per call end
and one of the directory per batch, on the writer thread. On the loop they were 12 % of
its time at 50 set-ups a second and, with a busy disk, stalls of 100 ms and more
(``bench/calls.py`` under py-spy).

A file that does not parse (bad header, wrong length, checksum mismatch, not UTF-8) is
moved to ``corrupt/`` under the outbox and logged (``event=outbox_corrupt``), never
pushed and never fatal. Leftover ``.tmp`` files are writes that a crash interrupted
before they were committed (``submit`` had not returned); they are removed at start.
Should the disk itself fail on ``submit``, the documents are kept in memory, pushed in
their place in the order, and the failure logged (``event=notify_outbox_write_failed``)
and counted in ``status()["disk_errors_total"]``: only then can a document be lost, if
the process also dies before Redis takes it.

The writer thread's backlog is bounded without losing anything: a call that ended is
always queued (its CDR must not be lost), but once ``max_write_backlog`` calls wait for
the disk (a hung or very slow disk), :attr:`Notifier.accepting_calls` turns False, one
``event=notify_write_backlog_full`` line is logged at error, and the API refuses new calls
(503 with ``Retry-After``) until the backlog drains (``event=notify_write_backlog_drained``).
The backlog is thus at most ``max_write_backlog`` plus the calls in progress
(``[calls] max_concurrent``), each of which adds one submission when it ends; the event
loop never blocks on the disk.

One process per outbox directory: two services sharing one would push each other's
entries (duplicates, still nothing lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sipdialer.config import RedisConfig
from sipdialer.durable import durable_write, fsync_dir
from sipdialer.engine.cdr import Cdr
from sipdialer.errors import SipdialerError
from sipdialer.logs import quote_value
from sipdialer.sip import ids

__all__ = ["Entry", "Notifier", "Outbox", "OutboxError"]

log = logging.getLogger("sipdialer.notify")

_SUFFIX = ".entry"
_FORMAT_VERSION = 1


class OutboxError(SipdialerError, ValueError):
    """An outbox file that cannot be read back (it is moved to ``corrupt/``)."""


@dataclass(frozen=True)
class Entry:
    """One document waiting for Redis."""

    id: str
    """The file name without ``.entry``: ``<seq>-<rand>``."""
    seq: int
    """Creation order (microseconds since the epoch, made strictly increasing)."""
    key: str
    """The Redis LIST it goes to."""
    payload: str
    """Exactly the JSON text that is LPUSHed."""
    call_id: str | None
    """The call the document belongs to (kept beside the payload: the c2d shape has none)."""
    created_at: float
    """Unix time the entry was written."""
    durable: bool = True
    """False only when the disk refused the write: the entry lives in memory alone."""

    @property
    def document(self) -> Any:
        return json.loads(self.payload)


def _encode(entry: Entry) -> bytes:
    body = entry.payload.encode("utf-8")
    header = {
        "v": _FORMAT_VERSION,
        "key": entry.key,
        "call_id": entry.call_id,
        "created_at": round(entry.created_at, 6),
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return json.dumps(header, separators=(",", ":")).encode("ascii") + b"\n" + body


def _decode(entry_id: str, data: bytes) -> Entry:
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise OutboxError("no header line")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise OutboxError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != _FORMAT_VERSION:
        raise OutboxError("unknown header version")
    key, call_id, size, digest = (header.get(k) for k in ("key", "call_id", "bytes", "sha256"))
    created_at = header.get("created_at")
    if not isinstance(key, str) or not key:
        raise OutboxError("header has no key")
    if call_id is not None and not isinstance(call_id, str):
        raise OutboxError("header call_id is not a string")
    if not isinstance(created_at, int | float):
        raise OutboxError("header has no created_at")
    if size != len(body):
        raise OutboxError(f"payload is {len(body)} bytes, header says {size} (torn write)")
    if digest != hashlib.sha256(body).hexdigest():
        raise OutboxError("payload checksum mismatch")
    try:
        payload = body.decode("utf-8")
        json.loads(payload)
    except ValueError as exc:
        raise OutboxError(f"payload is not UTF-8 JSON: {exc}") from None
    return Entry(
        id=entry_id,
        seq=_seq_of(entry_id),
        key=key,
        payload=payload,
        call_id=call_id,
        created_at=float(created_at),
    )


def _seq_of(entry_id: str) -> int:
    seq, _, _ = entry_id.partition("-")
    return int(seq)


def _is_entry_name(name: str) -> bool:
    if not name.endswith(_SUFFIX) or name.startswith("."):
        return False
    seq, dash, rand = name[: -len(_SUFFIX)].partition("-")
    return bool(dash) and seq.isdigit() and bool(rand)


def dumps_document(document: Any) -> str:
    """The JSON text pushed for ``document``: compact, UTF-8 (not ASCII-escaped), no NaN."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class Outbox:
    """A durable FIFO of documents on disk (see the module docstring for the format).

    Thread-safe. ``append``/``append_many`` return only once the entry is on stable
    storage; ``pending`` lists what is left in creation order; ``done`` forgets an entry.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.corrupt_dir = self.directory / "corrupt"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last_seq = max((_seq_of(n[: -len(_SUFFIX)]) for n in self._names()), default=0)
        self.corrupt_total = 0
        self._remove_stale_temp_files()

    # -- writing -----------------------------------------------------------------------

    def append(self, key: str, document: Any, *, call_id: str | None = None) -> str:
        """Store ``document`` (serialised once, here) for ``key``; return the entry id."""
        return self.append_many([(key, document, call_id)])[0].id

    def append_many(self, items: Sequence[tuple[str, Any, str | None]]) -> list[Entry]:
        """Store several ``(key, document, call_id)`` in this order, with one directory sync.

        All or none are committed to the caller: on an ``OSError`` the files already
        renamed stay (and will be pushed: duplicates are allowed, losses are not).
        """
        prepared = [(key, dumps_document(doc), call_id) for key, doc, call_id in items]
        with self._lock:
            entries: list[Entry] = []
            for key, payload, call_id in prepared:
                seq = self._next_seq()
                entries.append(
                    Entry(
                        id=f"{seq:017d}-{ids.token_hex(4)}",
                        seq=seq,
                        key=key,
                        payload=payload,
                        call_id=call_id,
                        created_at=time.time(),
                    )
                )
            files = [(self._path(e.id), _encode(e)) for e in entries]
            durable_write(files, mode=0o640, exclusive=True)  # one directory sync for all
        return entries

    def reserve_seq(self) -> int:
        """A sequence number above every one handed out so far (for a memory-only entry)."""
        with self._lock:
            return self._next_seq()

    def _next_seq(self) -> int:
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)
        return self._last_seq

    # -- reading and forgetting ----------------------------------------------------------

    def pending(self) -> list[Entry]:
        """Every readable entry, oldest first; unreadable ones are moved to ``corrupt/``."""
        entries: list[Entry] = []
        for name in sorted(self._names(), key=lambda n: (_seq_of(n[: -len(_SUFFIX)]), n)):
            entry_id = name[: -len(_SUFFIX)]
            path = self.directory / name
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # done() by someone else meanwhile
                continue
            except OSError as exc:
                self._move_aside(path, f"unreadable: {exc}")
                continue
            try:
                entries.append(_decode(entry_id, data))
            except OutboxError as exc:
                self._move_aside(path, str(exc))
        return entries

    def depth(self) -> int:
        """How many entry files are in the directory (cheap: no reading)."""
        return len(self._names())

    def done(self, entry_id: str) -> None:
        """Forget one entry (Redis has it). Unknown ids are ignored."""
        self.done_many([entry_id])

    def done_many(self, entry_ids: Iterable[str]) -> None:
        """Forget several entries with one directory sync."""
        removed = False
        for entry_id in entry_ids:
            try:
                self._path(entry_id).unlink()
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            fsync_dir(self.directory)

    # -- internals -------------------------------------------------------------------

    def _path(self, entry_id: str) -> Path:
        if "/" in entry_id or entry_id.startswith("."):
            raise ValueError(f"not an outbox entry id: {entry_id!r}")
        return self.directory / f"{entry_id}{_SUFFIX}"

    def _names(self) -> list[str]:
        return [n for n in os.listdir(self.directory) if _is_entry_name(n)]

    def _move_aside(self, path: Path, reason: str) -> None:
        self.corrupt_total += 1
        try:
            self.corrupt_dir.mkdir(exist_ok=True)
            target = self.corrupt_dir / path.name
            if target.exists():
                target = self.corrupt_dir / f"{path.name}.{time.time_ns()}"
            os.rename(path, target)
            fsync_dir(self.directory)
        except OSError as exc:
            log.error(
                "event=outbox_corrupt file=%s reason=%s moved_to=- error=%s",
                quote_value(path),
                quote_value(reason),
                quote_value(exc),
            )
            return
        log.error(
            "event=outbox_corrupt file=%s reason=%s moved_to=%s",
            quote_value(path),
            quote_value(reason),
            quote_value(target),
        )

    def _remove_stale_temp_files(self) -> None:
        for name in os.listdir(self.directory):
            if name.startswith(".") and name.endswith(f"{_SUFFIX}.tmp"):
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()
                    log.warning(
                        "event=outbox_uncommitted_removed file=%s",
                        quote_value(self.directory / name),
                    )


@dataclass(frozen=True)
class _Submission:
    """One call's documents on their way to the outbox."""

    call_id: str
    items: list[tuple[str, Any, str | None]]
    on_durable: Callable[[], None] | None


def _run_callback(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # the engine's callback must not stop the writer
        log.exception("event=notify_on_durable_failed")


class Notifier:
    """The CDR sink that puts every finished call on Redis, never losing one.

    ``submit`` (the call engine, any thread) → outbox on disk + in-memory queue → the
    pusher task (started by :meth:`start`) → ``LPUSH`` → entry deleted. Keys:
    ``{key_prefix}:notifications:cdr`` always, ``{key_prefix}:notifications:c2d`` when
    ``legacy_c2d``; the cdr entry of a call is always queued before its c2d entry.
    """

    BATCH = 64
    """Entries per MULTI/EXEC when draining a backlog."""

    def __init__(
        self,
        config: RedisConfig,
        outbox_dir: Path | str,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        idle_ping: float = 10.0,
        background: bool = False,
        max_write_backlog: int = 10_000,
    ) -> None:
        if max_write_backlog < 1:
            raise ValueError("max_write_backlog must be at least 1")
        self.config = config
        self.background = background
        """Outbox writes on the writer thread (the service) instead of in ``submit``."""
        self.max_write_backlog = max_write_backlog
        """Calls waiting for the writer thread beyond which new calls are refused."""
        self._writes: list[_Submission] = []
        self._backlog = 0  # submitted, not yet committed (queued or being written)
        self._backlog_full = False
        self._backlog_full_total = 0
        self._wcond = threading.Condition()
        self._writing = False
        self._writer: threading.Thread | None = None
        self.cdr_key = f"{config.key_prefix}:notifications:cdr"
        self.c2d_key = f"{config.key_prefix}:notifications:c2d"
        self.outbox = Outbox(outbox_dir)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_ping = idle_ping
        self._queue: deque[Entry] = deque()
        self._lock = threading.Lock()  # orders outbox writes with the queue
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._cut_backoff: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._redis: aioredis.Redis | None = None
        self._done_future: asyncio.Future[None] | None = None
        # status
        self._redis_ok = False
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._pushed_total = 0
        self._submitted_total = 0
        self._last_push_at: float | None = None
        self._down_since: float | None = None
        self._failures = 0
        self._next_retry_at: float | None = None
        self._disk_errors_total = 0

    # -- the sink (call engine side) ---------------------------------------------------

    def submit(self, cdr: Cdr, on_durable: Callable[[], None] | None = None) -> None:
        """Queue ``cdr``'s notifications durably, then call ``on_durable`` (see the
        module docstring); never raises."""
        try:
            call_id = cdr.call_id
            items: list[tuple[str, Any, str | None]] = [(self.cdr_key, cdr.cdr_envelope(), call_id)]
            if self.config.legacy_c2d:
                items.append((self.c2d_key, cdr.c2d_document(), call_id))
            submission = _Submission(call_id, items, on_durable)
            if not self.background:
                with self._lock:
                    self._commit([submission], threaded=False)
                return
            with self._wcond:
                self._writes.append(submission)
                self._backlog += 1
                if self._backlog >= self.max_write_backlog and not self._backlog_full:
                    self._backlog_full = True
                    self._backlog_full_total += 1
                    log.error(
                        "event=notify_write_backlog_full pending=%d max=%d "
                        "action=refusing_new_calls",
                        self._backlog,
                        self.max_write_backlog,
                    )
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_loop, name="notify-outbox", daemon=True
                    )
                    self._writer.start()
                self._wcond.notify_all()
        except Exception:  # the engine must never see a sink error
            log.exception("event=notify_submit_failed call=%s", getattr(cdr, "call_id", "-"))

    def _write_loop(self) -> None:
        """The writer thread: commits what was submitted meanwhile, in order, forever."""
        while True:
            with self._wcond:
                self._wcond.wait_for(lambda: bool(self._writes))
                batch, self._writes = self._writes, []
                self._writing = True
            try:
                self._commit(batch, threaded=True)
            except Exception:  # never lose the thread
                log.exception("event=notify_submit_failed calls=%d", len(batch))
            finally:
                with self._wcond:
                    self._writing = False
                    self._backlog -= len(batch)
                    if self._backlog_full and self._backlog < self.max_write_backlog // 2:
                        self._backlog_full = False
                        log.info("event=notify_write_backlog_drained pending=%d", self._backlog)
                    self._wcond.notify_all()

    @property
    def accepting_calls(self) -> bool:
        """False while ``max_write_backlog`` or more ended calls wait for the writer thread
        (the disk is not keeping up): the API refuses new calls meanwhile. It turns True
        again once the backlog is below half the limit."""
        return not self._backlog_full

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted CDR is in the outbox (True) or ``timeout`` passed."""
        with self._wcond:
            return self._wcond.wait_for(lambda: not self._writes and not self._writing, timeout)

    def _commit(self, batch: list[_Submission], *, threaded: bool) -> None:
        """Write ``batch``'s documents to the outbox (one ``durable_write``), queue them
        for the pusher in order, then tell each call (``on_durable``)."""
        items = [item for s in batch for item in s.items]
        try:
            entries = self.outbox.append_many(items)
            durable = True
        except OSError as exc:
            durable = False
            self._disk_errors_total += 1
            self._last_error = f"outbox write failed: {exc}"
            self._last_error_at = time.time()
            entries = [self._memory_entry(k, d, c) for k, d, c in items]
            log.error(
                "event=notify_outbox_write_failed calls=%s error=%s kept=memory",
                ",".join(s.call_id for s in batch),
                quote_value(exc),
            )
        with self._lock if threaded else contextlib.nullcontext():
            self._queue.extend(entries)
            self._submitted_total += len(batch)
            depth = len(self._queue)
        for s in batch:
            log.info(
                "event=notify_queued call=%s entries=%d outbox_depth=%d",
                s.call_id,
                len(s.items),
                depth,
            )
        if durable:
            callbacks = [s.on_durable for s in batch if s.on_durable is not None]
            if callbacks:
                self._call_on_loop(callbacks, threaded=threaded)
        self._poke()

    def _call_on_loop(self, callbacks: list[Callable[[], None]], *, threaded: bool) -> None:
        loop = self._loop
        if not threaded or loop is None or loop.is_closed():
            for callback in callbacks:
                _run_callback(callback)
            return
        for callback in callbacks:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_run_callback, callback)

    def _memory_entry(self, key: str, document: Any, call_id: str | None) -> Entry:
        seq = self.outbox.reserve_seq()
        return Entry(
            id=f"mem-{seq}",
            seq=seq,
            key=key,
            payload=dumps_document(document),
            call_id=call_id,
            created_at=time.time(),
            durable=False,
        )

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Replay what a previous run left in the outbox, then start pushing."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._cut_backoff = asyncio.Event()
        with self._lock:
            on_disk = self.outbox.pending()
            memory_only = [e for e in self._queue if not e.durable]
            self._queue = deque(sorted(on_disk + memory_only, key=lambda e: e.seq))
            depth = len(self._queue)
        log.info(
            "event=notify_started cdr_key=%s c2d_key=%s outbox=%s outbox_depth=%d",
            self.cdr_key,
            self.c2d_key if self.config.legacy_c2d else "-",
            quote_value(self.outbox.directory),
            depth,
        )
        self._redis = aioredis.from_url(
            self.config.url,
            socket_connect_timeout=3.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )
        self._task = asyncio.create_task(self._run(), name="notify-pusher")
        self._wake.set()

    async def stop(self, timeout: float = 2.0) -> None:
        """Give the pusher up to ``timeout`` s to drain (one immediate retry if Redis
        was down), then stop it. What is left stays in the outbox for the next start."""
        if self.background:  # what the writer thread holds goes to the outbox first
            await asyncio.to_thread(self.flush, max(timeout, 5.0))
        task = self._task
        if task is None:
            return
        if self._queue and self._cut_backoff is not None:
            self._cut_backoff.set()
        deadline = time.monotonic() + timeout
        while self._queue and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None
        if self._done_future is not None:
            with contextlib.suppress(Exception):
                await self._done_future
            self._done_future = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None
        lost_on_stop = sum(1 for e in self._queue if not e.durable)
        log.info(
            "event=notify_stopped outbox_depth=%d pushed_total=%d%s",
            len(self._queue),
            self._pushed_total,
            f" memory_only_dropped={lost_on_stop}" if lost_on_stop else "",
        )

    # -- status (read by the health and metrics endpoints) ------------------------------

    def status(self) -> dict[str, Any]:
        """A snapshot for health/metrics. Keys:

        ``redis_ok`` (bool: the last contact with Redis succeeded), ``outbox_depth``
        (entries not yet acknowledged by Redis), ``last_error`` / ``last_error_at``
        (the last Redis or disk error and its Unix time; kept after recovery),
        ``pushed_total`` (documents Redis acknowledged, this Notifier),
        ``submitted_total`` (CDRs handed in, this Notifier), ``last_push_at`` (Unix time of
        the last acknowledged push, or None), ``oldest_pending_at`` (Unix creation time of
        the oldest waiting entry, or None), ``down_since`` (Unix time the current outage
        began, or None), ``consecutive_failures``, ``next_retry_at`` (Unix time, or
        None), ``disk_errors_total``, ``corrupt_total`` (files moved to ``corrupt/``),
        ``running`` (the pusher task is alive), ``keys`` (the LISTs pushed to),
        ``outbox_dir``, ``write_backlog`` (ended calls waiting for the writer thread),
        ``write_backlog_full`` (new calls are refused: see :attr:`accepting_calls`),
        ``write_backlog_full_total`` (times the limit was reached).
        """
        with self._lock:
            depth = len(self._queue)
            oldest = self._queue[0].created_at if self._queue else None
        keys = [self.cdr_key] + ([self.c2d_key] if self.config.legacy_c2d else [])
        return {
            "redis_ok": self._redis_ok,
            "outbox_depth": depth,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "pushed_total": self._pushed_total,
            "submitted_total": self._submitted_total,
            "last_push_at": self._last_push_at,
            "oldest_pending_at": oldest,
            "down_since": self._down_since,
            "consecutive_failures": self._failures,
            "next_retry_at": self._next_retry_at,
            "disk_errors_total": self._disk_errors_total,
            "corrupt_total": self.outbox.corrupt_total,
            "running": self._task is not None and not self._task.done(),
            "keys": keys,
            "outbox_dir": str(self.outbox.directory),
            "write_backlog": self._backlog,
            "write_backlog_full": self._backlog_full,
            "write_backlog_full_total": self._backlog_full_total,
        }

    # -- the pusher --------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                if not self._queue:
                    self._wake.clear()
                    if not self._queue:
                        woken = await self._wait(
                            self._wake, self.idle_ping if self._redis_ok else 0
                        )
                        if not woken and not self._queue:
                            await self._ping()
                        continue
                await self._push_batch()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                await self._failed(exc)
            except Exception as exc:  # a bug must not end delivery for good
                log.exception("event=notify_pusher_error")
                await self._failed(exc)

    async def _wait(self, event: asyncio.Event, timeout: float) -> bool:
        if timeout <= 0:
            return event.is_set()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _ping(self) -> None:
        assert self._redis is not None
        await self._redis.ping()
        self._succeeded()

    async def _push_batch(self) -> None:
        assert self._redis is not None
        batch = list(itertools.islice(self._queue, self.BATCH))
        async with self._redis.pipeline(transaction=True) as pipe:
            for entry in batch:
                pipe.lpush(entry.key, entry.payload)
            results = await pipe.execute(raise_on_error=False)
        # Per key, entries up to the first refused one are delivered; from it on they stay
        # queued in order (WRONGTYPE on one key must not hold back the other key).
        errors: list[Exception] = []
        failed_keys: set[str] = set()
        pushed: list[Entry] = []
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                errors.append(result)
                failed_keys.add(entry.key)
            elif entry.key not in failed_keys:
                pushed.append(entry)
        pushed_ids = {e.id for e in pushed}
        with self._lock:
            kept = [self._queue.popleft() for _ in range(len(batch))]
            self._queue.extendleft(reversed([e for e in kept if e.id not in pushed_ids]))
            depth = len(self._queue)
        if pushed:
            now = time.time()
            self._pushed_total += len(pushed)
            self._last_push_at = now
            for entry in pushed:
                log.info(
                    "event=notify_pushed key=%s call=%s entry=%s outbox_depth=%d",
                    entry.key,
                    entry.call_id or "-",
                    entry.id,
                    depth,
                )
        if not errors:
            self._succeeded()
        if pushed:
            durable = [e.id for e in pushed if e.durable]
            if durable:
                # off the loop (a directory fsync), and shielded: stop() waits for it, so a
                # new Notifier on the same directory never sees an entry already delivered
                self._done_future = asyncio.ensure_future(asyncio.to_thread(self._forget, durable))
                await asyncio.shield(self._done_future)
        if errors:
            raise errors[0]

    def _forget(self, entry_ids: list[str]) -> None:
        try:
            self.outbox.done_many(entry_ids)
        except OSError as exc:  # they will be pushed again after a restart
            log.error("event=outbox_done_failed error=%s", quote_value(exc))

    def _succeeded(self) -> None:
        if not self._redis_ok and self._down_since is not None:
            log.info(
                "event=notify_redis_up down_for=%.1f failures=%d outbox_depth=%d",
                time.time() - self._down_since,
                self._failures,
                len(self._queue),
            )
        elif not self._redis_ok:
            log.info("event=notify_redis_up outbox_depth=%d", len(self._queue))
        self._redis_ok = True
        self._down_since = None
        self._failures = 0
        self._next_retry_at = None

    async def _failed(self, exc: BaseException) -> None:
        assert self._cut_backoff is not None
        delay = self.backoff_initial * 2.0 ** min(self._failures, 32)
        delay = min(self.backoff_max, delay * random.uniform(0.8, 1.2))
        self._failures += 1
        now = time.time()
        error = f"{type(exc).__name__}: {exc}"
        self._last_error = error
        self._last_error_at = now
        self._next_retry_at = now + delay
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "event=notify_redis_down error=%s retry_in=%.2f outbox_depth=%d",
                quote_value(error),
                delay,
                len(self._queue),
            )
        else:
            log.debug(
                "event=notify_redis_retry error=%s retry_in=%.2f failures=%d",
                quote_value(error),
                delay,
                self._failures,
            )
        self._redis_ok = False
        self._cut_backoff.clear()
        await self._wait(self._cut_backoff, delay)
        self._next_retry_at = None
