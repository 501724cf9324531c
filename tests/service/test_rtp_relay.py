"""The RTP relay on real loopback sockets, under asyncio's loop and uvloop. No SIP.

Each test plays both phones itself: plain UDP endpoints that send RTP to the bridge's
legs and collect what the relay forwards.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sipdialer.rtp import g711, packet
from sipdialer.rtp.latch import LEARN_RUN
from sipdialer.rtp.packet import RtpHeader
from sipdialer.rtp.ports import PortAllocator, PortsExhausted
from sipdialer.rtp.recorder import Recorder
from sipdialer.rtp.relay import Bridge, Codec
from tests.fixtures import rtp_phones
from tests.fixtures.rtp_phones import (
    HOST,
    PCMA,
    PCMU,
    Phone,
    Scenario,
    allocator,
    phone,
    tone,
    with_bridge,
)

run = rtp_phones.run  # asyncio's loop and uvloop, requested by name below


# -- relaying ----------------------------------------------------------------------------


def test_relay_both_ways_same_codec(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        payload = g711.encode_ulaw(tone(440, 160))
        pa.send(bridge.a.local_port, payload)
        hdr, got = await pb.recv()
        assert got == payload
        assert hdr.payload_type == 0 and hdr.ssrc == bridge.b.ssrc != pa.ssrc
        pb.send(bridge.b.local_port, payload[::-1])
        hdr, got = await pa.recv()
        assert got == payload[::-1]
        assert hdr.payload_type == 0 and hdr.ssrc == bridge.a.ssrc
        assert bridge.a.packets_in == 1 and bridge.b.packets_out == 1
        assert bridge.b.packets_in == 1 and bridge.a.packets_out == 1
        assert bridge.a.bytes_in == 172
        assert bridge.a.remote == pa.addr and bridge.b.remote == pb.addr
        loop = asyncio.get_running_loop()
        assert loop.time() - bridge.last_activity() < 1.0

    run(with_bridge(body))


def test_nothing_relayed_before_connect(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        pa.send(bridge.a.local_port, b"\xff" * 160)
        await pb.nothing()
        assert bridge.a.packets_in == 1
        bridge.connect()
        pa.send(bridge.a.local_port, b"\xff" * 160)
        await pb.recv()

    run(with_bridge(body, connect=False))


def test_payload_type_rewritten_without_transcoding(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        payload = bytes(range(160))
        pa.send(bridge.a.local_port, payload, pt=0)
        hdr, got = await pb.recv()
        assert hdr.payload_type == 96 and got == payload
        pb.send(bridge.b.local_port, payload, pt=96)
        hdr, got = await pa.recv()
        assert hdr.payload_type == 0 and got == payload

    run(with_bridge(body, codec_b=Codec("PCMU", 96)))


def test_transcoding_pcmu_pcma_both_ways(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        sent = tone(440, 1600)
        for i in range(10):
            pa.send(bridge.a.local_port, g711.encode_ulaw(sent[i * 160 : (i + 1) * 160]))
        got = []
        for _ in range(10):
            hdr, payload = await pb.recv()
            assert hdr.payload_type == 8 and len(payload) == 160
            got.append(payload)
        decoded = g711.decode_alaw(b"".join(got)).astype(float)
        err = decoded - sent
        snr = 10 * np.log10(np.sum(sent.astype(float) ** 2) / np.sum(err**2))
        assert snr > 25, snr
        # and back: A-law from B arrives at A as µ-law
        back = tone(1000, 160)
        pb.send(bridge.b.local_port, g711.encode_alaw(back), pt=8)
        hdr, payload = await pa.recv()
        assert hdr.payload_type == 0
        assert np.max(np.abs(g711.decode_ulaw(payload).astype(int) - back)) < 300

    run(with_bridge(body, codec_a=PCMU, codec_b=PCMA))


def test_static_pt_of_other_g711_is_transcoded(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        # A negotiated PCMU but sends PCMA (PT 8): it still reaches B as PCMU.
        x = tone(600, 160)
        pa.send(bridge.a.local_port, g711.encode_alaw(x), pt=8)
        hdr, payload = await pb.recv()
        assert hdr.payload_type == 0
        assert np.max(np.abs(g711.decode_ulaw(payload).astype(int) - x)) < 300
        pa.send(bridge.a.local_port, b"\x00" * 2, pt=13)  # comfort noise: dropped
        await pb.nothing()

    run(with_bridge(body))


def test_dtmf_payload_type_remapped(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        event = bytes([5, 0x0A, 0x00, 0xA0])  # digit 5, volume 10, duration 160
        pa.send(bridge.a.local_port, event, pt=101, marker=True, step=0)
        hdr, got = await pb.recv()
        assert hdr.payload_type == 96 and hdr.marker and got == event
        pb.send(bridge.b.local_port, event, pt=96)
        hdr, got = await pa.recv()
        assert hdr.payload_type == 101 and got == event

    run(with_bridge(body, codec_b=Codec("PCMU", 0, 96)))


def test_dtmf_dropped_when_other_leg_has_none(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        pa.send(bridge.a.local_port, bytes([1, 0x0A, 0, 160]), pt=101)
        await pb.nothing()
        pa.send(bridge.a.local_port, b"\xff" * 160)
        hdr, _ = await pb.recv()
        assert hdr.payload_type == 0

    run(with_bridge(body, codec_b=Codec("PCMU", 0)))


def test_csrc_extension_and_padding_are_stripped(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        payload = bytes(range(100, 260 - 100)) + bytes(100)
        hdr = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 0, 1, 160, 1234)
        csrcs = struct.pack("!II", 1, 2)
        ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\x20\x00\x00"
        pad = b"\x00\x00\x03"
        pa.send_raw(bridge.a.local_port, hdr + csrcs + ext + payload + pad)
        h, got = await pb.recv()
        assert got == payload and h.header_length == 12 and not h.padding
        assert h.csrc_count == 0 and not h.extension

    run(with_bridge(body))


def test_malformed_packets_are_dropped(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        port = bridge.a.local_port
        pa.send_raw(port, b"\x80\x00\x00")  # short
        pa.send_raw(port, bytes([0x40]) + bytes(11) + b"\xff" * 160)  # version 1
        pa.send_raw(port, bytes([0x8F]) + bytes(11))  # 15 CSRCs announced, none there
        pa.send_raw(port, bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x09")  # extension overrun
        pa.send_raw(port, bytes([0xA0]) + bytes(11) + b"\xff\xff\x20")  # padding overrun
        pa.send_raw(port, b"")
        await pb.nothing()
        assert bridge.a.packets_dropped >= 5
        pa.send(port, b"\xff" * 160)
        await pb.recv()

    run(with_bridge(body))


# -- latching ----------------------------------------------------------------------------


async def send_run(p: Phone, port: int, n: int, payload: bytes, gap: float = 0.02) -> None:
    """``n`` in-sequence packets of one SSRC, ``gap`` seconds apart (a phone talking)."""
    for i in range(n):
        if i:
            await asyncio.sleep(gap)
        p.send(port, payload)


def test_latches_to_sdp_address_or_a_learnt_run_and_ignores_others(
    run: Callable[[Scenario], None],
) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        natted = await phone()  # A's packets really come from here, not from SDP's address
        other = await phone()
        port = bridge.a.local_port
        try:
            # before any packet from A, B's audio goes to A's SDP address
            pb.send(bridge.b.local_port, b"\x01" * 160)
            await pa.recv()
            # one packet from elsewhere latches nothing: dropped and counted as foreign
            natted.send(port, b"\x02" * 160)
            await pb.nothing()
            assert bridge.a.source is None
            assert bridge.a.packets_foreign == bridge.a.packets_dropped == 1
            # NAT: a run of in-sequence packets (one SSRC, negotiated PT) latches; the
            # packet that completes it is the first relayed
            await send_run(natted, port, LEARN_RUN - 1, b"\x03" * 160)
            _, got = await pb.recv()
            assert got == b"\x03" * 160
            await pb.nothing(0.05)
            assert bridge.a.remote == bridge.a.source == natted.addr
            assert bridge.a.packets_foreign == LEARN_RUN - 1
            pb.send(bridge.b.local_port, b"\x04" * 160)
            _, got = await natted.recv()
            assert got == b"\x04" * 160
            await pa.nothing(0.05)
            # once latched, a third source is ignored however long its run
            await send_run(other, port, LEARN_RUN + 2, b"\x05" * 160, gap=0.02)
            await pb.nothing()
            assert bridge.a.packets_foreign == 2 * LEARN_RUN + 1
            # the SDP address itself wins over a learnt source, at its first packet
            pa.send(port, b"\x06" * 160)
            _, got = await pb.recv()
            assert got == b"\x06" * 160
            assert bridge.a.remote == bridge.a.source == pa.addr
            # ... and for good: the learnt source cannot come back
            await send_run(natted, port, LEARN_RUN + 2, b"\x07" * 160)
            await pb.nothing()
            # same SDP address again (re-INVITE for hold, say): latch kept
            bridge.a.set_remote(pa.addr, PCMU)
            assert bridge.a.source == pa.addr
            # new SDP address: send there at once; the address the SDP left is barred
            bridge.a.set_remote(other.addr, PCMU)
            assert bridge.a.source is None
            pb.send(bridge.b.local_port, b"\x08" * 160)
            _, got = await other.recv()
            assert got == b"\x08" * 160
            await send_run(pa, port, LEARN_RUN + 2, b"\x09" * 160)  # trailing from the old
            await pb.nothing()
            other.send(port, b"\x0a" * 160)
            _, got = await pb.recv()
            assert got == b"\x0a" * 160
            assert bridge.a.source == other.addr
        finally:
            natted.close()
            other.close()

    run(with_bridge(body))


# -- stream continuity -------------------------------------------------------------------


def test_seq_ts_ssrc_continuity_across_source_change(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        port = bridge.b.local_port
        out: list[RtpHeader] = []
        for _ in range(5):
            pb.send(port, b"\xff" * 160)
            out.append((await pa.recv())[0])
            await asyncio.sleep(0.02)
        # the callee side switches source (new SSRC, unrelated seq/ts), e.g. after a transfer
        pb.ssrc ^= 0x5A5A5A5A
        pb.seq = (pb.seq + 30000) & 0xFFFF
        pb.ts = (pb.ts + 123_456_789) & 0xFFFFFFFF
        for _ in range(5):
            pb.send(port, b"\xff" * 160)
            out.append((await pa.recv())[0])
            await asyncio.sleep(0.02)
        assert {h.ssrc for h in out} == {bridge.a.ssrc}
        seqs = [h.sequence for h in out]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        steps = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(out)]
        assert steps[:4] == [160] * 4 and steps[5:] == [160] * 4
        assert 160 <= steps[4] <= 8000  # wall-clock time across the switch, not a jump
        assert [h.marker for h in out] == [True] + [False] * 4 + [True] + [False] * 4

    run(with_bridge(body))


def test_ringback_then_relayed_media_is_one_stream(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        samples = tone(425, 800, amp=6000)  # 5 frames, looped
        loop = asyncio.get_running_loop()
        bridge.play_to_a(samples)
        assert bridge.a.playing
        rb: list[tuple[RtpHeader, bytes, float]] = []
        for _ in range(8):
            hdr, payload = await pa.recv()
            rb.append((hdr, payload, loop.time()))
        assert all(h.payload_type == 8 and h.ssrc == bridge.a.ssrc for h, _, _ in rb)
        # A's codec is PCMA: the payloads are the samples A-law encoded, looped
        coded = g711.encode_alaw(samples)
        frames = [coded[i : i + 160] for i in range(0, 800, 160)]
        assert [p for _, p, _ in rb] == (frames + frames)[:8]
        seqs = [h.sequence for h, _, _ in rb]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        assert all(
            (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160
            for (a, _, _), (b, _, _) in itertools.pairwise(rb)
        )
        span = rb[-1][2] - rb[0][2]
        assert 0.08 <= span <= 0.8, span  # paced at 20 ms (7 intervals), not a burst
        # media from B replaces ringback: same SSRC, seq + 1, marker, no more ringback
        pb.send(bridge.b.local_port, g711.encode_ulaw(tone(1000, 160)))
        while True:
            hdr, payload = await pa.recv()
            if hdr.payload_type == 8 and not hdr.marker and payload in frames:
                rb.append((hdr, payload, loop.time()))  # a tick that raced the relayed packet
                continue
            break
        assert not bridge.a.playing
        assert hdr.ssrc == bridge.a.ssrc and hdr.marker
        assert (hdr.sequence - rb[-1][0].sequence) & 0xFFFF == 1
        assert 160 <= (hdr.timestamp - rb[-1][0].timestamp) & 0xFFFFFFFF <= 8000
        await pa.nothing(0.1)

    run(with_bridge(body, codec_a=PCMA))


def test_play_none_stops_ringback(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        bridge.play_to_a(tone(425, 160))
        await pa.recv()
        bridge.play_to_a(None)
        await asyncio.sleep(0.03)
        pa.drain()
        await pa.nothing(0.1)

    run(with_bridge(body, connect=False))


def test_hold_stops_sending_to_that_leg(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        pb.send(bridge.b.local_port, b"\xff" * 160)
        first, _ = await pa.recv()
        bridge.a.hold(True)
        assert bridge.a.held
        for _ in range(3):
            pb.send(bridge.b.local_port, b"\xff" * 160)
        pa.send(bridge.a.local_port, b"\xfe" * 160)  # A → B still flows
        await pb.recv()
        await pa.nothing()
        bridge.a.hold(False)
        pb.send(bridge.b.local_port, b"\xff" * 160)
        hdr, _ = await pa.recv()
        assert (hdr.sequence - first.sequence) & 0xFFFF == 1  # no hole for what was held back
        assert hdr.marker and hdr.ssrc == first.ssrc
        assert (hdr.timestamp - first.timestamp) & 0xFFFFFFFF >= 160

    run(with_bridge(body))


def test_set_remote_changes_codec_mid_call(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        pa.send(bridge.a.local_port, b"\xff" * 160)
        hdr, _ = await pb.recv()
        assert hdr.payload_type == 0
        bridge.b.set_remote(pb.addr, PCMA)  # re-INVITE: B now PCMA
        pa.send(bridge.a.local_port, b"\xff" * 160)
        hdr, got = await pb.recv()
        assert hdr.payload_type == 8 and got == b"\xd5" * 160

    run(with_bridge(body))


# -- recording, lifecycle ----------------------------------------------------------------


def test_recording_through_the_bridge(run: Callable[[Scenario], None], tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    times: dict[str, float] = {}

    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        loop = asyncio.get_running_loop()
        times["start"] = loop.time()
        bridge.start_recording(Recorder(path, now=times["start"]))
        with pytest.raises(RuntimeError):
            bridge.start_recording(Recorder(tmp_path / "other.wav", now=loop.time()))
        a_tone, b_tone = tone(440, 8000 * 2), tone(1000, 8000 * 2)
        for i in range(60):  # 1.2 s
            pa.send(bridge.a.local_port, g711.encode_ulaw(a_tone[i * 160 : (i + 1) * 160]))
            pb.send(bridge.b.local_port, g711.encode_alaw(b_tone[i * 160 : (i + 1) * 160]), pt=8)
            await asyncio.sleep(0.02)
        pa.send(bridge.a.local_port, bytes([1, 10, 0, 160]), pt=101)  # DTMF: not recorded
        await asyncio.sleep(0.05)
        times["end"] = loop.time()

    run(with_bridge(body, codec_b=PCMA))
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == 8000 and data.shape[1] == 2
    elapsed = times["end"] - times["start"]  # (close comes a moment later)
    assert elapsed * 8000 - 160 <= len(data) <= (elapsed + 0.5) * 8000
    spec_l = np.abs(np.fft.rfft(data[1000:9000, 0]))
    spec_r = np.abs(np.fft.rfft(data[1000:9000, 1]))
    assert abs(np.argmax(spec_l) - 440) <= 2 and abs(np.argmax(spec_r) - 1000) <= 2


def test_close_releases_ports_and_is_idempotent(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        alloc = allocator()
        bridge = await Bridge.open(HOST, alloc)
        assert bridge.a.local_port % 2 == 0 and bridge.b.local_port % 2 == 0
        assert alloc.in_use == 2
        bridge.play_to_a(tone(425, 160))
        await bridge.close()
        await bridge.close()
        assert alloc.in_use == 0 and bridge.is_closed
        bridge.connect()  # no effect, no error
        # the ports can be bound again right away
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, bridge.a.local_port))
        s.close()

    run(scenario)


def test_stop_recording_then_record_again(run: Callable[[Scenario], None], tmp_path: Path) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        loop = asyncio.get_running_loop()
        first = Recorder(tmp_path / "1.wav", now=loop.time())
        bridge.start_recording(first)
        pa.send(bridge.a.local_port, b"\x80" * 160)
        await pb.recv()
        bridge.stop_recording()
        assert first.closed and bridge.recording_error is None
        second = Recorder(tmp_path / "2.wav", now=loop.time())
        bridge.start_recording(second)
        pa.send(bridge.a.local_port, b"\x80" * 160)
        await pb.recv()

    run(with_bridge(body))
    assert soundfile.info(tmp_path / "1.wav").frames >= 160
    assert soundfile.info(tmp_path / "2.wav").frames >= 160


def test_remote_must_be_an_ip_literal(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        with pytest.raises(ValueError):
            bridge.a.set_remote(("phone.example", 4000), PCMU)
        with pytest.raises(ValueError):
            bridge.a.set_remote(("::1", 4000), PCMU)  # an IPv4 leg cannot reach it
        bridge.a.set_remote(("127.0.0.2", 4000), PCMU)
        assert bridge.a.remote == ("127.0.0.2", 4000)

    run(with_bridge(body))


def test_codec_validation() -> None:
    with pytest.raises(ValueError):
        Codec("G729", 18)
    with pytest.raises(ValueError):
        Codec("PCMU", 128)
    with pytest.raises(ValueError):
        Codec("PCMU", 0, 0)


# -- packet and ports --------------------------------------------------------------------


def test_packet_parse_build_rewrite() -> None:
    pkt = bytearray(packet.build(96, 65535, 2**32 - 1, 0xDEADBEEF, b"abc", marker=True))
    h = packet.parse(pkt)
    assert h is not None
    assert (h.version, h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc) == (
        2,
        True,
        96,
        65535,
        2**32 - 1,
        0xDEADBEEF,
    )
    assert h.header_length == 12 and h.payload_end == 15
    packet.rewrite(pkt, payload_type=8, sequence=65536 + 5, timestamp=7, ssrc=9, marker=False)
    h = packet.parse(pkt)
    assert h is not None and (h.payload_type, h.sequence, h.timestamp, h.ssrc, h.marker) == (
        8,
        5,
        7,
        9,
        False,
    )
    assert bytes(pkt[12:]) == b"abc"
    assert packet.parse(b"\x80\x00") is None
    assert packet.parse(bytes([0x40]) + bytes(11)) is None
    assert packet.payload_bounds(bytes([0x81]) + bytes(15)) == (16, 16)


def test_port_allocator_even_skip_busy_exhaust_release() -> None:
    base = random.randrange(20000, 29000, 2)
    alloc = PortAllocator(base + 1, base + 6)  # even ports: base+2, base+4, base+6
    assert alloc.capacity == 3
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind((HOST, base + 2))
    try:
        s1 = alloc.allocate(HOST)
        s2 = alloc.allocate(HOST)
        ports = {s1.getsockname()[1], s2.getsockname()[1]}
        assert ports == {base + 4, base + 6}
        with pytest.raises(PortsExhausted):
            alloc.allocate(HOST)
    finally:
        busy.close()
    s3 = alloc.allocate(HOST)  # the busy one is free now
    assert s3.getsockname()[1] == base + 2
    for s in (s1, s2, s3):
        port = s.getsockname()[1]
        s.close()
        alloc.release(port)
    alloc.release(base + 2)  # double release: ignored
    assert alloc.available == 3 and alloc.in_use == 0
    with pytest.raises(ValueError):
        PortAllocator(101, 101)
