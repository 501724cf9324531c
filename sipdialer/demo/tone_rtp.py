"""A simulated phone's RTP socket: sends a sine tone, keeps what it hears.

Owns one UDP socket. :meth:`ToneRtp.start` sends a continuous sine (phase-continuous
across packets) as 20 ms G.711 packets — 160 samples, 50 packets per second, paced on an
absolute ``loop.call_at`` schedule so the rate does not drift — to the address the peer's
SDP gave, from the socket it receives on (symmetric RTP). Sequence and timestamp start
at random values and go up by 1 and 160; the first packet has the marker bit.

Received RTP packets are kept (arrival time, payload type, payload) for the last
``keep_seconds``; :meth:`ToneRtp.heard` decodes the G.711 ones into samples, so a test
or the demo can measure what reached the phone through the relay.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from sipdialer.rtp import packet
from sipdialer.rtp.g711 import decode, encode

__all__ = ["FRAME_SAMPLES", "PTIME", "RATE", "ToneRtp", "sine_frame"]

RATE = 8000
FRAME_SAMPLES = 160
PTIME = FRAME_SAMPLES / RATE
_CODEC_OF_PT = {0: "PCMU", 8: "PCMA"}
_MAX_CATCH_UP = 5  # packets sent in one go after the loop stalled; older ones are skipped


def sine_frame(tone_hz: float, level: float, index: int) -> npt.NDArray[np.int16]:
    """The ``index``-th 20 ms frame of a sine of ``tone_hz`` at ``level`` of full scale."""
    n = np.arange(index * FRAME_SAMPLES, (index + 1) * FRAME_SAMPLES, dtype=np.float64)
    wave = level * 32767.0 * np.sin(2.0 * math.pi * tone_hz * n / RATE)
    return np.rint(wave).astype(np.int16)


class ToneRtp(asyncio.DatagramProtocol):
    """One phone's RTP endpoint (see the module docstring)."""

    def __init__(self, tone_hz: float, *, level: float = 0.3, keep_seconds: float = 600.0):
        self.tone_hz = tone_hz
        self.level = level
        self.remote: tuple[str, int] | None = None
        self.codec = "PCMU"
        self.payload_type = 0
        self.sent = 0
        """Packets sent."""
        self.received = 0
        """RTP packets received (malformed datagrams are not counted)."""
        self.received_log: deque[tuple[float, int, bytes]] = deque(maxlen=int(keep_seconds / PTIME))
        """(arrival ``loop.time()``, payload type, payload) of the latest packets."""
        self.first_sent_at: float | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._t0 = 0.0
        self._frame = 0
        self._seq0 = secrets.randbelow(1 << 16)
        self._ts0 = secrets.randbelow(1 << 32)
        self._ssrc = secrets.randbelow(1 << 32)

    # ---- socket -------------------------------------------------------------------------
    async def open(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind the socket; returns its port."""
        self._loop = asyncio.get_running_loop()
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: self, local_addr=(host, port)
        )
        self._transport = transport
        return self.port

    @property
    def port(self) -> int:
        assert self._transport is not None, "open() first"
        return int(self._transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        self.stop()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        header = packet.parse(data)
        if header is None or self._loop is None:
            return
        self.received += 1
        payload = bytes(data[header.header_length : header.payload_end])
        self.received_log.append((self._loop.time(), header.payload_type, payload))

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like
        pass

    # ---- sending ------------------------------------------------------------------------
    @property
    def sending(self) -> bool:
        return self._timer is not None

    def start(self, remote: tuple[str, int], codec: str = "PCMU", payload_type: int = 0) -> None:
        """Send the tone to ``remote`` from now on (again: continue the same stream)."""
        assert self._loop is not None, "open() first"
        if codec not in ("PCMU", "PCMA"):
            raise ValueError(f"not a G.711 codec: {codec!r}")
        self.remote = remote
        self.codec = codec
        self.payload_type = payload_type
        if self._timer is not None:
            return
        self._t0 = self._loop.time() - self._frame * PTIME
        if self.first_sent_at is None:
            self.first_sent_at = self._loop.time()
        self._tick()

    def stop(self) -> None:
        """Stop sending (the socket still receives)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        assert self._loop is not None
        due = int((self._loop.time() - self._t0) / PTIME) + 1
        sent_now = 0
        while self._frame < due and sent_now < _MAX_CATCH_UP:
            self._send_frame(self._frame)
            self._frame += 1
            sent_now += 1
        self._frame = max(self._frame, due)
        self._timer = self._loop.call_at(self._t0 + self._frame * PTIME, self._tick)

    def _send_frame(self, index: int) -> None:
        if self._transport is None or self.remote is None:
            return
        payload = encode(sine_frame(self.tone_hz, self.level, index), self.codec)
        data = packet.build(
            self.payload_type,
            self._seq0 + index,
            self._ts0 + index * FRAME_SAMPLES,
            self._ssrc,
            payload,
            marker=self.sent == 0,
        )
        self._transport.sendto(data, self.remote)
        self.sent += 1

    # ---- what was heard -------------------------------------------------------------------
    def heard(
        self, *, since: float | None = None, until: float | None = None
    ) -> npt.NDArray[np.int16]:
        """The G.711 audio received between ``since`` and ``until`` (``loop.time()``
        values; None: unbounded), decoded and concatenated in arrival order."""
        frames = [
            decode(payload, _CODEC_OF_PT[pt])
            for at, pt, payload in list(self.received_log)
            if pt in _CODEC_OF_PT
            and (since is None or at >= since)
            and (until is None or at <= until)
        ]
        return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)
