"""SRTP/SRTCP contexts over libsrtp: a round trip per suite, and replayed, forged and
wrongly keyed packets dropped and counted (never raised)."""

from __future__ import annotations

import struct

import pytest

from sipdialer.rtp import srtp
from sipdialer.rtp.srtp import (
    PROFILES,
    SrtpKey,
    SrtpProtectError,
    SrtpReceiver,
    SrtpSender,
    SrtpSetupError,
)
from sipdialer.sip.sdp_crypto import SUITES


def rtp(seq: int, ssrc: int = 0x1234, payload: bytes = b"\xff" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + payload


def rtcp_sr(ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3, 4, 5)


@pytest.mark.parametrize("suite", list(PROFILES))
def test_round_trip(suite: str) -> None:
    key = bytes(range(SUITES[suite].key_salt_length))
    tx, rx = SrtpSender(suite, key), SrtpReceiver(suite, key)
    for seq in range(1, 20):
        packet = rtp(seq)
        protected = tx.rtp(packet)
        assert protected != packet and len(protected) == len(packet) + SUITES[suite].tag_length
        assert protected[12:] != packet[12:]  # the payload is encrypted
        assert rx.rtp(protected) == packet
    assert rx.rtcp(tx.rtcp(rtcp_sr())) == rtcp_sr()
    assert (rx.forged, rx.replayed) == (0, 0)


def test_replayed_packets_are_dropped_and_counted() -> None:
    key = bytes(30)
    tx, rx = (
        SrtpSender("AES_CM_128_HMAC_SHA1_80", key),
        SrtpReceiver("AES_CM_128_HMAC_SHA1_80", key),
    )
    first = tx.rtp(rtp(1))
    assert rx.rtp(first) is not None
    assert rx.rtp(first) is None
    assert rx.replayed == 1 and rx.forged == 0


def test_forged_and_wrongly_keyed_packets_are_dropped_and_counted() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    tx, rx = SrtpSender(suite, bytes(30)), SrtpReceiver(suite, bytes(30))
    protected = bytearray(tx.rtp(rtp(5)))
    protected[20] ^= 0x01  # one bit of the payload flipped
    assert rx.rtp(bytes(protected)) is None
    other = SrtpSender(suite, b"\x01" * 30)
    assert rx.rtp(other.rtp(rtp(6))) is None
    assert rx.rtp(rtp(7)) is None  # plain RTP where SRTP is expected
    assert rx.rtp(b"\x80" * 3000) is None  # longer than any packet libsrtp takes
    assert rx.forged == 4 and rx.replayed == 0
    assert rx.rtp(tx.rtp(rtp(8))) == rtp(8)  # the genuine stream still passes


def test_setup_errors() -> None:
    with pytest.raises(SrtpSetupError):
        SrtpSender("F8_128_HMAC_SHA1_80", bytes(30))
    with pytest.raises(SrtpSetupError):
        SrtpReceiver("AES_CM_128_HMAC_SHA1_80", bytes(10))


def test_an_index_is_never_encrypted_twice() -> None:
    tx = SrtpSender("AES_CM_128_HMAC_SHA1_80", bytes(30))
    packet = bytearray(rtp(9))  # the relay hands over its rewritten bytearray
    tx.rtp(packet)
    with pytest.raises(SrtpProtectError) as info:
        tx.rtp(packet)  # same key, same index: would reuse keystream
    assert isinstance(info.value, OSError)  # the relay's send path drops it as such
    assert tx.rtp(rtp(10))  # the stream goes on


def test_key_equality_and_no_key_in_repr() -> None:
    secret = bytes(range(30))
    key = SrtpKey("AES_CM_128_HMAC_SHA1_80", secret)
    assert key == SrtpKey("AES_CM_128_HMAC_SHA1_80", bytes(secret))
    assert key != SrtpKey("AES_CM_128_HMAC_SHA1_32", secret)
    assert key != SrtpKey("AES_CM_128_HMAC_SHA1_80", bytes(30))
    for text in (repr(key), str(key), f"{key}"):
        assert "AES_CM_128_HMAC_SHA1_80" in text
        assert secret.hex() not in text and repr(secret) not in text and "key_salt" not in text


def test_a_replaced_key_overlaps_until_the_new_one_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    old_tx, new_tx = SrtpSender(suite, bytes(30)), SrtpSender(suite, b"\x02" * 30)
    old_rx = SrtpReceiver(suite, bytes(30))
    first = old_tx.rtp(rtp(1))
    assert old_rx.rtp(first) == rtp(1)
    rx = SrtpReceiver(suite, b"\x02" * 30, previous=old_rx)
    assert rx.rtp(old_tx.rtp(rtp(2))) == rtp(2)  # in flight under the old key
    assert rx.rtp(first) is None  # the old context's replay window still holds
    assert (rx.forged, rx.replayed) == (0, 1)
    assert rx.rtp(new_tx.rtp(rtp(3))) == rtp(3)  # the new key is in use ...
    assert rx.rtp(old_tx.rtp(rtp(4))) is None  # ... so the old one is done
    assert (rx.forged, rx.replayed) == (1, 1)
    # and the overlap is bounded in time (KEY_OVERLAP seconds from the re-key)
    monkeypatch.setattr(srtp, "KEY_OVERLAP", 0.0)
    late = SrtpReceiver(suite, b"\x02" * 30, previous=SrtpReceiver(suite, bytes(30)))
    assert late.rtp(old_tx.rtp(rtp(5))) is None and late.forged == 1
