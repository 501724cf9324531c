"""The relay's C fast path (``sipdialer/rtp/_fastrelay.c``) against its Python rules.

Every datagram the C path takes must leave exactly as :meth:`MediaLeg.datagram_received`
would have sent it. Each scenario runs on two bridges given the same stream identities
(SSRC, first sequence number and timestamp) and the same clock: on one, the phone sends
through the sockets (the loop's reader: C for the usual packets, Python for the rest); on
the other, each datagram is handed to ``datagram_received`` (Python only). What the far
phone receives, the legs' counters and what the recorder was given must be the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sipdialer.rtp import packet, relay
from sipdialer.rtp._fastrelay import SLOT
from sipdialer.rtp.recorder import Recorder
from sipdialer.rtp.relay import Bridge, Codec, MediaLeg
from tests.fixtures.rtp_phones import PCMA, PCMU, Phone, close_all, setup


class Clock:
    """The legs' clock (``MediaLeg._time``), set by the test before each datagram."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def same_identity(src: Bridge, dst: Bridge, clock: Clock) -> None:
    for a, b in ((src.a, dst.a), (src.b, dst.b)):
        b._ssrc = a._ssrc
        b._init_seq = a._init_seq
        b._init_ts = a._init_ts
        a._time = clock
        b._time = clock


def scenario(ssrc: int) -> list[bytes]:
    """What phone A sends: the usual packets, and between them every kind the C path
    leaves to Python (a new SSRC, DTMF, the other static G.711 PT, a CSRC list, a marker)."""
    out: list[bytes] = []
    seq, ts = 1000, 50_000

    def add(pt: int, payload: bytes, *, s: int = ssrc, marker: bool = False, csrc: int = 0) -> None:
        nonlocal seq, ts
        data = packet.build(pt, seq, ts, s, payload, marker=marker)
        if csrc:  # CC=1 and one CSRC after the fixed header
            data = bytes([data[0] | 1]) + data[1:12] + (7).to_bytes(4, "big") + data[12:]
        out.append(data)
        seq += 1
        ts += 160

    voice = bytes(range(160))
    for _ in range(10):
        add(0, voice)
    add(0, voice, marker=True)
    for _ in range(5):
        add(0, voice, s=ssrc ^ 0x5A5A)  # a new source: Python re-bases, then C again
    add(101, bytes([5, 0x0A, 0, 160]))  # telephone-event
    add(8, voice)  # PCMA's static PT on a PCMU leg
    add(0, voice, csrc=1)
    for _ in range(6):
        add(0, voice)
    return out


async def receive_all(p: Phone, n: int) -> list[bytes]:
    got = []
    for _ in range(n):
        data, _ = await asyncio.wait_for(p.queue.get(), 2.0)
        got.append(data)
    return got


@pytest.mark.parametrize(
    ("codec_a", "codec_b"), [(PCMU, PCMU), (PCMU, PCMA), (PCMU, Codec("PCMU", 96, 101))]
)
async def test_the_c_path_sends_what_the_python_rules_send(
    codec_a: Codec, codec_b: Codec, tmp_path: Path
) -> None:
    clock = Clock()
    fast, fa, fb = await setup(codec_a, codec_b)
    slow, sa, sb = await setup(codec_a, codec_b)
    same_identity(fast, slow, clock)
    recorders = [Recorder(tmp_path / f"{i}.wav", now=clock.t) for i in range(2)]
    fast.start_recording(recorders[0])
    slow.start_recording(recorders[1])
    try:
        sent = scenario(ssrc=0x1234_5678)
        got_fast = []
        for data in sent:  # one at a time, each at its own clock time
            clock.t += 0.02
            fa.send_raw(fast.a.local_port, data)
            got_fast.append((await asyncio.wait_for(fb.queue.get(), 2.0))[0])
            slow.a.datagram_received(data, sa.addr)
        got_slow = await receive_all(sb, len(sent))
        assert len(got_fast) == len(sent)
        assert got_fast == got_slow
        for attr in ("packets_in", "bytes_in", "packets_dropped", "last_rx"):
            assert getattr(fast.a, attr) == getattr(slow.a, attr), attr
        assert fast.b.packets_out == slow.b.packets_out == len(sent)
        # the recorder was given the same payloads, codecs and arrival times
        qa, qb = recorders[0].a.payloads, recorders[1].a.payloads
        assert list(qa) == list(qb) and qa.codecs == qb.codecs and qa.arrivals == qb.arrivals
        assert len(qa) == len(sent) - 1  # all but the telephone-event
        # and the C path took the usual ones: all but the first (latching), the first of
        # the new source, the DTMF, the static PT and the CSRC packet
        assert fast.a.fast_packets == len(sent) - 5
        assert slow.a.fast_packets == 0
    finally:
        await close_all(fast, fa, fb)
        await close_all(slow, sa, sb)


async def test_datagrams_over_the_slot_are_dropped_and_relaying_goes_on() -> None:
    bridge, pa, pb = await setup()
    try:
        voice = bytes(160)
        pa.send(bridge.a.local_port, voice)
        await pb.recv()
        pa.send(bridge.a.local_port, bytes(SLOT + 100))  # truncated by the kernel
        pa.send(bridge.a.local_port, voice)
        _, payload = await pb.recv()
        assert payload == voice
        assert bridge.a.packets_dropped == 1 and bridge.a.packets_in == 2
        await pb.nothing()
    finally:
        await close_all(bridge, pa, pb)


async def test_a_closed_leg_stops_reading_within_its_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python code run for one datagram (here: the first, which latches) may close the
    bridge; the rest of the batch must not be touched (the socket is gone)."""
    bridge, pa, pb = await setup()
    closed: list[bool] = []
    original: Callable[[MediaLeg, bytes, Any], None] = MediaLeg.datagram_received

    def closing(leg: MediaLeg, data: bytes, addr: Any) -> None:
        original(leg, data, addr)
        if not closed:
            closed.append(True)
            bridge.a._close()
            bridge.b._close()

    monkeypatch.setattr(MediaLeg, "datagram_received", closing)
    try:
        for _ in range(8):  # queued together: one recvmmsg batch
            pa.send(bridge.a.local_port, bytes(160))
        await asyncio.sleep(0.2)
        assert closed == [True]
        assert bridge.a._fd == -1 and bridge.a.fast_packets == 0
    finally:
        await close_all(bridge, pa, pb)


async def test_one_reactor_per_loop_watches_every_leg_and_goes_with_the_last() -> None:
    """All legs of a loop are behind one epoll descriptor, one reader of the loop; it is
    made with the first leg and closed with the last (no descriptor left behind)."""
    loop = asyncio.get_running_loop()
    assert loop not in relay._reactors
    first = await setup()
    reactor = relay._reactors[loop]
    second = await setup()
    assert relay._reactors[loop] is reactor and reactor.legs == 4
    bridge, pa, pb = second
    pa.send(bridge.a.local_port, bytes(160))
    pa.send(bridge.a.local_port, bytes(160))
    await pb.recv()
    await pb.recv()
    assert bridge.a.fast_packets == 1  # the second: the first latched, in Python
    await close_all(*first)
    assert reactor.legs == 2
    await close_all(*second)
    assert reactor.legs == 0 and loop not in relay._reactors and reactor.fileno() == -1
