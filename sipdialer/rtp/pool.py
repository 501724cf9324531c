"""The media worker pool: the RTP relay in N processes, driven from the engine's process.

Owns, in the call engine's process, the worker processes (:mod:`sipdialer.rtp.worker`),
their control channels (:mod:`sipdialer.rtp.control`) and a :class:`RemoteBridge` proxy
per bridge that stands where an in-process :class:`~sipdialer.rtp.relay.Bridge` would:
:class:`~sipdialer.engine.dialer.CallRunner` opens its bridge here whenever the service
runs workers (``[media] workers``, default one per CPU), and ends the call with cause 41
``media_lost`` when :attr:`RemoteBridge.lost` fires.

*Processes.* :meth:`MediaPool.start` starts each worker as ``python -m
sipdialer.rtp.worker`` with its end of a ``socketpair`` passed as an inherited fd
(``pass_fds``) — not ``multiprocessing``: a fresh interpreter inherits none of the
engine's sockets, loop or threads (fork would), needs no pickling and no resource
tracker, and both ends see the other's death as EOF on the one socket, whatever killed
it. The worker's stdout/stderr are the engine's (its log lines carry
``media_worker=<pid>``).

*Ports.* The ``[sip] rtp_ports`` range is cut into one disjoint slice per worker
(:func:`split_ports`), each worker choosing ports at random inside its slice as the
in-process relay does: no cross-process coordination, and a restarted worker takes its
slice back (the kernel freed its sockets when it died). A slice that runs out makes the
pool try the other workers before raising
:class:`~sipdialer.rtp.ports.PortsExhausted`.

*Cores.* With ``pin_cpus`` worker ``i`` is pinned to the ``i``-th CPU the engine may
use (so two workers never share a core while one sits idle); without, the kernel
places them.

*Placement.* A new bridge goes to the live worker with the fewest open bridges (the
lowest index on a tie).

*Proxies.* :class:`RemoteBridge` and :class:`RemoteLeg` offer what the dialer uses of
Bridge and MediaLeg. What needs an answer is a coroutine (:meth:`MediaPool.open`,
:meth:`RemoteBridge.start_recording`, :meth:`RemoteLeg.set_srtp_checked`,
:meth:`RemoteBridge.close`, :meth:`RemoteBridge.refresh`); the rest
(:meth:`RemoteLeg.set_remote`, :meth:`RemoteLeg.set_srtp`, :meth:`RemoteLeg.hold`,
:meth:`RemoteBridge.connect`,
:meth:`RemoteBridge.play_to_a`, :meth:`RemoteBridge.stop_recording`) is sent without
waiting, with local mirrors of what the engine reads back: ``remote``, ``codec``,
``held``, ``connected``. :meth:`RemoteLeg.media_address` and the address check of
``set_remote`` run locally (same rules as the relay's). The counters, ``last_rx``,
``source`` and ``recording_error`` come from the worker's stats, about once a second, so
they are up to :attr:`MediaPool.stats_interval` old: an RTP-timeout check should
:meth:`RemoteBridge.refresh` before it ends a call. ``last_rx`` is in the engine's loop
time (the worker sends how long each leg has been silent). A stats frame written before
the worker had applied the engine's latest request for that bridge does not overwrite
``remote``/``source`` (``applied`` vs the proxy's count of requests sent).

Ringback: :meth:`RemoteBridge.play_to_a` takes the same int16 array as the Bridge's (or a
tone name): the pool defines each distinct array once per worker (and again in a
restarted one), then plays it by name.

*Death.* EOF on a worker's channel, its exit (``kill -9``, a crash, an invalid frame)
or more than ``max_backlog`` (:data:`MAX_BACKLOG`) bytes of requests it has not read
(stopped, wedged) mark it dead: each of *its* bridges' :attr:`RemoteBridge.lost` future
gets the reason (and ``on_lost(bridge, reason)`` is called) — the engine's cue to end
those calls with cause 41; their recordings are left as the worker last flushed them, repaired with
:func:`~sipdialer.rtp.recorder.repair_wav` and reported partial. Pending requests to it
fail with :class:`WorkerLost`. The worker is started again (after
:attr:`MediaPool.restart_delay`, doubling up to 10 s while it keeps dying within 5 s of
its start) and takes new bridges once it has said hello. Other workers' bridges are not
touched.

*Wiring (to come), what changes for the dialer:* ``Bridge.open(host, allocator)``
becomes ``await pool.open(host)``; ``bridge.start_recording(Recorder(path, now=…))``
becomes ``await bridge.start_recording(path)`` (:class:`RecordingUnavailable` is an
``OSError``, as the Recorder's constructor raises), and what the dialer reads of the
Recorder after :meth:`RemoteBridge.close` is :attr:`RemoteBridge.recording`
(:class:`~sipdialer.rtp.control.RecordingResult`: ``partial``, ``removed``,
``duration``, ``oversize_packets``, ``overflow_packets``, ``excess_samples``, ``error``
as text); a call must end (cause 41) when
:attr:`RemoteBridge.lost` completes. Everything else keeps its name and signature.
Requests sent without waiting reach the worker over the channel while RTP reaches it
over UDP: a packet sent within a fraction of a millisecond of ``set_remote`` may find
the old state (in a call the peer only sends after SDP's round trip through SIP).

*Shutdown.* :meth:`MediaPool.close` closes each channel (the worker closes its bridges,
finishing their recordings, and exits), waits for every process and kills one that does
not exit within :attr:`MediaPool.stop_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from sipdialer.rtp import control as c
from sipdialer.rtp.errors import RtpError
from sipdialer.rtp.ports import PortsExhausted
from sipdialer.rtp.recorder import recordings_disk, repair_wav
from sipdialer.rtp.relay import Codec, MediaAddressError, media_address

__all__ = [
    "MediaPool",
    "MediaRequestFailed",
    "RecordingUnavailable",
    "RemoteBridge",
    "RemoteLeg",
    "WorkerLost",
    "media_address",
    "split_ports",
]

log = logging.getLogger("sipdialer.rtp.pool")

Addr = tuple[Any, ...]
LostCallback = Callable[["RemoteBridge", str], None]
_E = TypeVar("_E", bound=c.Event)

_READ_SIZE = 1 << 16
#: Bytes of requests waiting for a worker that does not read them: past this it is
#: treated as dead (killed and restarted, its bridges lost).
MAX_BACKLOG = 16 << 20
_MAX_RESTART_DELAY = 10.0
_QUICK_DEATH = 5.0


class WorkerLost(RtpError, ConnectionError):
    """The worker hosting a bridge died (or the pool closed) before it answered."""


class MediaRequestFailed(RtpError, RuntimeError):
    """A worker refused a request: :attr:`kind` (:data:`~sipdialer.rtp.control.FAILURE_KINDS`)
    and :attr:`field`, as its :class:`~sipdialer.rtp.control.Failed` said."""

    def __init__(self, failed: c.Failed) -> None:
        super().__init__(failed.error)
        self.kind = failed.kind
        self.field = failed.field


class RecordingUnavailable(MediaRequestFailed, OSError):
    """The worker could not create the recording file (an ``OSError``, as the in-process
    :class:`~sipdialer.rtp.recorder.Recorder` raises)."""


class _PortsExhausted(MediaRequestFailed, PortsExhausted):
    pass


class _MediaAddress(MediaRequestFailed, MediaAddressError):
    pass


def _failure(failed: c.Failed) -> MediaRequestFailed:
    if failed.kind == "recording":
        return RecordingUnavailable(failed)
    if failed.kind == "ports_exhausted":
        return _PortsExhausted(failed)
    if failed.kind == "media_address":
        return _MediaAddress(failed)
    return MediaRequestFailed(failed)


class SrtpKeyLike(Protocol):
    """What :meth:`RemoteLeg.set_srtp` takes: ``sipdialer.rtp.srtp.SrtpKey``'s fields."""

    @property
    def suite(self) -> str: ...

    @property
    def key_salt(self) -> bytes: ...


def split_ports(low: int, high: int, workers: int) -> list[tuple[int, int]]:
    """``[low, high]`` cut into ``workers`` disjoint slices of (nearly) as many even ports
    each, in order; ValueError when a slice would hold fewer than two (one bridge)."""
    if workers < 1:
        raise ValueError("at least one worker")
    evens = list(range(low + (low & 1), high + 1, 2))
    per, extra = divmod(len(evens), workers)
    if per < 2:
        raise ValueError(
            f"RTP port range {low}-{high} has {len(evens)} even ports: too few for "
            f"{workers} workers (two per bridge)"
        )
    out = []
    start = 0
    for i in range(workers):
        n = per + (1 if i < extra else 0)
        first, last = evens[start], evens[start + n - 1]
        out.append((first, min(last + 1, high)))
        start += n
    return out


def _open_request(req: int, *, bid: int, host: str) -> c.Request:
    return c.OpenBridge(req, bid, host)


def _os_error(text: str) -> OSError:
    """An error text from a worker (``ENOSPC: No space left on device``) as an OSError."""
    name, _, message = text.partition(": ")
    code = getattr(errno, name, None) if name.isupper() else None
    return OSError(code, message) if isinstance(code, int) else OSError(text)


def _note_disk(path: Path | None, error: str | None, *, partial: bool) -> None:
    """Tell the engine's :class:`~sipdialer.rtp.recorder.RecordingsDisk` of ``path``'s
    directory (what ``/healthz`` reports) how a worker's recording went."""
    if path is None:
        return
    disk = recordings_disk(path.parent)
    if error is None:
        disk.note_write()
    else:
        disk.note_failure(_os_error(error), partial=partial)


def _dual_stack(host: str) -> bool:
    if host != "::":
        return False
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        return s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def _srtp(k: SrtpKeyLike | None) -> c.SrtpParams | None:
    return None if k is None else c.SrtpParams(k.suite, bytes(k.key_salt))


class RemoteLeg:
    """One leg of a :class:`RemoteBridge`: MediaLeg's control methods and stats."""

    def __init__(self, bridge: RemoteBridge, name: str, local_port: int, now: float) -> None:
        self._bridge = bridge
        self.name = name
        self.local_port = local_port
        self.remote: Addr | None = None
        self.source: Addr | None = None
        self.codec: Codec | None = None
        self.held = False
        self._sdp: Addr | None = None  # the latest SDP address (the latch follows changes)
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.packets_dropped = 0
        self.packets_foreign = 0
        self.srtp_forged = 0
        self.srtp_replayed = 0
        self.last_rx = now

    def __repr__(self) -> str:
        return f"<RemoteLeg {self.name} :{self.local_port} → {self.remote} {self.codec}>"

    def media_address(self, addr: tuple[str, int]) -> Addr | None:
        """As :meth:`~sipdialer.rtp.relay.MediaLeg.media_address` (checked locally)."""
        return media_address(addr, self._bridge._family, self._bridge._dual_stack)

    def set_remote(self, addr: tuple[str, int], codec: Codec) -> None:
        """As :meth:`~sipdialer.rtp.relay.MediaLeg.set_remote`: raises
        :class:`~sipdialer.rtp.relay.MediaAddressError` here, before anything is sent."""
        target = self.media_address(addr)
        if target is not None and target != self._sdp:
            self._sdp = target
            self.remote = target
            self.source = None
        self.codec = codec
        spec = c.CodecSpec(codec.name, codec.pt, codec.dtmf_pt)
        self._bridge._send(c.SetRemote(self._bridge.id, self._leg, addr[0], addr[1], spec))

    def hold(self, on: bool) -> None:
        """Stop (True) or resume (False) sending to this leg."""
        self.held = on
        self._bridge._send(c.Hold(self._bridge.id, self._leg, on))

    def set_srtp(self, inbound: SrtpKeyLike | None, outbound: SrtpKeyLike | None) -> None:
        """As ``MediaLeg.set_srtp``, sent without waiting: the suite and key length are
        checked here (:class:`~sipdialer.rtp.control.ControlError`, a ValueError, and
        nothing is sent); a refusal by the worker is logged. The keys are never logged."""
        b = self._bridge
        b._send(c.SetSrtp(None, b.id, self._leg, _srtp(inbound), _srtp(outbound)))

    async def set_srtp_checked(
        self, inbound: SrtpKeyLike | None, outbound: SrtpKeyLike | None
    ) -> None:
        """:meth:`set_srtp`, waiting for the worker: :class:`MediaRequestFailed` (kind
        ``srtp``) if it refuses."""
        b = self._bridge
        i, o = _srtp(inbound), _srtp(outbound)
        await b._ask(lambda req: c.SetSrtp(req, b.id, self._leg, i, o), c.Done)

    @property
    def _leg(self) -> c.Leg:
        return "A" if self.name == "A" else "B"

    def _apply(self, s: c.LegStats, now: float, current: bool) -> None:
        self.packets_in = s.packets_in
        self.bytes_in = s.bytes_in
        self.packets_out = s.packets_out
        self.packets_dropped = s.packets_dropped
        self.packets_foreign = s.packets_foreign
        self.srtp_forged = s.srtp_forged
        self.srtp_replayed = s.srtp_replayed
        self.last_rx = max(self.last_rx, now - s.idle)
        if current:
            self.source = self._local(s.source)
            self.remote = self._local(s.remote)

    def _local(self, a: c.Address | None) -> Addr | None:
        if a is None:
            return None
        return (a[0], a[1], 0, 0) if self._bridge._family == socket.AF_INET6 else a


class RemoteBridge:
    """A bridge hosted by a media worker; the engine-side stand-in for
    :class:`~sipdialer.rtp.relay.Bridge` (see the module docstring for what is mirrored)."""

    def __init__(self, pool: MediaPool, worker: _Worker, bid: int, host: str, ev: c.Opened) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._pool = pool
        self._worker = worker
        self.id = bid
        self.host = host
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._dual_stack = pool._dual_stack_of(host)
        self.a = RemoteLeg(self, "A", ev.a_port, now)
        self.b = RemoteLeg(self, "B", ev.b_port, now)
        self.connected = False
        self.playing = False
        self.recording_path: Path | None = None
        self.recording_error: str | None = None
        #: The finished recording (after :meth:`close`, or a lost worker), else None.
        self.recording: c.RecordingResult | None = None
        #: Done with the reason when this bridge's worker died with it open.
        self.lost: asyncio.Future[str] = loop.create_future()
        self._closed = False
        self._sent = 0  # requests sent for this bridge (compared with the worker's applied)

    def __repr__(self) -> str:
        return (
            f"<RemoteBridge {self.id} worker={self._worker.index} A={self.a!r} B={self.b!r} "
            f"connected={self.connected}>"
        )

    @property
    def worker_index(self) -> int:
        return self._worker.index

    @property
    def worker_pid(self) -> int | None:
        return self._worker.pid

    @property
    def is_closed(self) -> bool:
        return self._closed

    def last_activity(self) -> float:
        """Engine loop time of the latest packet on either leg (as of the last stats)."""
        return max(self.a.last_rx, self.b.last_rx)

    def connect(self) -> None:
        """Relay A→B and B→A from now on."""
        if self._closed:
            return
        self.connected = True
        self._send(c.Connect(self.id))

    def play_to_a(self, samples: npt.NDArray[np.int16] | str | None) -> None:
        """Loop ``samples`` (int16 8 kHz mono, or a tone name) to A; None stops."""
        if self._closed:
            return
        tone = samples if samples is None or isinstance(samples, str) else self._tone_of(samples)
        self.playing = tone is not None
        self._send(c.PlayToA(self.id, tone))

    def _tone_of(self, samples: npt.NDArray[np.int16]) -> str:
        return self._pool._tone(samples)

    async def start_recording(self, path: str | Path) -> None:
        """Record A (left) and B (right) into a new WAV at ``path`` (made absolute; its
        directory is created by the worker). :class:`RecordingUnavailable` (an OSError)
        when the worker cannot create it."""
        p = Path(path).absolute()
        try:
            await self._ask(lambda req: c.StartRecording(req, self.id, str(p)), c.Done)
        except RecordingUnavailable as exc:
            _note_disk(p, str(exc), partial=True)
            raise
        self.recording_path = p

    def stop_recording(self) -> None:
        """Finish the recording now (the call goes on)."""
        self._send(c.StopRecording(self.id))

    async def refresh(self) -> None:
        """Fetch this bridge's stats now (counters, ``last_rx``, source)."""
        await self._ask(lambda req: c.Query(req, self.id), c.Stats)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the bridge in its worker and take its final stats and recording. Never
        raises (a lost worker or a timeout is logged); idempotent."""
        if self._closed:
            return
        self._closed = True
        self.connected = False
        if self.lost.done():
            return
        try:
            await asyncio.wait_for(
                self._ask(lambda req: c.CloseBridge(req, self.id), c.Closed, closing=True),
                timeout,
            )
        except (WorkerLost, MediaRequestFailed, TimeoutError) as exc:
            log.warning("event=media_close_failed bridge=%d error=%s", self.id, exc)
        self._worker.bridges.pop(self.id, None)

    # -- channel ----------------------------------------------------------------------

    def _send(self, msg: c.Request) -> None:
        if self._closed or self.lost.done():
            return
        self._sent += 1
        self._worker.send(msg)

    async def _ask(
        self, make: Callable[[int], c.Request], want: type[_E], *, closing: bool = False
    ) -> _E:
        if (self._closed and not closing) or self.lost.done():
            raise WorkerLost(f"bridge {self.id} is closed or lost")
        self._sent += 1
        return await self._worker.ask(make, want)

    def _apply(self, s: c.BridgeStats) -> None:
        now = asyncio.get_running_loop().time()
        current = s.applied >= self._sent
        self.a._apply(s.a, now, current)
        self.b._apply(s.b, now, current)
        if current:
            self.playing = s.playing
        if s.recording_error is not None and self.recording_error is None:
            _note_disk(self.recording_path, s.recording_error, partial=True)
        self.recording_error = s.recording_error

    def _finished(self, final: c.BridgeStats, rec: c.RecordingResult | None) -> None:
        # a recording error in the stats is noted by _apply (once)
        noted = self.recording_error is not None or final.recording_error is not None
        self._apply(final)
        self.recording = rec
        if rec is not None:
            if not noted:
                _note_disk(Path(rec.path), rec.error, partial=rec.partial)
            self.recording_error = rec.error

    def _lose(self, reason: str) -> None:
        if self.lost.done() or self._closed:
            return
        if self.recording_path is not None and self.recording is None:
            self.recording = c.RecordingResult(
                path=str(self.recording_path), partial=True, error=reason
            )
            self.recording_error = reason
        self.lost.set_result(reason)


class _Worker:
    """One worker process and its channel (one generation: a restart is a new _Worker)."""

    def __init__(self, pool: MediaPool, index: int, low: int, high: int) -> None:
        self.pool = pool
        self.index = index
        self.low = low
        self.high = high
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.bridges: dict[int, RemoteBridge] = {}
        self.opening = 0  # bridges asked for, not yet open (counted as load)
        self.pending: dict[int, tuple[asyncio.Future[c.Event], type[Any]]] = {}
        self.alive = False
        self.dead = False
        self.started_at = 0.0
        self.hello: asyncio.Future[c.Hello] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def load(self) -> int:
        return len(self.bridges) + self.opening

    async def spawn(self) -> None:
        pool = self.pool
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                pool.python,
                "-m",
                "sipdialer.rtp.worker",
                "--fd",
                str(child.fileno()),
                "--ports",
                f"{self.low}-{self.high}",
                "--stats-interval",
                str(pool.stats_interval),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.pid = self.proc.pid
        self.started_at = time.monotonic()
        reader, self.writer = await asyncio.open_connection(sock=parent)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read(reader)),
            loop.create_task(self._watch(self.proc)),
        ]

    def send(self, msg: c.Request) -> None:
        w = self.writer
        if w is None or w.is_closing() or self.dead:
            return
        w.write(c.encode(msg))
        if w.transport.get_write_buffer_size() > self.pool.max_backlog:
            # alive but not reading (stopped, wedged): its calls cannot be driven any more
            self.pool._worker_gone(self, "it stopped reading its control channel")

    async def ask(self, make: Callable[[int], c.Request], want: type[_E]) -> _E:
        if self.dead:
            raise WorkerLost(f"media worker {self.index} (pid {self.pid}) is gone")
        req = self.pool._next_id()
        fut: asyncio.Future[c.Event] = asyncio.get_running_loop().create_future()
        self.pending[req] = (fut, want)
        try:
            self.send(make(req))
            ev = await fut
        finally:
            self.pending.pop(req, None)
        assert isinstance(ev, want)
        return ev

    async def _read(self, reader: asyncio.StreamReader) -> None:
        frames = c.FrameReader()
        reason = "its control channel closed"
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                for body in frames.feed(data):
                    try:
                        ev = c.parse_event(body)
                    except c.ControlError as exc:
                        log.error(
                            "event=media_worker_message_invalid worker=%d pid=%s field=%s error=%s",
                            self.index,
                            self.pid,
                            exc.field,
                            exc,
                        )
                        continue
                    try:
                        self._dispatch(ev)
                    except Exception:  # a bug here must not stop this worker's reader
                        log.exception("event=media_event_failed worker=%d", self.index)
        except c.ControlError as exc:  # framing: the stream cannot be trusted any more
            reason = f"its control channel broke ({exc})"
        except (ConnectionError, OSError) as exc:
            reason = f"its control channel failed ({exc})"
        self.pool._worker_gone(self, reason)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.pool._worker_gone(self, f"it exited with status {code}")

    def _dispatch(self, ev: c.Event) -> None:
        if isinstance(ev, c.Hello):
            if not self.hello.done():
                self.hello.set_result(ev)
            return
        if isinstance(ev, c.Stats):
            for s in ev.bridges:
                b = self.bridges.get(s.bridge)
                if b is not None:
                    b._apply(s)
        elif isinstance(ev, c.Closed):
            b = self.bridges.pop(ev.stats.bridge, None)
            if b is not None:
                b._finished(ev.stats, ev.recording)
        elif isinstance(ev, c.Failed) and (ev.req is None or ev.req not in self.pending):
            log.warning(
                "event=media_request_failed worker=%d bridge=%s kind=%s field=%s error=%s",
                self.index,
                ev.bridge,
                ev.kind,
                ev.field,
                ev.error,
            )
            return
        req = getattr(ev, "req", None)
        if req is None:
            return
        entry = self.pending.get(req)
        if entry is None:
            return
        fut, want = entry
        if fut.done():
            return
        if isinstance(ev, c.Failed):
            fut.set_exception(_failure(ev))
        elif isinstance(ev, want):
            fut.set_result(ev)
        else:
            fut.set_exception(WorkerLost(f"unexpected {type(ev).__name__} for request {req}"))

    def fail_pending(self, exc: Exception) -> None:
        for fut, _ in list(self.pending.values()):
            if not fut.done():
                fut.set_exception(exc)
        if not self.hello.done():
            self.hello.set_exception(exc)
            self.hello.exception()  # retrieved: nobody may be waiting

    async def stop(self, timeout: float) -> None:
        """Close the channel, wait for the process (kill it after ``timeout``)."""
        w = self.writer
        if w is not None and not w.is_closing():
            # half-close: the worker sees EOF, and its last words (Closed) still arrive
            with contextlib.suppress(OSError, RuntimeError):
                w.write_eof()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("event=media_worker_kill worker=%d pid=%s", self.index, self.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._tasks:  # let the reader take what the worker said before it exited
            await asyncio.wait(self._tasks, timeout=1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if w is not None:
            w.close()


class MediaPool:
    """N media worker processes sharing the RTP port range (see the module docstring).

    ``on_lost(bridge, reason)`` is called for each open bridge of a worker that died.
    """

    def __init__(
        self,
        workers: int,
        host: str,
        ports: tuple[int, int],
        *,
        stats_interval: float = 1.0,
        restart_delay: float = 0.2,
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        max_backlog: int = MAX_BACKLOG,
        pin_cpus: bool = False,
        on_lost: LostCallback | None = None,
        python: str = sys.executable,
    ) -> None:
        self.host = host
        self.slices = split_ports(ports[0], ports[1], workers)
        self.stats_interval = stats_interval
        self.restart_delay = restart_delay
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.max_backlog = max_backlog
        #: With ``pin_cpus``, worker ``i`` runs on the ``i``-th CPU this process may use
        #: (modulo their number); else the kernel places them.
        self.cpus: list[int] | None = sorted(os.sched_getaffinity(0)) if pin_cpus else None
        self.on_lost = on_lost
        self.python = python
        self.workers: list[_Worker | None] = [None] * workers
        #: Workers started again after a death (a counter for /metrics).
        self.restarts = 0
        self._ids = 0
        self._tones: dict[int, tuple[npt.NDArray[np.int16], str]] = {}
        self._tone_bytes: dict[str, bytes] = {}
        self._dual: dict[str, bool] = {}
        self._closing = False
        self._restarting: set[asyncio.Task[None]] = set()
        self._delays = [restart_delay] * workers

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has said hello."""
        await asyncio.gather(*(self._start_worker(i) for i in range(len(self.workers))))

    async def _start_worker(self, index: int) -> None:
        low, high = self.slices[index]
        w = _Worker(self, index, low, high)
        self.workers[index] = w
        try:
            await w.spawn()
            hello = await asyncio.wait_for(asyncio.shield(w.hello), self.start_timeout)
            if hello.version != c.PROTOCOL_VERSION:
                raise RtpError(f"media worker speaks protocol {hello.version}")
        except BaseException:
            # not alive yet: no restart from _worker_gone, the caller decides
            self._worker_gone(w, "it did not start")
            await w.stop(0.5)
            raise
        for name, data in self._tone_bytes.items():
            w.send(c.DefineTone(name, data))
        if self.cpus is not None and w.pid is not None:
            with contextlib.suppress(OSError):  # gone already: its watcher reports it
                os.sched_setaffinity(w.pid, {self.cpus[index % len(self.cpus)]})
        w.alive = True
        log.info("event=media_worker_started worker=%d pid=%s ports=%d-%d", index, w.pid, low, high)

    async def close(self) -> None:
        """Stop every worker (their bridges close, recordings finish); idempotent."""
        self._closing = True
        for task in list(self._restarting):
            task.cancel()
        await asyncio.gather(*self._restarting, return_exceptions=True)
        workers = [w for w in self.workers if w is not None]
        for w in workers:
            w.alive = False
            for b in w.bridges.values():
                b._closed = True
        await asyncio.gather(*(w.stop(self.stop_timeout) for w in workers))
        for w in workers:
            w.dead = True
            w.fail_pending(WorkerLost("the media pool closed"))

    # -- bridges --------------------------------------------------------------------------

    async def open(self, host: str | None = None) -> RemoteBridge:
        """A new bridge on ``host`` (the pool's by default) in the least-loaded live
        worker; :class:`~sipdialer.rtp.ports.PortsExhausted` when no worker has ports,
        :class:`WorkerLost` when none is alive."""
        host = host or self.host
        tried: set[int] = set()
        last: Exception | None = None
        while True:
            live = [w for w in self.workers if w is not None and w.alive and w.index not in tried]
            if not live or self._closing:
                if last is not None:
                    raise last
                raise WorkerLost("no media worker is running")
            w = min(live, key=lambda x: (x.load, x.index))
            tried.add(w.index)
            bid = self._next_id()
            w.opening += 1
            try:
                ev = await w.ask(functools.partial(_open_request, bid=bid, host=host), c.Opened)
            except (PortsExhausted, WorkerLost) as exc:
                last = exc
                continue
            finally:
                w.opening -= 1
            bridge = RemoteBridge(self, w, bid, host, ev)
            if w.dead:  # died between the answer and now
                bridge._lose("its media worker died")
            else:
                w.bridges[bid] = bridge
            return bridge

    @property
    def bridges(self) -> list[RemoteBridge]:
        """Every open bridge of every worker."""
        return [b for w in self.workers if w is not None for b in w.bridges.values()]

    def info(self) -> list[dict[str, object]]:
        """Per worker: index, pid, alive, open bridges, port slice."""
        out: list[dict[str, object]] = []
        for i, w in enumerate(self.workers):
            low, high = self.slices[i]
            out.append(
                {
                    "index": i,
                    "pid": None if w is None else w.pid,
                    "alive": w is not None and w.alive,
                    "bridges": 0 if w is None else len(w.bridges),
                    "ports": f"{low}-{high}",
                }
            )
        return out

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _dual_stack_of(self, host: str) -> bool:
        v = self._dual.get(host)
        if v is None:
            v = self._dual[host] = _dual_stack(host)
        return v

    def _tone(self, samples: npt.NDArray[np.int16]) -> str:
        """The name of ``samples`` as a worker tone, defined in every worker on first use
        (by identity: the engine plays the same array to every call)."""
        known = self._tones.get(id(samples))
        if known is not None and known[0] is samples:
            return known[1]
        arr = np.asarray(samples, dtype=np.int16)
        if arr.ndim != 1 or not 0 < len(arr) <= c.MAX_TONE_SAMPLES:
            raise ValueError(f"ringback must be 1-{c.MAX_TONE_SAMPLES} int16 samples, 1-D")
        if len(self._tone_bytes) >= c.MAX_TONES:
            raise ValueError(f"at most {c.MAX_TONES} distinct ringback tones")
        name = f"tone{len(self._tone_bytes) + 1}"
        data = arr.astype("<i2").tobytes()
        self._tones[id(samples)] = (samples, name)
        self._tone_bytes[name] = data
        for w in self.workers:
            if w is not None and not w.dead:
                w.send(c.DefineTone(name, data))
        return name

    # -- deaths -----------------------------------------------------------------------------

    def _worker_gone(self, w: _Worker, reason: str) -> None:
        if w.dead:
            return
        was_alive = w.alive
        w.dead = True
        w.alive = False
        why = f"media worker {w.index} (pid {w.pid}) died: {reason}"
        w.fail_pending(WorkerLost(why))
        if self._closing or not was_alive:
            return
        log.error("event=media_worker_died worker=%d pid=%s reason=%s", w.index, w.pid, reason)
        lost = list(w.bridges.values())
        w.bridges.clear()
        for b in lost:
            b._lose(why)
            if self.on_lost is not None:
                try:
                    self.on_lost(b, why)
                except Exception:
                    log.exception("event=media_on_lost_failed bridge=%d", b.id)
        task = asyncio.get_running_loop().create_task(self._restart(w, lost))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    async def _restart(self, w: _Worker, lost: list[RemoteBridge]) -> None:
        await w.stop(0.5)  # the channel may be gone while the process lives: end it
        for b in lost:  # a file the worker was writing when it died: fix its header
            if b.recording_path is not None:
                with contextlib.suppress(OSError, ValueError):
                    await asyncio.to_thread(repair_wav, b.recording_path)
        i = w.index
        quick = time.monotonic() - w.started_at < _QUICK_DEATH
        delay = self._delays[i]
        self._delays[i] = min(delay * 2, _MAX_RESTART_DELAY) if quick else self.restart_delay
        while not self._closing:
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                await self._start_worker(i)
            except Exception as exc:
                log.error("event=media_worker_restart_failed worker=%d error=%s", i, exc)
                delay = min(delay * 2, _MAX_RESTART_DELAY)
                continue
            self.restarts += 1
            return
