"""SRTP in the RTP relay (issue 13, point 3), on real loopback sockets under uvloop and
asyncio's loop. No SIP.

The two phones (``tests/fixtures/rtp_phones.py``) are plain UDP endpoints that encrypt
and decrypt with pylibsrtp themselves (not through :mod:`sipdialer.rtp.srtp`), each with
its own key per direction: ``tx`` is the key a phone sends with (its leg's *inbound*
key), ``rx`` the key the relay encrypts to it with (its leg's *outbound* key). What a
phone receives is checked twice: the raw datagram is not the clear packet, and it
decrypts with ``rx``.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pylibsrtp
import pytest
import soundfile

from sipdialer.rtp import g711, packet
from sipdialer.rtp.latch import LEARN_RUN
from sipdialer.rtp.recorder import Recorder
from sipdialer.rtp.relay import Bridge
from sipdialer.rtp.srtp import SrtpKey, SrtpSetupError
from sipdialer.sip.sdp_crypto import SUITES
from tests.fixtures import rtp_phones
from tests.fixtures.rtp_phones import (
    PCMA,
    PCMU,
    Phone,
    Scenario,
    phone,
    session,
    tone,
    with_bridge,
)

SUITE = "AES_CM_128_HMAC_SHA1_80"

run = rtp_phones.run  # asyncio's loop and uvloop, requested by name below


def new_key(suite: str = SUITE) -> SrtpKey:
    return SrtpKey(suite, os.urandom(SUITES[suite].key_salt_length))


def encrypt(bridge: Bridge, side: str, p: Phone, suite: str = SUITE) -> None:
    """Both directions between ``p`` and the leg ``side`` SRTP, a fresh key each."""
    leg = bridge.a if side == "a" else bridge.b
    inbound, outbound = new_key(suite), new_key(suite)
    leg.set_srtp(inbound, outbound)
    p.keys(inbound, outbound)
    assert leg.srtp_active


# -- any mix ---------------------------------------------------------------------------


@pytest.mark.parametrize("srtp_side", ["a", "b"])
def test_srtp_to_plain_rtp_both_ways(run: Callable[[Scenario], None], srtp_side: str) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        encrypt(bridge, srtp_side, pa if srtp_side == "a" else pb)
        plain = bridge.b if srtp_side == "a" else bridge.a
        assert not plain.srtp_active
        one, two = g711.encode_ulaw(tone(440, 160)), g711.encode_ulaw(tone(1000, 160))
        sent = pa.send(bridge.a.local_port, one)
        if srtp_side == "a":
            assert one not in sent  # the phone really encrypts
        hdr, got = await pb.recv()  # decrypted by pb.recv() if B is the SRTP side
        assert got == one and hdr.ssrc == bridge.b.ssrc
        pb.send(bridge.b.local_port, two)
        hdr, got = await pa.recv()
        assert got == two and hdr.ssrc == bridge.a.ssrc
        for leg in (bridge.a, bridge.b):
            assert leg.srtp_forged == leg.srtp_replayed == leg.packets_dropped == 0
            assert leg.packets_in == leg.packets_out == 1

    run(with_bridge(body))


@pytest.mark.parametrize(
    ("suite_a", "suite_b"),
    [
        ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_80"),
        ("AES_CM_128_HMAC_SHA1_32", "AEAD_AES_256_GCM"),
        ("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80"),
    ],
)
def test_srtp_to_srtp_with_a_key_per_leg_and_direction(
    run: Callable[[Scenario], None], suite_a: str, suite_b: str
) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        encrypt(bridge, "a", pa, suite_a)
        encrypt(bridge, "b", pb, suite_b)
        keys = {pa.tx, pa.rx, pb.tx, pb.rx}
        assert len({k.key_salt for k in keys if k is not None}) == 4
        for i in range(5):
            one, two = bytes([i]) * 160, bytes([0x80 + i]) * 160
            pa.send(bridge.a.local_port, one)
            _, got = await pb.recv()
            assert got == one
            pb.send(bridge.b.local_port, two)
            _, got = await pa.recv()
            assert got == two
        # what B receives is under B's outbound key only: A's key does not open it
        pa.send(bridge.a.local_port, b"\x11" * 160)
        data = await pb.datagram()
        assert pa.rx is not None and pa.tx is not None
        for wrong in (pa.rx, pa.tx):
            with pytest.raises(pylibsrtp.Error):
                session(wrong, inbound=True).unprotect(data)
        assert bridge.a.packets_out == 5 and bridge.b.packets_out == 6

    run(with_bridge(body))


def test_pcmu_to_pcma_under_srtp(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        encrypt(bridge, "a", pa)
        encrypt(bridge, "b", pb)
        samples = tone(440, 160)
        ulaw, alaw = g711.encode_ulaw(samples), g711.encode_alaw(samples)
        pa.send(bridge.a.local_port, ulaw, pt=0)
        hdr, got = await pb.recv()
        assert hdr.payload_type == 8 and got == ulaw.translate(g711.ULAW_TO_ALAW)
        pb.send(bridge.b.local_port, alaw, pt=8)
        hdr, got = await pa.recv()
        assert hdr.payload_type == 0 and got == alaw.translate(g711.ALAW_TO_ULAW)
        # DTMF (RFC 4733) is relayed under SRTP too
        pa.send(bridge.a.local_port, bytes([1, 10, 0, 160]), pt=101)
        hdr, got = await pb.recv()
        assert hdr.payload_type == 101 and got == bytes([1, 10, 0, 160])

    run(with_bridge(body, codec_b=PCMA))


def test_recorder_gets_the_clear_audio(run: Callable[[Scenario], None], tmp_path: Path) -> None:
    path = tmp_path / "call.wav"

    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        encrypt(bridge, "a", pa)
        encrypt(bridge, "b", pb)
        bridge.start_recording(Recorder(path, now=asyncio.get_running_loop().time()))
        a_tone, b_tone = tone(440, 8000 * 2), tone(1000, 8000 * 2)
        for i in range(60):  # 1.2 s
            pa.send(bridge.a.local_port, g711.encode_ulaw(a_tone[i * 160 : (i + 1) * 160]))
            pb.send(bridge.b.local_port, g711.encode_alaw(b_tone[i * 160 : (i + 1) * 160]), pt=8)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)

    run(with_bridge(body, codec_b=PCMA))
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == 8000 and data.shape[1] == 2 and len(data) >= 9000
    spec_l = np.abs(np.fft.rfft(data[1000:9000, 0]))
    spec_r = np.abs(np.fft.rfft(data[1000:9000, 1]))
    assert abs(np.argmax(spec_l) - 440) <= 2 and abs(np.argmax(spec_r) - 1000) <= 2
    # the decoded samples themselves, not noise that happens to peak there
    assert 6000 < np.abs(data[1000:9000, 0]).max() < 9000
    assert 6000 < np.abs(data[1000:9000, 1]).max() < 9000


# -- what is refused --------------------------------------------------------------------


def test_forged_and_replayed_packets_are_dropped_counted_and_never_latch(
    run: Callable[[Scenario], None],
) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        encrypt(bridge, "a", pa)
        port = bridge.a.local_port
        genuine = pa.send(port, b"\x01" * 160)
        _, got = await pb.recv()
        assert got == b"\x01" * 160
        pa.send_raw(port, genuine)  # replayed
        flipped = bytearray(pa.packet(b"\x02" * 160))
        flipped[20] ^= 0x01
        pa.send_raw(port, bytes(flipped))  # tampered
        intruder = await phone()
        intruder.keys(new_key(), None)  # a wrong key
        intruder.send(port, b"\x03" * 160)
        pa.send_raw(port, packet.build(0, pa.seq, pa.ts, pa.ssrc, b"\x04" * 160))  # clear
        await pb.nothing()
        assert bridge.a.srtp_replayed == 1 and bridge.a.srtp_forged == 3
        assert bridge.a.packets_in == 1 and bridge.a.packets_dropped == 4
        assert bridge.a.packets_foreign == 0  # refused before the latch was asked
        # a source that is not the SDP address: a long in-sequence run of forged packets
        # (what would latch a NAT'd phone) takes nothing over; the genuine phone's does
        natted = await phone()
        natted.keys(new_key(), None)
        bridge.a.set_remote(("127.0.0.2", 9), PCMU)  # SDP moves: the latch reopens
        assert bridge.a.source is None
        for _ in range(LEARN_RUN + 3):
            natted.send(port, b"\x05" * 160)
            await asyncio.sleep(0.02)
        await pb.nothing()
        assert bridge.a.source is None and bridge.a.packets_foreign == 0
        assert bridge.a.srtp_forged == 3 + LEARN_RUN + 3
        natted.keys(pa.tx, None)  # now it has the key (the phone's NAT'd address, say)
        natted.seq, natted.ssrc = pa.seq, pa.ssrc
        for _ in range(LEARN_RUN):
            natted.send(port, b"\x06" * 160)
            await asyncio.sleep(0.02)
        _, got = await pb.recv()
        assert got == b"\x06" * 160 and bridge.a.source == natted.addr
        intruder.close()
        natted.close()

    run(with_bridge(body))


def test_srtcp_on_rtcp_mux_is_authenticated_and_dropped(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        sender_report = struct.pack("!BBHIIIIII", 0x80, 200, 6, pa.ssrc, 1, 2, 3, 4, 5)
        receiver_report = struct.pack("!BBHI", 0x80, 201, 1, pa.ssrc)
        # plain RTCP on a plain leg: dropped, not relayed (as always)
        pa.send_raw(bridge.a.local_port, sender_report)
        await pb.nothing(0.05)
        assert bridge.a.packets_dropped == 1
        encrypt(bridge, "a", pa)
        encrypt(bridge, "b", pb)
        assert pa._tx is not None
        # (forged first: libsrtp checks the SRTCP index before the tag, so a forgery that
        # carries an index already received counts as replayed)
        wrong = session(new_key(), inbound=False)
        pa.send_raw(bridge.a.local_port, wrong.protect_rtcp(sender_report))  # forged
        pa.send_raw(bridge.a.local_port, receiver_report)  # in clear where SRTCP is due
        pa.send_raw(bridge.a.local_port, pa._tx.protect_rtcp(sender_report))
        genuine = pa._tx.protect_rtcp(receiver_report)
        pa.send_raw(bridge.a.local_port, genuine)
        await pb.nothing()
        assert bridge.a.srtp_forged == 2 and bridge.a.packets_dropped == 5
        pa.send_raw(bridge.a.local_port, genuine)
        await pb.nothing(0.05)
        assert bridge.a.srtp_replayed == 1 and bridge.a.srtp_forged == 2
        # only the plain RTCP counted as received (as before SRTP); nothing went to B
        assert bridge.a.packets_in == 1 and bridge.b.packets_out == 0
        # RTP still flows
        pa.send(bridge.a.local_port, b"\x07" * 160)
        _, got = await pb.recv()
        assert got == b"\x07" * 160

    run(with_bridge(body))


def test_ringback_to_an_srtp_leg_is_encrypted(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        encrypt(bridge, "a", pa)
        samples = tone(425, 480)
        frames = g711.encode_ulaw(samples)
        bridge.play_to_a(samples)
        seqs = []
        for i in range(4):
            hdr, got = await pa.recv()  # checks it came encrypted, and decrypts it
            assert got == frames[(i % 3) * 160 : (i % 3 + 1) * 160]
            seqs.append(hdr.sequence)
        assert [(s - seqs[0]) & 0xFFFF for s in seqs] == [0, 1, 2, 3]
        # then relayed media from B replaces it in the same encrypted stream
        pb.send(bridge.b.local_port, b"\x09" * 160)
        while True:
            hdr, got = await pa.recv()
            if got == b"\x09" * 160:
                break
        assert hdr.marker and not bridge.a.playing

    run(with_bridge(body))


def test_a_sequence_number_is_never_encrypted_twice(run: Callable[[Scenario], None]) -> None:
    """A plain peer that sends one packet twice: relayed once to the SRTP leg, the copy
    dropped (encrypting one index twice would reuse keystream)."""

    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        encrypt(bridge, "a", pa)
        data = pb.send(bridge.b.local_port, b"\x0a" * 160)
        pb.send_raw(bridge.b.local_port, data)
        _, got = await pa.recv()
        assert got == b"\x0a" * 160
        await pa.nothing()
        assert bridge.a.packets_out == 1 and bridge.a.packets_dropped == 1

    run(with_bridge(body))


# -- re-INVITEs ------------------------------------------------------------------------


def test_rekey_mid_call_and_ssrc_change(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        leg, port = bridge.a, bridge.a.local_port
        encrypt(bridge, "a", pa)
        old_in, out = pa.tx, pa.rx
        assert old_in is not None and out is not None
        first = pa.send(port, b"\x01" * 160)
        await pb.recv()
        pa.send_raw(port, first)
        await pb.nothing(0.05)
        assert leg.srtp_replayed == 1
        # the same keys again (a re-INVITE that repeats them): the contexts go on, so the
        # replay window still knows the first packet
        leg.set_srtp(SrtpKey(old_in.suite, bytes(old_in.key_salt)), out)
        pa.send_raw(port, first)
        await pb.nothing(0.05)
        assert leg.srtp_replayed == 2
        pb.send(bridge.b.local_port, b"\x02" * 160)
        _, got = await pa.recv()  # our outbound context goes on too
        assert got == b"\x02" * 160
        # a new inbound key (answered, say, before the peer has our answer): packets
        # still under the old key pass (with the old replay window) until the first one
        # under the new key arrives; from then on only the new key works
        new_in = new_key("AES_CM_128_HMAC_SHA1_32")
        leg.set_srtp(new_in, out)
        pa.send(port, b"\x03" * 160)  # in flight under the old key
        _, got = await pb.recv()
        assert got == b"\x03" * 160
        pa.send_raw(port, first)
        await pb.nothing(0.05)
        assert leg.srtp_forged == 0 and leg.srtp_replayed == 3
        old_tx = pa._tx
        assert old_tx is not None
        pa.keys(new_in, out)
        pa.send(port, b"\x04" * 160)
        _, got = await pb.recv()
        assert got == b"\x04" * 160
        pa.send_raw(port, old_tx.protect(packet.build(0, pa.seq, pa.ts, pa.ssrc, b"\x05" * 160)))
        await pb.nothing(0.05)
        assert leg.srtp_forged == 1 and leg.srtp_replayed == 3
        # the peer changes SSRC (and sequence): a new stream of the same key, relayed as
        # the same outgoing stream to B with the marker set
        ssrc_before = bridge.b.ssrc
        pa.ssrc, pa.seq = (pa.ssrc + 1) & 0xFFFFFFFF, random.randrange(65536)
        pa.send(port, b"\x0b" * 160)
        hdr, got = await pb.recv()
        assert got == b"\x0b" * 160 and hdr.ssrc == ssrc_before and hdr.marker
        # a new outbound key: what A receives needs it
        new_out = new_key()
        leg.set_srtp(new_in, new_out)
        pa.keys(new_in, new_out)
        pb.send(bridge.b.local_port, b"\x06" * 160)
        _, got = await pa.recv()
        assert got == b"\x06" * 160
        # and back to plain RTP both ways
        leg.set_srtp(None, None)
        pa.keys(None, None)
        assert not leg.srtp_active
        pa.send(port, b"\x07" * 160)
        _, got = await pb.recv()
        assert got == b"\x07" * 160
        pb.send(bridge.b.local_port, b"\x08" * 160)
        _, got = await pa.recv()
        assert got == b"\x08" * 160
        assert leg.srtp_forged == 1 and leg.srtp_replayed == 3

    run(with_bridge(body))


def test_a_bad_key_changes_nothing(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        encrypt(bridge, "a", pa)
        good = pa.tx
        with pytest.raises(SrtpSetupError):
            bridge.a.set_srtp(new_key(), SrtpKey(SUITE, bytes(10)))
        with pytest.raises(SrtpSetupError):
            bridge.a.set_srtp(SrtpKey("F8_128_HMAC_SHA1_80", bytes(30)), None)
        assert pa.tx is good
        pa.send(bridge.a.local_port, b"\x01" * 160)
        _, got = await pb.recv()
        assert got == b"\x01" * 160
        pb.send(bridge.b.local_port, b"\x02" * 160)
        _, got = await pa.recv()
        assert got == b"\x02" * 160
        key = pa.rx
        assert key is not None
        for text in (repr(bridge), repr(bridge.a), repr(key), str(key)):
            assert key.key_salt.hex() not in text and repr(key.key_salt) not in text

    run(with_bridge(body))
