"""A media worker process: hosts RTP bridges on its own uvloop, driven over a control channel.

Owns one process's share of the relay: the :class:`~sipdialer.rtp.relay.Bridge` objects
(with their :class:`~sipdialer.rtp.relay.MediaLeg` sockets and
:class:`~sipdialer.rtp.recorder.Recorder`, used as they are) that the engine's
:class:`~sipdialer.rtp.pool.MediaPool` opened here, the worker's slice of the RTP port
range (its own :class:`~sipdialer.rtp.ports.PortAllocator`; the pool gives every worker a
disjoint slice, so no two processes ever try the same port) and its ringback tones.
Every call's media runs in one of these when ``[media] workers`` > 0 (the default).

Started by the pool as ``python -m sipdialer.rtp.worker --fd N --ports LOW-HIGH``, where
``N`` is its end of a ``socketpair`` (stream) carrying :mod:`sipdialer.rtp.control`
frames both ways. It says :class:`~sipdialer.rtp.control.Hello`, then carries out each
request in the order it arrived (a bridge's ``close`` runs in the background after the
bridge has left the table, so a slow recorder close does not hold up other calls), and
every ``--stats-interval`` seconds (1 s) sends every bridge's counters in
:class:`~sipdialer.rtp.control.Stats` frames of at most
:data:`~sipdialer.rtp.control.MAX_STATS_PER_FRAME` bridges, one frame per pass of the
loop so the relay never waits for more than one frame's encoding — skipped while more than
:data:`STATS_BACKLOG` bytes wait to be written (an engine that does not read gets no
growing backlog of stats). An invalid request is answered with a
:class:`~sipdialer.rtp.control.Failed` naming the field and the worker carries on; a
broken framing (a length over the limit) ends the channel.

It exits when its channel closes (the engine exited, crashed or closed the pool): it
closes every bridge first, so recordings are finished and their headers patched. SIGINT
and SIGTERM are ignored: a Ctrl-C at the terminal reaches the whole process group, and a
service manager's stop signals every process of the service at once, while the engine
still has calls to end (and their recordings to finish) — the engine decides when its
workers stop, and when it is gone, even killed, its end of the channel closes. It logs
(``event=…`` lines on stderr) but never an SRTP key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sipdialer.rtp import control as c
from sipdialer.rtp import srtp
from sipdialer.rtp.ports import PortAllocator, PortsExhausted
from sipdialer.rtp.recorder import Recorder, describe_os_error
from sipdialer.rtp.relay import Bridge, Codec, MediaAddressError, MediaLeg

__all__ = ["STATS_BACKLOG", "Worker", "main"]

log = logging.getLogger("sipdialer.rtp.worker")

#: Stats are skipped while more than this many bytes wait in the channel's write buffer.
STATS_BACKLOG = 1 << 20
_READ_SIZE = 1 << 16


@dataclass
class _Hosted:
    bridge: Bridge
    applied: int = 0
    recorder: Recorder | None = None
    closing: bool = False


def _addr(a: tuple[Any, ...] | None) -> c.Address | None:
    return None if a is None else (str(a[0]), int(a[1]))


def leg_stats(leg: MediaLeg, now: float) -> c.LegStats:
    """A leg's counters for the wire."""
    return c.LegStats(
        packets_in=leg.packets_in,
        bytes_in=leg.bytes_in,
        packets_out=leg.packets_out,
        packets_dropped=leg.packets_dropped,
        packets_foreign=leg.packets_foreign,
        # (a relay without SRTP has no such counters)
        srtp_forged=getattr(leg, "srtp_forged", 0),
        srtp_replayed=getattr(leg, "srtp_replayed", 0),
        idle=max(0.0, now - leg.last_rx),
        source=_addr(leg.source),
        remote=_addr(leg.remote),
    )


def _short(exc: BaseException) -> str:
    """``exc`` for the wire: an OSError as ``ENOSPC: No space left on device`` (no file
    name: a recording's path holds its unguessable reference), else its message."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return describe_os_error(exc)
    text = str(exc) or type(exc).__name__
    return text[:900]


class Worker:
    """The bridges of one worker process and the requests that drive them."""

    def __init__(self, low: int, high: int, *, stats_interval: float = 1.0) -> None:
        self.low = low
        self.high = high
        self.allocator = PortAllocator(low, high)
        self.stats_interval = stats_interval
        self.bridges: dict[int, _Hosted] = {}
        self.tones: dict[str, npt.NDArray[np.int16]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # -- the channel ---------------------------------------------------------------------

    def send(self, msg: c.Event) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        writer.write(c.encode(msg))

    async def run(self, sock: socket.socket) -> None:
        """Serve the channel on ``sock`` until it closes, then close every bridge."""
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(sock=sock)
        self._writer = writer
        self.send(c.Hello(os.getpid(), c.PROTOCOL_VERSION, self.low, self.high))
        stats = loop.create_task(self._stats_loop())
        frames = c.FrameReader()
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                try:
                    bodies = frames.feed(data)
                except c.ControlError as exc:
                    log.error("event=control_frame_invalid error=%s", exc)
                    self.send(c.Failed(None, None, "invalid", exc.field, str(exc)))
                    break
                for body in bodies:
                    await self.handle(body)
        except (ConnectionError, OSError) as exc:
            log.warning("event=control_channel_error error=%s", _short(exc))
        finally:
            stats.cancel()
            await self.close_all()
            writer.close()
            # let the last Closed events out before the loop (and the process) ends
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5.0)

    async def close_all(self) -> None:
        """Close every bridge (finishing recordings) and wait for closes under way."""
        hosted = list(self.bridges.items())
        self.bridges.clear()
        for bid, h in hosted:
            self._start_close(None, bid, h)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            try:
                await self._send_stats()
            except Exception:  # a bug: log it, keep relaying and reporting
                log.exception("event=stats_failed")

    async def _send_stats(self) -> None:
        writer = self._writer
        if writer is None or writer.transport.get_write_buffer_size() > STATS_BACKLOG:
            return
        loop = asyncio.get_running_loop()
        items = list(self.bridges.items())
        for i in range(0, len(items), c.MAX_STATS_PER_FRAME):
            if i:
                await asyncio.sleep(0)  # one frame per loop pass: no long stall
            now = loop.time()
            chunk = [(b, h) for b, h in items[i : i + c.MAX_STATS_PER_FRAME] if not h.closing]
            if chunk:
                self.send(c.Stats(None, tuple(self._stats(b, h, now) for b, h in chunk)))

    def _stats(self, bid: int, h: _Hosted, now: float) -> c.BridgeStats:
        br = h.bridge
        err = br.recording_error
        return c.BridgeStats(
            bridge=bid,
            applied=h.applied,
            a=leg_stats(br.a, now),
            b=leg_stats(br.b, now),
            playing=br.a.playing,
            recording_error=None if err is None else _short(err),
        )

    # -- requests ------------------------------------------------------------------------

    async def handle(self, body: bytes) -> None:
        """Carry out one frame's request; every failure becomes a ``Failed`` event."""
        try:
            msg = c.parse_request(body)
        except c.ControlError as exc:
            req, bid = c.request_ids(body)
            log.warning("event=control_message_invalid field=%s", exc.field)
            self.send(c.Failed(req, bid, "invalid", exc.field, str(exc)))
            return
        req = getattr(msg, "req", None)
        bid = getattr(msg, "bridge", None)
        try:
            await self._dispatch(msg)
        except _Fail as f:
            self.send(c.Failed(req, bid, f.kind, f.field, f.error))
        except Exception as exc:  # a bug: report it, keep serving the other calls
            log.exception("event=control_request_failed op=%s", type(msg).__name__)
            self.send(c.Failed(req, bid, "internal", None, _short(exc)))

    def _hosted(self, bid: int) -> _Hosted:
        h = self.bridges.get(bid)
        if h is None:
            raise _Fail("unknown_bridge", "bridge", f"no open bridge {bid} in this worker")
        h.applied += 1
        return h

    async def _dispatch(self, msg: c.Request) -> None:
        if isinstance(msg, c.OpenBridge):
            await self._open(msg)
        elif isinstance(msg, c.DefineTone):
            if msg.name not in self.tones and len(self.tones) >= c.MAX_TONES:
                raise _Fail("invalid", "name", f"at most {c.MAX_TONES} tones")
            self.tones[msg.name] = np.frombuffer(msg.samples, dtype="<i2").astype(np.int16)
        elif isinstance(msg, c.SetRemote):
            leg = self._leg(self._hosted(msg.bridge).bridge, msg.leg)
            codec = Codec(msg.codec.name, msg.codec.pt, msg.codec.dtmf_pt)
            try:
                leg.set_remote((msg.host, msg.port), codec)
            except MediaAddressError as exc:
                raise _Fail("media_address", "host", _short(exc)) from None
        elif isinstance(msg, c.Hold):
            self._leg(self._hosted(msg.bridge).bridge, msg.leg).hold(msg.on)
        elif isinstance(msg, c.Connect):
            self._hosted(msg.bridge).bridge.connect()
        elif isinstance(msg, c.PlayToA):
            h = self._hosted(msg.bridge)
            samples = None
            if msg.tone is not None:
                samples = self.tones.get(msg.tone)
                if samples is None:
                    raise _Fail("unknown_tone", "tone", f"no tone {msg.tone!r} defined")
            h.bridge.play_to_a(samples)
        elif isinstance(msg, c.StartRecording):
            self._start_recording(msg)
        elif isinstance(msg, c.StopRecording):
            self._hosted(msg.bridge).bridge.stop_recording()
        elif isinstance(msg, c.SetSrtp):
            self._set_srtp(msg)
        elif isinstance(msg, c.CloseBridge):
            h = self._hosted(msg.bridge)
            del self.bridges[msg.bridge]
            self._start_close(msg.req, msg.bridge, h)
        elif isinstance(msg, c.Query):
            h = self._hosted(msg.bridge)
            now = asyncio.get_running_loop().time()
            self.send(c.Stats(msg.req, (self._stats(msg.bridge, h, now),)))

    @staticmethod
    def _leg(bridge: Bridge, name: str) -> MediaLeg:
        return bridge.a if name == "A" else bridge.b

    async def _open(self, msg: c.OpenBridge) -> None:
        if msg.bridge in self.bridges:
            raise _Fail("invalid", "bridge", f"bridge {msg.bridge} is already open")
        try:
            bridge = await Bridge.open(msg.host, self.allocator)
        except PortsExhausted as exc:
            raise _Fail("ports_exhausted", None, _short(exc)) from None
        except (OSError, ValueError) as exc:  # a host we cannot bind on
            raise _Fail("invalid", "host", _short(exc)) from None
        self.bridges[msg.bridge] = _Hosted(bridge)
        self.send(c.Opened(msg.req, msg.bridge, bridge.a.local_port, bridge.b.local_port))

    def _start_recording(self, msg: c.StartRecording) -> None:
        h = self._hosted(msg.bridge)
        if h.bridge.recorder is not None and not h.bridge.recorder.closed:
            raise _Fail("recording", None, "the bridge is already recording")
        path = Path(msg.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            recorder = Recorder(path, now=asyncio.get_running_loop().time())
        except OSError as exc:
            raise _Fail("recording", "path", _short(exc)) from None
        h.recorder = recorder
        h.bridge.start_recording(recorder)
        self.send(c.Done(msg.req, msg.bridge))

    def _set_srtp(self, msg: c.SetSrtp) -> None:
        leg = self._leg(self._hosted(msg.bridge).bridge, msg.leg)
        # ``MediaLeg.set_srtp`` and ``srtp.SrtpKey`` are being added by another change;
        # until then a worker answers that it has no SRTP.
        setter = getattr(leg, "set_srtp", None)
        key_type = getattr(srtp, "SrtpKey", None)
        if setter is None or key_type is None:
            raise _Fail("srtp", None, "this relay does not do SRTP yet")

        def key(p: c.SrtpParams | None) -> object:
            return None if p is None else key_type(suite=p.suite, key_salt=p.key_salt)

        try:
            setter(key(msg.inbound), key(msg.outbound))
        except (srtp.SrtpSetupError, ValueError) as exc:
            # libsrtp's message names the suite or the length, never the key itself
            raise _Fail("srtp", None, _short(exc)) from None
        if msg.req is not None:
            self.send(c.Done(msg.req, msg.bridge))

    def _start_close(self, req: int | None, bid: int, h: _Hosted) -> None:
        h.closing = True  # (a stats pass under way skips it: Closed carries its last)
        task = asyncio.get_running_loop().create_task(self._close(req, bid, h))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, req: int | None, bid: int, h: _Hosted) -> None:
        bridge = h.bridge
        try:
            await bridge.close()
        except Exception:
            log.exception("event=bridge_close_failed bridge=%d", bid)
        now = asyncio.get_running_loop().time()
        rec = h.recorder
        result = None
        if rec is not None:
            error = rec.error or bridge.recording_error
            result = c.RecordingResult(
                path=str(rec.path.absolute()),
                frames=rec.frames,
                duration=rec.duration,
                partial=rec.partial,
                removed=rec.removed,
                oversize_packets=rec.oversize_packets,
                overflow_packets=rec.overflow_packets,
                excess_samples=rec.excess_samples,
                error=None if error is None else _short(error),
            )
        self.send(c.Closed(req, self._stats(bid, h, now), result))


class _Fail(Exception):
    def __init__(self, kind: str, field: str | None, error: str) -> None:
        super().__init__(error)
        self.kind = kind
        self.field = field
        self.error = error


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sipdialer.rtp.worker")
    parser.add_argument("--fd", type=int, required=True, help="the control socket's fd")
    parser.add_argument("--ports", type=_port_range, required=True, help="LOW-HIGH")
    parser.add_argument("--stats-interval", type=float, default=1.0)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format=f"%(asctime)s %(levelname)s media_worker={os.getpid()} %(message)s",
    )
    sock = socket.socket(fileno=args.fd)
    low, high = args.ports
    worker = Worker(low, high, stats_interval=args.stats_interval)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(worker.run(sock))
    else:
        uvloop.run(worker.run(sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
